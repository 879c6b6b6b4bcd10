"""Review R3b items 1-4: what a session saves, it loads back; the volume a session read is never
overwritten; label values that go to one segment are merged; a writer never puts its bytes
under another format's name. Real files throughout (SimpleITK, pynrrd, the package's writers)."""
from __future__ import annotations

import hashlib
import os
import re
import shutil

import nrrd
import numpy as np
import pytest
import SimpleITK as sitk

from isegformer.cli.main import main
from isegformer.errors import InvalidInputError
from isegformer.output.overlay import write_overlay
from isegformer.output.paths import OutputIsInputError
from isegformer.output.seg_nrrd import SegmentInfo, read_seg_nrrd, write_seg_nrrd
from isegformer.session import Session
from isegformer.session.manifest import VOXEL_DTYPES
from isegformer.volume import Volume, read_volume, write_volume

MATRIX = np.diag([0.9, 0.8, 2.0, 1.0])
SHAPE = (4, 6, 8)


@pytest.fixture(autouse=True)
def private_home(tmp_path, monkeypatch):
    monkeypatch.setenv("ISEGFORMER_HOME", str(tmp_path / "home"))


def _voxels(dtype) -> np.ndarray:
    """Values every real dtype holds exactly (0..95), in ``dtype``."""
    return np.arange(np.prod(SHAPE)).reshape(SHAPE).astype(dtype)


def _annotated(session: Session) -> Session:
    session.add_segment("a")
    mask = np.zeros(SHAPE[1:], bool)
    mask[1:4, 2:6] = True
    session.set_slice_mask(0, 1, mask)
    return session


def _digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


# --- item 1: what Session accepts is what Session.load accepts --------------------------------
def _every_real_dtype() -> list[np.dtype]:
    kinds = np.typecodes["AllInteger"] + np.typecodes["Float"]
    dtypes = {np.dtype(code) for code in kinds}
    dtypes |= {t.newbyteorder("S") for t in list(dtypes)}  # the other byte order of each
    return sorted(dtypes, key=lambda t: t.str)


@pytest.mark.parametrize("dtype", _every_real_dtype(), ids=lambda t: t.str)
def test_every_volume_a_session_accepts_loads_back(dtype, tmp_path):
    array = _voxels(dtype)
    original = array.copy()
    try:
        session = _annotated(Session.open((array, MATRIX)))
    except InvalidInputError as err:
        # refused up front, never after the work is done; only a type no stored one holds exactly
        assert "astype" in str(err)
        assert not any(np.can_cast(dtype, t, "safe") for t in VOXEL_DTYPES)
        return
    assert session.volume.array.dtype.str in VOXEL_DTYPES
    for include_volume in (True, False):
        path = session.save(tmp_path / f"s{include_volume}.isegsession", include_volume=include_volume)
        loaded = Session.load(path, volume=None if include_volume else (array, MATRIX))
        assert loaded.volume.array.dtype == session.volume.array.dtype
        assert np.array_equal(loaded.volume.array, original)
        assert np.array_equal(loaded.segment_mask("a"), session.segment_mask("a"))
    # the caller's array is neither converted nor changed in place
    assert array.dtype == dtype and array.tobytes() == original.tobytes()


@pytest.mark.parametrize("dtype, stored", [(">f4", "<f4"), (">i2", "<i2"), ("<f2", "<f4"), (">f2", "<f4"),
                                           (">u8", "<u8")])
def test_foreign_byte_order_and_float16_become_the_stored_type(dtype, stored):
    if np.little_endian is False:
        stored = stored.replace("<", ">")
    array = _voxels(dtype)
    for session in (Session.open((array, MATRIX)), Session(Volume(array, MATRIX))):
        assert session.volume.array.dtype.str == stored
        assert np.array_equal(session.volume.array, array)
    assert array.dtype.str == dtype


def test_a_type_no_session_file_holds_is_refused_at_open():
    if np.dtype(np.longdouble).itemsize <= 8:
        pytest.skip("long double is float64 on this platform")
    with pytest.raises(InvalidInputError, match=r"cannot be kept exactly.*astype\(numpy\.float64\)"):
        Session.open((_voxels(np.longdouble), MATRIX))


def test_a_big_endian_nrrd_read_with_pynrrd_saves_and_loads_back(tmp_path):
    big = _voxels(">i2")
    nrrd.write(str(tmp_path / "be.nrrd"), big, index_order="C")
    read, header = nrrd.read(str(tmp_path / "be.nrrd"), index_order="C")
    assert header["endian"] == "big" and read.dtype.str == ">i2"  # what a user gets from pynrrd
    session = _annotated(Session.open((read, MATRIX)))
    path = session.save(tmp_path / "be.isegsession")
    loaded = Session.load(path)
    assert np.array_equal(loaded.volume.array, big)
    assert loaded.annotated_slices("a") == [1]
    # without the voxels in the file, the big-endian array is recognised as the same volume
    small = session.save(tmp_path / "be_small.isegsession", include_volume=False)
    assert np.array_equal(Session.load(small, volume=Volume(read, MATRIX)).volume.array, big)
    assert read.dtype.str == ">i2"


