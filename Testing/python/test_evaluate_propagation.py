"""The Table 2 protocol: slice choice, scores, errors, and the interpolation baseline on BRATS."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from isegformer.cli.main import main
from isegformer.errors import InvalidInputError
from isegformer.propagation.factory import create_propagator
from isegformer.evaluation.propagation import (choose_slices, evaluate_case, evaluate_files,
                                               reference_slices, score)
from isegformer.volume import Volume, write_volume
from isegformer.volume.geometry import ijk_to_ras_matrix

BRATS_CASES = ("pat0001", "pat0002", "pat0005")


def test_scores_by_hand():
    gt = np.zeros((1, 2, 4), bool)
    pred = np.zeros((1, 2, 4), bool)
    gt[0, 0, :] = True            # 4 voxels
    pred[0, 0, :2] = True         # 2 of them ...
    pred[0, 1, :2] = True         # ... and 2 wrong ones
    s = score(gt, pred)
    assert (s.dice, s.sensitivity, s.ppv) == (0.5, 0.5, 0.5)
    assert s.iou == pytest.approx(1 / 3)
    assert score(np.zeros(3, bool), np.zeros(3, bool)).dice == 1.0
    missed = score(np.ones(3, bool), np.zeros(3, bool))
    assert (missed.dice, missed.sensitivity, missed.ppv, missed.iou) == (0.0, 0.0, 0.0, 0.0)


def test_slice_choices():
    assert reference_slices(155, 5) == [31, 62, 93, 124, 154]
    assert reference_slices(160, 1) == [159]
    assert reference_slices(160, 10)[0] == 16 and reference_slices(160, 10)[-1] == 159
    frames = np.zeros((50, 4, 4), bool)
    frames[10:31] = True  # extent 10..30
    assert choose_slices(frames, 1, "extent") == [20]
    assert choose_slices(frames, 5, "extent") == [12, 16, 20, 24, 28]
    assert choose_slices(frames, 3, "explicit", [30, 10, 10]) == [10, 30]
    with pytest.raises(InvalidInputError, match="outside"):
        choose_slices(frames, 1, "explicit", [50])
    with pytest.raises(InvalidInputError, match="at least 1"):
        choose_slices(frames, 0, "reference")
    with pytest.raises(InvalidInputError, match="absent"):
        choose_slices(np.zeros((5, 2, 2), bool), 2, "extent")


def _cone_case(shape=(40, 64, 64)) -> tuple[Volume, Volume]:
    """A cone along k (radius grows linearly with k), label value 3, on a 1 x 1 x 2 mm grid."""
    k, j, i = np.mgrid[: shape[0], : shape[1], : shape[2]]
    radius = 4 + (k - 5) * 0.8
    inside = (k >= 5) & (k <= 34) & ((j - 32) ** 2 + (i - 32) ** 2 <= radius**2)
    label = np.where(inside, 3, 0).astype(np.uint8)
    matrix = ijk_to_ras_matrix((0, 0, 0), (1.0, 1.0, 2.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    image = (label * 100 + np.random.default_rng(0).normal(0, 5, shape)).astype(np.float32)
    return Volume(image, matrix), Volume(label, matrix)


def test_cone_is_recovered_from_its_end_slices():
    volume, label = _cone_case()
    result, pred = evaluate_case(volume, label, label_values=[3], axis=0, num_slices=2,
                                 slice_choice="explicit", slices=[5, 34])
    assert result.slices == [5, 34] and result.object_extent == [5, 34]
    assert result.scores.dice > 0.97
    assert pred.shape == volume.shape and pred[5:35].any() and not pred[:5].any()


def test_other_axes_and_multi_values():
    volume, label = _cone_case()
    result, pred = evaluate_case(volume, label, label_values=[1, 3], axis=2, num_slices=5,
                                 slice_choice="extent")
    assert result.num_frames == 64 and pred.shape == volume.shape
    assert result.scores.dice > 0.8


def test_bad_inputs_are_refused():
    volume, label = _cone_case()
    with pytest.raises(InvalidInputError, match="holds: 0, 3"):
        evaluate_case(volume, label, label_values=[2], axis=0, num_slices=5)
    other = Volume(label.array, ijk_to_ras_matrix((0, 0, 1), (1.0, 1.0, 2.0), (1, 0, 0, 0, 1, 0, 0, 0, 1)))
    with pytest.raises(InvalidInputError, match="origin"):
        evaluate_case(volume, other, label_values=[3], axis=0, num_slices=5)
    with pytest.raises(InvalidInputError, match="Axis"):
        evaluate_case(volume, label, label_values=[3], axis=3, num_slices=5)
    with pytest.raises(InvalidInputError, match="Unknown propagation method"):
        evaluate_case(volume, label, label_values=[3], axis=0, num_slices=5, method="magic")


def test_cli_on_files(tmp_path: Path, capsys):
    volume, label = _cone_case()
    image_path = write_volume(volume, tmp_path / "image.nii.gz")
    label_path = write_volume(label, tmp_path / "label.nrrd")
    out = tmp_path / "out"
    code = main(["evaluate-propagation", str(image_path), str(label_path), "--label-value", "3",
                 "--axis", "k", "--num-slices", "2", "3", "--slice-choice", "extent", "--out", str(out)])
    assert code == 0
    report = json.loads((out / "results.json").read_text())
    assert [c["num_slices"] for c in report["cases"]] == [2, 3]
    # Interpolation reproduces the cone between the first and last annotated slice and nothing
    # beyond: its Dice is close to that of the ground truth cut to that range.
    for case in report["cases"]:
        first, last = case["slices"][0], case["slices"][-1]
        cut = label.array.copy()
        cut[:first], cut[last + 1:] = 0, 0
        assert case["scores"]["dice"] == pytest.approx(score(label.array == 3, cut == 3).dice, abs=0.02)
    for case in report["cases"]:
        assert Path(case["montage"]).stat().st_size > 1000
    assert "dice" in capsys.readouterr().out
    # A missing label value: a clear message and exit code 1, no traceback.
    code = main(["evaluate-propagation", str(image_path), str(label_path), "--label-value", "7",
                 "--out", str(out)])
    assert code == 1 and "do not occur" in capsys.readouterr().err
    assert main(["evaluate-propagation", str(image_path), "--out", str(out)]) == 1


@pytest.mark.data
@pytest.mark.parametrize("case", BRATS_CASES)
def test_interpolation_reaches_the_brats_figures(data_dir: Path, case: str):
    """5 GT slices spread over the whole tumour's extent: Dice within the issue's 0.80-0.92."""
    folder = data_dir / "brats" / case
    result, *_ = evaluate_files(folder / "Flair_subtrMeanDivStd.nii.gz", folder / "OTMultiClass.nii.gz",
                                label_values=None, axis=0, num_slices=5, slice_choice="extent",
                                method="interpolation")
    assert len(result.slices) == 5
    assert 0.80 <= result.scores.dice <= 0.95


def test_factory_builds_the_baseline_and_refuses_nonsense(caplog):
    volume = np.zeros((6, 10, 12), np.float32)
    prop = create_propagator("Interpolation", volume, 1, 2, weights="unused.pth")
    assert prop.name == "interpolation" and prop.probabilities.shape == (3, 10, 6, 12)
    assert "no weights" in caplog.text
    with pytest.raises(InvalidInputError, match="Unknown propagation method"):
        create_propagator("svm", volume, 0, 1)
    with pytest.raises(InvalidInputError, match="3D"):
        create_propagator("interpolation", volume[0], 0, 1)


@pytest.mark.slow
def test_stcn_runs_through_the_same_protocol():
    """STCN (random weights: the figures mean nothing) goes through the factory and the protocol."""
    torch = pytest.importorskip("torch")
    from isegformer.propagation import stcn

    torch.manual_seed(0)
    volume, label = _cone_case(shape=(10, 32, 32))
    result, pred = evaluate_case(volume, label, label_values=[3], axis=0, num_slices=2,
                                 slice_choice="explicit", slices=[5, 9], method="stcn",
                                 weights=stcn.STCNNetwork(), device="cpu")
    assert result.method == "stcn" and pred.shape == volume.shape
    np.testing.assert_array_equal(pred[[5, 9]], label.array[[5, 9]] == 3)


@pytest.mark.data
def test_interpolation_on_thin_cartilage_matches_the_issue(data_dir: Path):
    """The issue measured 0.27 for femoral cartilage (label 2) from 5 reference-scheme slices."""
    path = data_dir / "oaizib_label" / "9092628_label.nii.gz"
    result, *_ = evaluate_files(path, path, label_values=[2], axis=0, num_slices=5,
                                slice_choice="reference", method="interpolation")
    assert result.slices == [32, 64, 96, 128, 159]
    assert result.scores.dice == pytest.approx(0.27, abs=0.01)
