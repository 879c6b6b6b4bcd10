"""The evaluation commands never report a smaller or a different benchmark than the one asked
for (review R5b items 5, 7, 12): case folders that cannot be evaluated are an error (or, on
request, listed as left out), two cases never share a name or an output, results already
computed are on disk when a later case fails, and a NoC threshold the loop never reached is
"not measured", not a failure. Real NIfTI files; the interpolation baseline (no weights)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from isegformer.cli.main import main
from isegformer.evaluation.noc import SampleResult, summarize
from isegformer.volume import Volume, write_volume
from isegformer.volume.geometry import ijk_to_ras_matrix


def cone_case(folder: Path, image="vol.nii.gz", label="lab.nii.gz", shape=(20, 32, 32), seed=0):
    k, j, i = np.mgrid[: shape[0], : shape[1], : shape[2]]
    inside = (k >= 3) & (k <= 16) & ((j - 16) ** 2 + (i - 16) ** 2 <= (3 + (k - 3) * 0.6) ** 2)
    matrix = ijk_to_ras_matrix((0, 0, 0), (1.0, 1.0, 2.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    noise = np.random.default_rng(seed).normal(0, 5, shape)
    folder.mkdir(parents=True, exist_ok=True)
    write_volume(Volume((inside * 100 + noise).astype(np.float32), matrix), folder / image)
    if label is None:
        return folder / image, None
    write_volume(Volume(inside.astype(np.uint8), matrix), folder / label)
    return folder / image, folder / label


def test_case_folders_that_cannot_be_evaluated_are_an_error_or_listed(tmp_path, capsys):
    cases = tmp_path / "cases"
    cone_case(cases / "p1")
    cone_case(cases / "p2", label=None)  # no label
    cone_case(cases / "p3", label="Lab.nii.gz")  # a typo in case
    out = tmp_path / "out"
    args = ["evaluate-propagation", "--cases", str(cases), "--image-name", "vol.nii.gz",
            "--label-name", "lab.nii.gz", "--num-slices", "3", "--no-montage", "--out", str(out)]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "2 case folder(s)" in err and "p2 lacks lab.nii.gz" in err and "Lab.nii.gz" in err
    assert "--skip-incomplete" in err and not (out / "results.json").exists()
    assert main(args + ["--skip-incomplete"]) == 0
    report = json.loads((out / "results.json").read_text())
    assert len(report["cases"]) == 1 and report["complete"] is True
    assert sorted(Path(s["folder"]).name for s in report["skipped"]) == ["p2", "p3"]
    assert "left out" in capsys.readouterr().err


def test_two_cases_of_one_folder_and_file_name_get_their_own_names_and_montages(tmp_path):
    first = cone_case(tmp_path / "A" / "x", seed=1)
    second = cone_case(tmp_path / "B" / "x", seed=2)
    out = tmp_path / "out"
    code = main(["evaluate-propagation", *map(str, first), *map(str, second), "--num-slices", "3",
                 "--out", str(out)])
    assert code == 0
    report = json.loads((out / "results.json").read_text())
    names = [case["name"] for case in report["cases"]]
    assert names == ["A/x/vol", "B/x/vol"]
    montages = [case["montage"] for case in report["cases"]]
    assert len(set(montages)) == 2 and all(Path(m).is_file() for m in montages)


def test_results_of_the_cases_before_a_failing_one_are_kept(tmp_path):
    good = cone_case(tmp_path / "good")
    bad_image, bad_label = cone_case(tmp_path / "bad")
    write_volume(Volume(np.zeros((20, 32, 32), np.uint8), np.eye(4)), bad_label)  # an empty label
    out = tmp_path / "out"
    code = main(["evaluate-propagation", *map(str, good), str(bad_image), str(bad_label),
                 "--num-slices", "3", "--no-montage", "--out", str(out)])
    assert code == 1
    report = json.loads((out / "results.partial.json").read_text())
    assert report["complete"] is False and [c["name"] for c in report["cases"]] == ["good/vol"]
    assert not (out / "results.json").exists()


def test_a_failed_rerun_keeps_the_last_complete_report(tmp_path):
    good = cone_case(tmp_path / "good")
    out = tmp_path / "out"
    assert main(["evaluate-propagation", *map(str, good), "--num-slices", "3", "--no-montage",
                 "--out", str(out)]) == 0
    complete = (out / "results.json").read_bytes()
    assert not (out / "results.partial.json").exists()
    bad_image, bad_label = cone_case(tmp_path / "bad")
    write_volume(Volume(np.zeros((20, 32, 32), np.uint8), np.eye(4)), bad_label)
    assert main(["evaluate-propagation", *map(str, good), str(bad_image), str(bad_label),
                 "--num-slices", "3", "--no-montage", "--out", str(out)]) == 1
    assert (out / "results.json").read_bytes() == complete
    assert json.loads((out / "results.partial.json").read_text())["complete"] is False


def test_case_names_that_flatten_alike_still_get_their_own_montages(tmp_path):
    first = cone_case(tmp_path / "a_b", seed=1)
    second_folder = tmp_path / "a"
    second = cone_case(second_folder, image="b_vol.nii.gz", label="b_lab.nii.gz", seed=2)
    out = tmp_path / "out"
    assert main(["evaluate-propagation", *map(str, first), *map(str, second), "--num-slices", "3",
                 "--out", str(out)]) == 0
    montages = [case["montage"] for case in json.loads((out / "results.json").read_text())["cases"]]
    assert len(set(montages)) == 2 and all(Path(m).is_file() for m in montages)


def test_a_noc_threshold_above_the_stop_iou_is_not_measured_not_a_failure():
    # The loop stopped at IoU 0.6 (stop IoU 0.5): NoC@80..90 were never tried.
    stopped = SampleResult("s", [], np.array([0.3, 0.6], np.float32), 0.1)
    metrics = summarize([stopped], 20, stop_iou=0.5)
    for key in ("80", "85", "90"):
        assert metrics[f"noc@{key}"]["mean"] is None and "not_measured" in metrics[f"noc@{key}"]
        assert metrics[f">=20@{key}"] is None
    reached = SampleResult("t", [], np.array([0.5, 0.86, 0.91], np.float32), 0.1)
    metrics = summarize([reached], 20, stop_iou=0.85)
    assert metrics["noc@80"]["mean"] == 2 and metrics["noc@85"]["mean"] == 2
    assert metrics["noc@90"]["mean"] is None  # above the stop: not measured even if reached
    assert summarize([reached], 20)["noc@90"]["mean"] == 3  # no stop given: as before


@pytest.mark.parametrize("stop", ["0.5"])
def test_evaluate_clicks_prints_not_measured_for_thresholds_above_its_stop(stop):
    from isegformer.cli.evaluate_clicks import format_table

    metrics = summarize([SampleResult("s", [], np.array([0.3, 0.6], np.float32), 0.1)], 20,
                        stop_iou=float(stop))
    table = format_table(metrics, 20, 1.0, 100.0)
    assert table.count("not measured") == 3 and "nan" not in table


def test_the_noc_curve_counts_whole_clicks(tmp_path):
    from matplotlib.figure import Figure

    from isegformer.evaluation import plot

    seen = {}
    real_savefig = Figure.savefig

    def keep_ticks(self, *args, **kwargs):
        seen["ticks"] = list(self.axes[0].get_xticks())
        return real_savefig(self, *args, **kwargs)

    Figure.savefig = keep_ticks
    try:
        plot.plot_iou_curve([0.5, 0.7, 0.9], tmp_path / "noc.png")
    finally:
        Figure.savefig = real_savefig
    assert seen["ticks"] and all(float(t).is_integer() for t in seen["ticks"])
    assert (tmp_path / "noc.png").stat().st_size > 1000