# --- item 2: the volume a loaded session read is its source, and guarded ----------------------
from test_output_paths import WRITERS  # noqa: E402 (every Session writer, one table)


@pytest.fixture
def moved_session(tmp_path):
    """A session saved without its volume, whose folder was then moved: (folder, session file)."""
    original = tmp_path / "orig"
    original.mkdir()
    image = sitk.GetImageFromArray(np.random.default_rng(0).normal(size=SHAPE).astype(np.float32))
    image.SetSpacing((0.8, 0.9, 2.0))
    sitk.WriteImage(image, str(original / "vol.nrrd"))
    session = _annotated(Session.open(original / "vol.nrrd"))
    session.save(original / "s.isegsession", include_volume=False)
    moved = tmp_path / "moved"
    os.rename(original, moved)
    return moved, moved / "s.isegsession"


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_writers_never_replace_the_volume_given_to_load(moved_session, writer):
    folder, session_file = moved_session
    volume_path = folder / "vol.nrrd"
    loaded = Session.load(session_file, volume=volume_path)
    assert loaded.source == str(volume_path.resolve())
    before = _digest(volume_path)
    with pytest.raises(OutputIsInputError, match="opened from"):
        WRITERS[writer](loaded, volume_path)
    assert _digest(volume_path) == before
    assert read_volume(volume_path).array.dtype == np.float32


def test_a_session_loaded_with_its_moved_volume_saves_where_that_volume_is(moved_session):
    folder, session_file = moved_session
    Session.load(session_file, volume=folder / "vol.nrrd").save(session_file, include_volume=False)
    reloaded = Session.load(session_file)  # no volume= any more: the file names the moved volume
    assert reloaded.source == str((folder / "vol.nrrd").resolve())
    assert reloaded.annotated_slices("a") == [1]


def test_a_copied_volume_guards_the_copy_read_and_the_first_volume(moved_session, tmp_path):
    folder, session_file = moved_session
    shutil.copytree(folder, tmp_path / "orig")  # the first volume is back where it was opened
    copy = tmp_path / "copy.nrrd"
    shutil.copy(folder / "vol.nrrd", copy)
    loaded = Session.load(session_file, volume=copy)
    for victim in (copy, tmp_path / "orig" / "vol.nrrd"):
        before = _digest(victim)
        for writer in sorted(WRITERS):
            with pytest.raises(OutputIsInputError, match="opened from"):
                WRITERS[writer](loaded, victim)
        assert _digest(victim) == before


def test_the_volume_reread_from_the_manifest_source_is_guarded(tmp_path):
    volume_path = write_volume(Volume(_voxels(np.float32), MATRIX), tmp_path / "vol.nrrd")
    saved = _annotated(Session.open(volume_path)).save(tmp_path / "s.isegsession", include_volume=False)
    loaded = Session.load(saved)
    before = _digest(volume_path)
    for writer in sorted(WRITERS):
        with pytest.raises(OutputIsInputError, match="opened from"):
            WRITERS[writer](loaded, volume_path)
    assert _digest(volume_path) == before


# --- item 3: label values that go to one segment are merged -----------------------------------
def _two_labels() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    one = np.zeros(SHAPE, bool)
    one[1:3, 0:2, 0:3] = True
    two = np.zeros(SHAPE, bool)
    two[1:3, 4:6, 5:8] = True
    labels = np.zeros(SHAPE, np.uint8)
    labels[one] = 1
    labels[two] = 2
    return labels, one, two


def _annotation(session: Session, name: str, index: int) -> np.ndarray:
    return session.segment(name).annotation(0, index).mask


def test_two_values_named_alike_annotate_their_union_as_one_step(tmp_path):
    labels, one, two = _two_labels()
    path = write_volume(Volume(labels, MATRIX), tmp_path / "labels.nrrd")
    session = Session.open((_voxels(np.float32), MATRIX))
    assert session.annotate_from_label_map(path, names={1: "cartilage", 2: "cartilage"}) == [1, 2]
    assert [s.name for s in session.segments] == ["cartilage"]
    for index in (1, 2):
        assert np.array_equal(_annotation(session, "cartilage", index), (one | two)[index])
    session.undo()
    assert session.segments == []


def test_a_name_and_a_label_value_of_one_segment_are_merged():
    labels, one, two = _two_labels()
    session = Session.open((_voxels(np.float32), MATRIX))
    session.add_segment("femur", label_value=1)
    session.annotate_from_label_map(labels, names={2: "femur"})  # 1 finds femur by its value
    assert [s.name for s in session.segments] == ["femur"]
    assert np.array_equal(session.segment_mask("femur"), one | two)


