"""Issue 12 item 2: a label map written to a full disk must not replace the old file.

SimpleITK writes a short NIfTI on a full disk and reports nothing. The real case runs on a
256 KiB tmpfs (needs root and mount; skipped otherwise, with the reason). The same silent
short write is also injected at SimpleITK's boundary, so the check runs everywhere.
"""
from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest

from isegformer.cli.main import main
from isegformer.output.atomic import OutputPathError, write_image_verified
from isegformer.output.labelmap import write_label_map
from isegformer.session import Session
from isegformer.volume import Volume, write_volume

SHAPE = (48, 48, 48)


def _fill(folder, leave: int = 32 * 1024) -> str:
    """Fill the disk of ``folder`` up to ``leave`` free bytes; returns the filler's name."""
    stats = os.statvfs(folder)
    free = stats.f_bavail * stats.f_frsize
    (folder / "filler").write_bytes(b"\0" * max(0, free - leave))
    return "filler"


@pytest.fixture
def full_disk(tmp_path):
    """A 256 KiB tmpfs, to be filled by the test (:func:`_fill`)."""
    folder = tmp_path / "disk"
    folder.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)],
                            capture_output=True, text=True, encoding="utf-8", errors="replace")
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({result.stderr.strip()}); the injected "
                    "short write below covers the check")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def _volume() -> Volume:
    return Volume(np.zeros(SHAPE, np.int16), np.diag([0.8, 0.8, 1.5, 1.0]))


def _incompressible_labels() -> np.ndarray:
    return np.random.default_rng(0).integers(1, 60000, SHAPE).astype(np.uint16)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_a_label_map_that_does_not_fit_leaves_the_old_one(full_disk, suffix):
    volume = _volume()
    target = full_disk / f"labels{suffix}"
    write_label_map(target, np.ones(SHAPE, np.uint8), volume)
    before = target.read_bytes()
    filler = _fill(full_disk)
    with pytest.raises(OutputPathError, match="labels"):
        write_label_map(target, _incompressible_labels(), volume)
    assert target.read_bytes() == before
    assert sorted(p.name for p in full_disk.iterdir()) == sorted([target.name, filler])


def test_session_save_label_map_on_a_full_disk(full_disk):
    session = Session.open((np.zeros(SHAPE, np.int16), np.eye(4)))
    for value in range(1, 49):  # noisy enough not to compress into 8 KiB
        session.add_segment(f"s{value}")
        session.set_slice_mask(0, value % SHAPE[0], np.random.default_rng(value).random(SHAPE[1:]) > 0.5)
    target = full_disk / "labels.nii.gz"
    target.write_bytes(b"the user's previous label map")
    filler = _fill(full_disk, leave=8 * 1024)
    with pytest.raises(OutputPathError, match="Could not write"):
        session.save_label_map(target)
    assert target.read_bytes() == b"the user's previous label map"
    assert sorted(p.name for p in full_disk.iterdir()) == sorted([target.name, filler])


def test_propagate_cli_on_a_full_disk_exits_with_an_error(full_disk, tmp_path, capsys):
    volume = Volume(np.random.default_rng(1).normal(size=SHAPE).astype(np.float32), np.eye(4))
    volume_path = write_volume(volume, tmp_path / "vol.nii.gz")
    drawn = np.zeros(SHAPE, np.uint8)
    rng = np.random.default_rng(2)
    for k in (0, SHAPE[0] - 1):
        drawn[k] = rng.integers(0, 2, SHAPE[1:])  # ragged shapes: the interpolation is noisy
    labels_path = write_volume(volume, tmp_path / "drawn.nrrd", array=drawn)
    out = full_disk / "out.nii"
    out.write_bytes(b"old result")
    _fill(full_disk)
    rc = main(["propagate", str(volume_path), "--labels", str(labels_path), "--out", str(out),
               "--method", "interpolation"])
    assert rc == 1
    assert "Could not write" in capsys.readouterr().err
    assert out.read_bytes() == b"old result"


@pytest.mark.parametrize("damage", ["empty", "short", "other voxels"])
def test_a_silently_failed_simpleitk_write_never_replaces_the_file(tmp_path, monkeypatch, damage):
    import SimpleITK as sitk

    real_write = sitk.WriteImage

    def silently_failing_write(image, path, *args, **kwargs):
        if damage == "other voxels":
            real_write(image * 0, path, *args, **kwargs)
            return
        real_write(image, path, *args, **kwargs)
        size = os.path.getsize(path)
        with open(path, "r+b") as handle:
            handle.truncate(0 if damage == "empty" else size // 2)

    target = tmp_path / "labels.nii.gz"
    target.write_bytes(b"previous")
    monkeypatch.setattr(sitk, "WriteImage", silently_failing_write)
    with pytest.raises(OutputPathError, match="disk full"):
        write_label_map(target, _incompressible_labels(), _volume())
    assert target.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.nii.gz"]


def test_a_verified_write_keeps_voxels_and_geometry(tmp_path):
    import SimpleITK as sitk

    volume = Volume(np.arange(24, dtype=np.int16).reshape(2, 3, 4), np.diag([0.5, 0.7, 2.0, 1.0]))
    path = write_image_verified(volume.to_sitk(), tmp_path / "v.nrrd")
    back = sitk.ReadImage(str(path))
    assert np.array_equal(sitk.GetArrayFromImage(back), volume.array)
    assert np.allclose(back.GetSpacing(), (0.5, 0.7, 2.0))


@pytest.mark.parametrize("suffix", [".mhd", ".nhdr"])
def test_detached_header_formats_are_refused_before_anything_is_written(tmp_path, suffix):
    # The header would be renamed into place while naming the temporary data file beside it.
    from isegformer.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="nrrd"):
        write_label_map(tmp_path / f"labels{suffix}", np.ones(SHAPE, np.uint8), _volume())
    with pytest.raises(InvalidInputError, match="second file"):
        write_image_verified(_volume().to_sitk(), tmp_path / f"image{suffix}")
    assert list(tmp_path.iterdir()) == []


def test_write_volume_goes_through_the_verified_writer(full_disk):
    # The volume writer (the Slicer module's fine-tuning export uses it) is a SimpleITK write too.
    target = full_disk / "image.nii"
    target.write_bytes(b"previous image")
    _fill(full_disk)
    with pytest.raises(OutputPathError, match="Could not write"):
        write_volume(Volume(_incompressible_labels().astype(np.float32), np.eye(4)), target)
    assert target.read_bytes() == b"previous image"


@pytest.mark.parametrize("writer, name", [
    ("save", "work.isegsession"), ("save_segmentation", "work.seg.nrrd"), ("save_clicks", "work.mrk.json"),
    ("save_overlay", "work.png"), ("save_label_map", "work.nrrd")])
def test_every_session_writer_on_a_full_disk_keeps_the_old_file(full_disk, writer, name):
    session = Session.open((np.random.default_rng(3).normal(size=(8, 16, 16)).astype(np.float32), np.eye(4)))
    session.add_segment("x")
    session.set_slice_mask(0, 3, np.random.default_rng(4).random((16, 16)) > 0.5)
    target = full_disk / name
    target.write_bytes(b"the previous file")
    filler = _fill(full_disk, leave=0)
    with pytest.raises(OutputPathError, match="Could not write"):
        getattr(session, writer)(target)
    assert target.read_bytes() == b"the previous file"
    assert sorted(p.name for p in full_disk.iterdir()) == sorted([name, filler])
