"""Issue 12 item 25: tampered ``.isegsession`` files raise SessionFileError at load, before
anything big is allocated, and a file that loads is one whose session works (saves again)."""
from __future__ import annotations

import io
import json
import tracemalloc
import zipfile

import numpy as np
import pytest

from isegformer.errors import SessionFileError
from isegformer.session import Session
from isegformer.session.storage import volume_digest

SHAPE = (6, 8, 10)


@pytest.fixture
def saved(tmp_path):
    volume = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
    session = Session.open((volume, np.diag([0.5, 0.5, 2.0, 1.0])))
    session.add_segment("femur", color=(0.2, 0.4, 0.6))
    mask = np.zeros(SHAPE[1:], bool)
    mask[2:5, 3:7] = True
    session.set_slice_mask(0, 1, mask)
    session.set_slice_mask(0, 4, mask)
    session.propagate(method="interpolation")
    session.add_segment("tibia")
    session.set_slice_mask(2, 3, np.ones((SHAPE[0], SHAPE[1]), bool))
    return session.save(tmp_path / "work.isegsession")


def _entries(path) -> dict:
    with zipfile.ZipFile(path) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


def _npy(array) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.asanyarray(array), allow_pickle=False)
    return buffer.getvalue()


def _manifest(entries) -> dict:
    return json.loads(str(np.load(io.BytesIO(entries["manifest.npy"]))))


def _rewrite(path, entries, manifest_text=None, manifest=None):
    if manifest is not None:
        manifest_text = json.dumps(manifest)
    if manifest_text is not None:
        entries = {**entries, "manifest.npy": _npy(np.array(manifest_text))}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return path


def _tampered(saved, change):
    entries = _entries(saved)
    manifest = _manifest(entries)
    change(manifest, entries)
    return _rewrite(saved.with_name("tampered.isegsession"), entries, manifest=manifest)


def test_an_untouched_file_loads_and_saves_again(saved, tmp_path):
    session = Session.load(saved)
    assert [s.name for s in session.segments] == ["femur", "tibia"]
    session.save(tmp_path / "again.isegsession")
    session.save_segmentation(tmp_path / "again.seg.nrrd")


def test_a_deeply_nested_manifest(saved):
    entries = _entries(saved)
    text = json.dumps(_manifest(entries))
    nested = text[:-1] + ', "extra": ' + "[" * 100_000 + "]" * 100_000 + "}"
    with pytest.raises(SessionFileError, match="nests deeper"):
        Session.load(_rewrite(saved, entries, manifest_text=nested))


@pytest.mark.parametrize("field", ["order", "default_axis", "label_value", "index", "color", "window"])
def test_numbers_beyond_any_range(saved, field):
    entries = _entries(saved)
    manifest = _manifest(entries)
    placeholder = 123456789.5
    if field in ("order", "default_axis"):
        manifest[field] = placeholder
    elif field == "label_value":
        manifest["segments"][0]["label_value"] = placeholder
    elif field == "index":
        manifest["segments"][0]["annotations"][0]["index"] = placeholder
    elif field == "color":
        manifest["segments"][0]["color"][0] = placeholder
    else:
        manifest["window"] = [0.0, placeholder]
    for huge in ("1e999", "-1e999", "1" * 400):
        text = json.dumps(manifest).replace(str(placeholder), huge)
        with pytest.raises(SessionFileError):
            Session.load(_rewrite(saved, entries, manifest_text=text))


def test_a_huge_annotation_shape_is_refused_without_allocating(saved):
    def change(manifest, entries):
        manifest["segments"][0]["annotations"][0]["shape"] = [10**7, 10**7]

    tampered = _tampered(saved, change)
    tracemalloc.start()
    try:
        with pytest.raises(SessionFileError, match="slice shape"):
            Session.load(tampered)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20


