"""A label map holds one label per voxel: where segments overlap, Session.save_label_map refuses
(nothing written) unless told which wins, and ``isegformer propagate --out X.nii.gz`` writes its
result but says how many voxels the label map could not hold. Real files (SimpleITK, .seg.nrrd)."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from isegformer.cli.main import main
from isegformer.errors import InvalidInputError
from isegformer.output.seg_nrrd import SegmentInfo, write_seg_nrrd
from isegformer.session import Session
from isegformer.volume import read_volume, write_volume, Volume

MATRIX = np.diag([0.9, 0.8, 2.0, 1.0])
SHAPE = (6, 24, 24)


@pytest.fixture(autouse=True)
def private_home(tmp_path, monkeypatch):
    monkeypatch.setenv("ISEGFORMER_HOME", str(tmp_path / "home"))


def _squares(first: tuple[int, int], second: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.zeros(SHAPE, bool), np.zeros(SHAPE, bool)
    for k in (1, 4):
        a[k, first[0]:first[0] + 8, first[0]:first[0] + 8] = True
        b[k, second[0]:second[0] + 8, second[0]:second[0] + 8] = True
    return a, b


def _session(a: np.ndarray, b: np.ndarray) -> Session:
    session = Session.open((np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE), MATRIX))
    for name, mask in (("femur", a), ("cartilage", b)):
        session.add_segment(name)
        for k in (1, 4):
            session.set_slice_mask(0, k, mask[k], segment=name)
    return session


def test_overlapping_segments_are_not_silently_cut_into_a_label_map(tmp_path):
    a, b = _squares((4, 4), (8, 8))
    session = _session(a, b)
    shared = int(np.count_nonzero(a & b))
    assert session.overlapping_voxels() == shared > 0
    target = tmp_path / "labels.nii.gz"
    with pytest.raises(InvalidInputError, match=f"{shared} voxel.*nothing was written.*seg.nrrd"):
        session.save_label_map(target)
    assert not target.exists()
    session.save_label_map(target, overlaps="last")  # asked for: the later segment wins
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(target)))
    assert np.count_nonzero(labels == 2) == np.count_nonzero(b)
    assert np.count_nonzero(labels == 1) == np.count_nonzero(a & ~b)
    with pytest.raises(InvalidInputError, match="overlaps must be"):
        session.save_label_map(tmp_path / "x.nii.gz", overlaps="first")


def test_segments_that_do_not_overlap_save_as_before(tmp_path):
    a, b = _squares((2, 2), (12, 12))
    session = _session(a, b)
    assert session.overlapping_voxels() == 0
    session.save_label_map(tmp_path / "labels.nrrd")
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "labels.nrrd")))
    assert np.array_equal(labels, a * 1 + b * 2)


def test_propagate_to_a_label_map_writes_its_result_and_warns_about_the_overlap(tmp_path, capsys):
    volume = Volume(np.random.default_rng(0).integers(0, 200, SHAPE).astype(np.int16), MATRIX)
    write_volume(volume, tmp_path / "vol.nii.gz")
    grid = read_volume(tmp_path / "vol.nii.gz")
    a, b = _squares((4, 4), (8, 8))
    write_seg_nrrd(tmp_path / "drawn.seg.nrrd", [a, b],
                   [SegmentInfo("femur", label_value=1), SegmentInfo("cartilage", (0.0, 1.0, 0.0), label_value=2)],
                   grid.ijk_to_ras)
    out = tmp_path / "out.nii.gz"
    code = main(["propagate", str(tmp_path / "vol.nii.gz"), "--labels", str(tmp_path / "drawn.seg.nrrd"),
                 "--method", "interpolation", "--device", "cpu", "--out", str(out)])
    assert code == 0 and out.exists()
    err = capsys.readouterr().err
    shared = int(str(err).split("warning: ")[1].split(" voxel")[0])
    assert shared >= int(np.count_nonzero(a & b)) and ".seg.nrrd" in err
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    assert set(np.unique(labels)) == {0, 1, 2}