def test_two_segments_of_one_name_in_a_seg_nrrd_are_merged(tmp_path):
    _, one, two = _two_labels()
    path = write_seg_nrrd(tmp_path / "dup.seg.nrrd", [one, two],
                          [SegmentInfo("Segment_1", (1, 0, 0), 1), SegmentInfo("Segment_1", (0, 1, 0), 2)], MATRIX)
    session = Session.open((_voxels(np.float32), MATRIX))
    session.annotate_from_label_map(path)
    assert [s.name for s in session.segments] == ["Segment_1"]
    assert np.array_equal(session.segment_mask("Segment_1"), one | two)
    # and two segments renamed to one name by names=
    other = write_seg_nrrd(tmp_path / "two.seg.nrrd", [one, two],
                           [SegmentInfo("a", (1, 0, 0), 1), SegmentInfo("b", (0, 1, 0), 2)], MATRIX)
    renamed = Session.open((_voxels(np.float32), MATRIX))
    renamed.annotate_from_label_map(other, names={1: "x", 2: "x"})
    assert [s.name for s in renamed.segments] == ["x"]
    assert np.array_equal(renamed.segment_mask("x"), one | two)
    renamed.undo()
    assert renamed.segments == []


def test_values_of_distinct_segments_stay_apart():
    labels, one, two = _two_labels()
    session = Session.open((_voxels(np.float32), MATRIX))
    session.annotate_from_label_map(labels, names={1: "a", 2: "b"})
    assert np.array_equal(session.segment_mask("a"), one)
    assert np.array_equal(session.segment_mask("b"), two)


# --- item 4: a writer's bytes only under its format's name ------------------------------------
@pytest.fixture
def segmented():
    labels, _, _ = _two_labels()
    session = Session.open((_voxels(np.float32), MATRIX))
    session.annotate_from_label_map(labels)
    return session


@pytest.mark.parametrize("name", ["x.nii.gz", "x.nii", "x.mha", "x.png", "x"])
def test_save_segmentation_refuses_another_formats_name(segmented, tmp_path, name):
    with pytest.raises(InvalidInputError, match=r"\.seg\.nrrd.*save_label_map"):
        segmented.save_segmentation(tmp_path / name)
    with pytest.raises(InvalidInputError, match=r"\.seg\.nrrd"):
        write_seg_nrrd(tmp_path / name, [np.ones(SHAPE, bool)], [SegmentInfo("a")], MATRIX)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["x.seg.nrrd", "x.nrrd", "X.SEG.NRRD"])
def test_save_segmentation_writes_nrrd_names(segmented, tmp_path, name):
    path = segmented.save_segmentation(tmp_path / name)
    assert path.read_bytes()[:4] == b"NRRD"
    assert [s.name for s in read_seg_nrrd(path).segments] == ["Label_1", "Label_2"]


@pytest.mark.parametrize("name", ["o.jpg", "o.jpeg", "o", "o.png.gz"])
def test_save_overlay_refuses_names_other_than_png(segmented, tmp_path, name):
    with pytest.raises(InvalidInputError, match=r"PNG.*\.png"):
        segmented.save_overlay(tmp_path / name)
    with pytest.raises(InvalidInputError, match=r"\.png"):
        write_overlay(tmp_path / name, _voxels(np.float32), 0, [], [])
    assert list(tmp_path.iterdir()) == []
    written = segmented.save_overlay(tmp_path / "o.PNG")
    assert written.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def inputs(tmp_path):
    labels, _, _ = _two_labels()
    volume_path = write_volume(Volume(_voxels(np.float32), MATRIX), tmp_path / "vol.nrrd")
    labels_path = write_volume(Volume(labels, MATRIX), tmp_path / "labels.nrrd")
    clicks = tmp_path / "c.mrk.json"
    from isegformer.output.markups import ClickPoint, write_clicks

    write_clicks(clicks, [ClickPoint(tuple(float(v) for v in Volume(labels, MATRIX).ijk_to_ras_points(
        np.array([1.0, 1.0, 1.0]))))])
    return volume_path, labels_path, clicks


@pytest.mark.parametrize("command, options, message", [
    ("segment", ["--out", "x.nii.gz"], r"\.seg\.nrrd.*Session\.save_label_map"),
    ("segment", ["--out", "x.seg.nrrd", "--overlay", "o.jpg"], r"--overlay writes a PNG"),
    ("propagate", ["--out", "x.png"], r"--out \S*x\.png: give a Slicer segmentation \(\.seg\.nrrd"),
    ("propagate", ["--out", "x.seg.nrrd", "--overlay", "o.jpg"], r"--overlay writes a PNG"),
])
def test_the_clis_refuse_wrong_suffixes_before_reading_a_model_or_weights(inputs, tmp_path, capsys, command,
                                                                          options, message):
    volume_path, labels_path, clicks = inputs
    options = [str(tmp_path / v) if v.startswith(("x", "o")) else v for v in options]
    # the model or STCN weights do not exist: the suffix is refused before they would be read
    if command == "segment":
        given = ["--clicks", str(clicks), "--model", str(tmp_path / "none.pth")]
    else:
        given = ["--labels", str(labels_path), "--stcn", str(tmp_path / "none.pth")]
    rc = main([command, str(volume_path), *given, "--device", "cpu", *options])
    assert rc == 1
    assert re.search(message, capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["c.mrk.json", "labels.nrrd", "vol.nrrd"]