@pytest.mark.parametrize("change, message", [
    (lambda m, e: m["segments"][0]["annotations"][0].update(index=SHAPE[0]), "index"),
    (lambda m, e: m["segments"][0]["annotations"][0].update(index=-1), "index"),
    (lambda m, e: m["segments"][0]["annotations"][0].update(axis=3), "axis"),
    (lambda m, e: m["segments"][0]["annotations"][0].update(axis=True), "axis"),
    (lambda m, e: m["segments"][0]["annotations"][0].update(shape=[SHAPE[2], SHAPE[1]]), "slice shape"),
    (lambda m, e: (m["segments"][0]["annotations"][0].update(shape=[3, 3]),
                   e.update({m["segments"][0]["annotations"][0]["array"] + ".npy":
                             _npy(np.packbits(np.ones(9, bool)))})), "slice shape"),
    (lambda m, e: e.update({m["segments"][0]["annotations"][0]["array"] + ".npy":
                            _npy(np.packbits(np.ones(9, bool)))}), "implies"),
    (lambda m, e: e.update({m["segments"][0]["propagated"] + ".npy": _npy(np.zeros(60, np.int64))}), "implies"),
    (lambda m, e: e.pop(m["segments"][0]["annotations"][0]["array"] + ".npy"), "missing"),
    (lambda m, e: m["segments"][0]["annotations"][1].update(index=1), "second time"),
    (lambda m, e: m["segments"][0]["annotations"][0].update(clicks=[[99.0, 1.0, True]]), "outside"),
    (lambda m, e: m["segments"][0]["annotations"][0].update(clicks=[[1.0, 1.0, "yes"]]), "true or false"),
    (lambda m, e: m["segments"][0].update(label_value="one"), "label_value"),
    (lambda m, e: m["segments"][0].update(label_value=0), "label_value"),
    (lambda m, e: m["segments"][1].update(label_value=1), "label_value"),
    (lambda m, e: m["segments"][1].update(name="femur"), "name"),
    (lambda m, e: m["segments"][0].update(name=""), "name"),
    (lambda m, e: m["segments"][0].update(color="red"), "color"),
    (lambda m, e: m["segments"][0].update(color=[1.5, 0, 0]), "color"),
    (lambda m, e: m["segments"][0].update(propagation_axis=None), "propagation_axis"),
    (lambda m, e: m["segments"][0].update(propagated="../../etc/passwd"), "propagated"),
    (lambda m, e: m.update(segments={"femur": 1}), "segments"),
    (lambda m, e: m.update(current_segment="nobody"), "current_segment"),
    (lambda m, e: m.update(order=0), "order"),
    (lambda m, e: m.update(window=[5.0, 1.0]), "window"),
    (lambda m, e: m.update(window="auto"), "window"),
    (lambda m, e: m["volume"].update(shape=[10**6, 10**6, 10**6]), "voxels"),
    (lambda m, e: m["volume"].update(shape=[6, 8]), "volume.shape"),
    (lambda m, e: m["volume"].update(dtype="|O"), "volume.dtype"),
    (lambda m, e: m["volume"].update(ijk_to_ras=[[1, 0], [0, 1]]), "ijk_to_ras"),
    (lambda m, e: m["volume"].update(ijk_to_ras=np.zeros((4, 4)).tolist()), "ijk_to_ras"),
    (lambda m, e: m["volume"].update(sha256=None), "sha256"),
    (lambda m, e: m["volume"].update(included="yes"), "included"),
    (lambda m, e: m["volume"].update(source=["a"]), "source"),
    (lambda m, e: e.update({"volume.npy": _npy(np.zeros((6, 8, 11), np.float32))}), "implies"),
])
def test_inconsistent_manifests_are_refused(saved, change, message):
    with pytest.raises(SessionFileError, match=message):
        Session.load(_tampered(saved, change))


def test_complex_voxels_with_a_matching_digest_are_refused(saved):
    def change(manifest, entries):
        voxels = np.load(io.BytesIO(entries["volume.npy"])).astype(np.complex128)
        entries["volume.npy"] = _npy(voxels)
        manifest["volume"].update(dtype=voxels.dtype.str, sha256=volume_digest(voxels))

    with pytest.raises(SessionFileError, match="volume.dtype"):
        Session.load(_tampered(saved, change))


def test_object_and_fortran_entries_are_refused_without_unpickling(saved):
    def object_volume(manifest, entries):
        buffer = io.BytesIO()
        np.lib.format.write_array(buffer, np.array([object()] * 3, dtype=object), allow_pickle=True)
        entries["volume.npy"] = buffer.getvalue()

    with pytest.raises(SessionFileError):
        Session.load(_tampered(saved, object_volume))

    def fortran_volume(manifest, entries):
        voxels = np.load(io.BytesIO(entries["volume.npy"]))
        entries["volume.npy"] = _npy(np.asfortranarray(voxels))

    with pytest.raises(SessionFileError, match="not an array"):
        Session.load(_tampered(saved, fortran_volume))


def test_a_manifest_that_is_not_text(saved):
    entries = _entries(saved)
    entries["manifest.npy"] = _npy(np.zeros(4, np.int32))
    with pytest.raises(SessionFileError, match="not a text entry"):
        Session.load(_rewrite(saved, entries))


def test_a_bit_flip_in_a_stored_entry_is_caught_by_the_zip_checksum(saved, tmp_path):
    data = bytearray(saved.read_bytes())
    entries = _entries(saved)
    volume_bytes = entries["volume.npy"]
    at = bytes(data).find(volume_bytes[200:240])  # the volume is stored, not deflated
    assert at > 0
    data[at + 5] ^= 0x40
    damaged = tmp_path / "flipped.isegsession"
    damaged.write_bytes(bytes(data))
    with pytest.raises(SessionFileError):
        Session.load(damaged)
