"""Issue 12 item 27 (the CLI side): out-of-range options and missing inputs are refused with
the package's message and exit code 1, before anything slow (no download, no model load)."""
from __future__ import annotations

import numpy as np
import pytest

from isegformer.cli import common
from isegformer.cli.main import main
from isegformer.volume import Volume, write_volume


@pytest.fixture(autouse=True)
def no_downloads(tmp_path, monkeypatch):
    monkeypatch.setenv("ISEGFORMER_HOME", str(tmp_path / "home"))

    def refuse(*args, **kwargs):
        raise AssertionError("the weights were asked for before the options were checked")

    monkeypatch.setattr(common, "resolve_weights", refuse)


@pytest.fixture
def png_folders(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    return ["--images", str(images), "--masks", str(masks)]


@pytest.mark.parametrize("options, message", [
    (["--stop-iou", "nan"], "--stop-iou"),
    (["--stop-iou", "5"], "--stop-iou"),
    (["--stop-iou", "0"], "--stop-iou"),
    (["--max-clicks", "0"], "--max-clicks"),
    (["--max-clicks", "100000000"], "--max-clicks"),
    (["--window", "5", "1"], "LOW < HIGH"),
    (["--window", "nan", "1"], "--window"),
    (["--label", "-3"], "--label"),
])
def test_evaluate_clicks_options(png_folders, capsys, options, message):
    assert main(["evaluate-clicks", "--model", "m.pth", *png_folders, *options]) == 1
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("options, message", [
    (["--num-slices", "0"], "--num-slices"),
    (["--num-slices", "3", "-1"], "--num-slices"),
    (["--label-value", "-3"], "--label-value"),
])
def test_evaluate_propagation_options(tmp_path, capsys, options, message):
    assert main(["evaluate-propagation", "v.nrrd", "l.nrrd", "--out", str(tmp_path / "o"), *options]) == 1
    assert message in capsys.readouterr().err


@pytest.fixture
def volume_file(tmp_path):
    return write_volume(Volume(np.zeros((4, 5, 6), np.float32), np.eye(4)), tmp_path / "vol.nrrd")


def test_segment_checks_its_inputs_before_the_model_is_fetched(volume_file, tmp_path, capsys):
    assert main(["segment", str(tmp_path / "missing.nrrd"), "--clicks", str(tmp_path / "c.mrk.json"),
                 "--out", str(tmp_path / "o.seg.nrrd")]) == 1
    assert "missing.nrrd: no such file" in capsys.readouterr().err
    assert main(["segment", str(volume_file), "--clicks", str(tmp_path / "c.mrk.json"),
                 "--out", str(tmp_path / "o.seg.nrrd")]) == 1
    assert "--clicks" in capsys.readouterr().err and not (tmp_path / "o.seg.nrrd").exists()


def test_propagate_checks_its_inputs_before_the_networks_are_fetched(volume_file, tmp_path, capsys):
    assert main(["propagate", str(volume_file), "--labels", str(tmp_path / "drawn.nrrd"),
                 "--out", str(tmp_path / "o.nrrd")]) == 1
    assert "--labels" in capsys.readouterr().err
    assert main(["propagate", str(volume_file), "--labels", str(volume_file), "--slices", "1,x",
                 "--out", str(tmp_path / "o.nrrd")]) == 1
    assert "--slices" in capsys.readouterr().err


def test_evaluate_clicks_out_that_is_a_file(png_folders, tmp_path, capsys):
    (tmp_path / "taken").write_text("a file")
    assert main(["evaluate-clicks", "--model", "m.pth", *png_folders, "--out", str(tmp_path / "taken")]) == 1
    assert "is a file" in capsys.readouterr().err
    assert (tmp_path / "taken").read_text() == "a file"


@pytest.mark.parametrize("options", [["--timeout", "inf"], ["--timeout", "nan"], ["--min-rate", "inf"],
                                     ["--deadline", "inf"], ["--timeout", "-1"]])
def test_download_timing_options_must_be_finite(capsys, options):
    assert main(["download", "stcn", "--no-progress", *options]) == 1
    assert "finite" in capsys.readouterr().err


def test_segment_name_is_checked_before_the_model_is_fetched(volume_file, tmp_path, capsys):
    clicks = tmp_path / "c.mrk.json"
    clicks.write_text("{}")
    assert main(["segment", str(volume_file), "--clicks", str(clicks), "--segment", "  ",
                 "--out", str(tmp_path / "o.seg.nrrd")]) == 1
    assert "--segment" in capsys.readouterr().err


def test_an_os_error_is_one_line_not_a_traceback(capsys, monkeypatch):
    from isegformer.cli import main as entry

    def denied(args):
        raise PermissionError(13, "Permission denied", "/shared/cache/cache.json")

    real_build = entry.build_parser

    def parser_with_a_failing_command():
        parser = real_build()
        parser.set_defaults(func=denied)
        return parser

    monkeypatch.setattr(entry, "build_parser", parser_with_a_failing_command)
    assert main([]) == 1
    err = capsys.readouterr().err
    assert "Permission denied (/shared/cache/cache.json)" in err and "Traceback" not in err


def _no_int8_engine(monkeypatch):
    from isegformer.click_engine import fast_cpu

    monkeypatch.setattr(fast_cpu, "_ENGINES", ("no-such-engine",))  # as on a torch built without one


@pytest.mark.parametrize("problem, message", [
    (["--precision", "int8", "--device", "cuda"], "(CUDA|cuda)"),  # no GPU here, or int8 off the CPU on one
    (["--precision", "int8", "--device", "cpu", "NO_ENGINE"], "no int8 engine"),
])
def test_a_precision_the_device_cannot_run_is_refused_before_the_model(volume_file, tmp_path, capsys,
                                                                       monkeypatch, problem, message):
    """segment and evaluate-clicks answer before the click model is downloaded or read: the
    registry name below would otherwise be fetched first (the fixture refuses that), and
    evaluate-clicks would read every sample first."""
    from isegformer.cli import evaluate_clicks

    if "NO_ENGINE" in problem:
        problem = [p for p in problem if p != "NO_ENGINE"]
        _no_int8_engine(monkeypatch)
    monkeypatch.setattr(evaluate_clicks, "_samples", lambda args: pytest.fail("the samples were read first"))
    clicks = tmp_path / "c.mrk.json"
    clicks.write_text("{}")
    assert main(["segment", str(volume_file), "--clicks", str(clicks), "--model", "isegformer_swin_base_oaizib",
                 "--out", str(tmp_path / "o.seg.nrrd"), *problem]) == 1
    import re

    assert re.search(message, capsys.readouterr().err)
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    assert main(["evaluate-clicks", "--model", "isegformer_swin_base_oaizib", "--images", str(images),
                 "--masks", str(masks), *problem]) == 1
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "o.seg.nrrd").exists()
