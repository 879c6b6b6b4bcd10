"""Issue 12 item 1: an output that is one of the inputs (through links, hard links, ``..``,
letter case, a DICOM folder holding it, or another output) is refused before anything is
written, by every command and every Session writer, and the input stays byte for byte."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from isegformer.cli.main import main
from isegformer.demo import DemoFiles, run_demo
from isegformer.output.markups import ClickPoint, write_clicks
from isegformer.output.paths import OutputIsInputError, guard_outputs
from isegformer.session import Session
from isegformer.volume import Volume, write_volume


@pytest.fixture(autouse=True)
def private_home(tmp_path, monkeypatch):
    monkeypatch.setenv("ISEGFORMER_HOME", str(tmp_path / "home"))


@pytest.fixture
def files(tmp_path):
    """A small volume, a label map with two drawn slices, and a clicks file, on disk."""
    rng = np.random.default_rng(0)
    volume = Volume(rng.normal(size=(6, 8, 10)).astype(np.float32), np.diag([0.9, 0.9, 2.0, 1.0]))
    volume_path = write_volume(volume, tmp_path / "vol.nrrd")
    drawn = np.zeros(volume.shape, np.uint8)
    drawn[1, 2:6, 3:7] = 1
    drawn[4, 3:6, 3:8] = 1
    labels_path = write_volume(volume, tmp_path / "drawn.nrrd", array=drawn)
    centre = tuple(float(v) for v in volume.ijk_to_ras_points(np.array([4.0, 4.0, 1.0])))
    clicks_path = write_clicks(tmp_path / "clicks.mrk.json", [ClickPoint(centre)])
    return volume_path, labels_path, clicks_path


def _snapshot(*paths):
    return {p: p.read_bytes() for p in paths}


# --- the guard itself -------------------------------------------------------------------------
def test_the_same_file_by_every_spelling_is_refused(tmp_path):
    scan = tmp_path / "data" / "scan.nii.gz"
    scan.parent.mkdir()
    scan.write_bytes(b"scan")
    (tmp_path / "link.nii.gz").symlink_to(scan)
    (tmp_path / "linked_folder").symlink_to(scan.parent, target_is_directory=True)
    os.link(scan, tmp_path / "hard.nii.gz")
    spellings = [scan, tmp_path / "link.nii.gz", tmp_path / "hard.nii.gz",
                 tmp_path / "linked_folder" / "scan.nii.gz", tmp_path / "data" / ".." / "data" / "scan.nii.gz",
                 tmp_path / "data" / "SCAN.NII.GZ", str(scan)]
    for output in spellings:
        with pytest.raises(OutputIsInputError, match="would destroy that input"):
            guard_outputs([scan], [output])
    guard_outputs([scan], [tmp_path / "data" / "result.nii.gz", None])  # distinct: fine
    guard_outputs([None, tmp_path / "missing.nii.gz"], [tmp_path / "missing.nii.gz"])  # nothing to destroy


def test_an_output_inside_an_input_folder_is_refused(tmp_path):
    series = tmp_path / "dicom"
    (series / "sub").mkdir(parents=True)
    (series / "1.dcm").write_bytes(b"slice")
    for output in [series / "result.seg.nrrd", series / "sub" / "new" / "x.png", series]:
        with pytest.raises(OutputIsInputError, match="input folder|same file"):
            guard_outputs([series], [output], input_names=["the volume"])
    guard_outputs([series], [tmp_path / "result.seg.nrrd"])


def test_two_outputs_that_are_one_file_are_refused(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    (tmp_path / "b.png").symlink_to(tmp_path / "a.png")
    for pair in [(tmp_path / "out.seg.nrrd", tmp_path / "out.seg.nrrd"),
                 (tmp_path / "a.png", tmp_path / "b.png"),
                 (tmp_path / "new.png", tmp_path / "x" / ".." / "NEW.png")]:
        with pytest.raises(OutputIsInputError, match="are the same file"):
            guard_outputs([], pair, output_names=["--out", "--overlay"])


# --- the commands -----------------------------------------------------------------------------
@pytest.mark.parametrize("option", ["--out", "--overlay"])
@pytest.mark.parametrize("victim", ["volume", "labels", "volume by symlink"])
def test_propagate_refuses_to_overwrite_its_inputs(files, tmp_path, capsys, option, victim):
    volume_path, labels_path, _ = files
    before = _snapshot(volume_path, labels_path)
    target = labels_path if victim == "labels" else volume_path
    if victim == "volume by symlink":
        (tmp_path / "alias.nrrd").symlink_to(volume_path)
        target = tmp_path / "alias.nrrd"
    outputs = {"--out": tmp_path / "result.nrrd", "--overlay": None}
    outputs[option] = target
    argv = ["propagate", str(volume_path), "--labels", str(labels_path), "--method", "interpolation"]
    for name, path in outputs.items():
        if path is not None:
            argv += [name, str(path)]
    assert main(argv) == 1
    assert "would destroy that input" in capsys.readouterr().err
    assert _snapshot(volume_path, labels_path) == before
    assert not (tmp_path / "result.nrrd").exists()


@pytest.mark.parametrize("option, victim", [
    ("--out", "volume"), ("--overlay", "volume"), ("--session", "volume"), ("--session", "clicks"),
    ("--out", "clicks")])
def test_segment_refuses_to_overwrite_its_inputs(files, tmp_path, capsys, option, victim):
    volume_path, _, clicks_path = files
    before = _snapshot(volume_path, clicks_path)
    outputs = {"--out": tmp_path / "out.seg.nrrd"}
    outputs[option] = volume_path if victim == "volume" else clicks_path
    argv = ["segment", str(volume_path), "--clicks", str(clicks_path), "--model", str(tmp_path / "model.pth")]
    for name, path in outputs.items():
        argv += [name, str(path)]
    assert main(argv) == 1  # refused before the (missing) model is even looked at
    assert "would destroy that input" in capsys.readouterr().err
    assert _snapshot(volume_path, clicks_path) == before


def test_segment_refuses_two_outputs_into_one_file(files, tmp_path, capsys):
    volume_path, _, clicks_path = files
    out = tmp_path / "out.seg.nrrd"
    assert main(["segment", str(volume_path), "--clicks", str(clicks_path), "--model", "m.pth",
                 "--out", str(out), "--session", str(out)]) == 1
    assert "are the same file" in capsys.readouterr().err


def test_a_dicom_folder_input_keeps_outputs_out_of_it(data_dir, tmp_path, capsys):
    series = next((p for p in sorted((data_dir).rglob("*")) if p.is_dir() and any(p.glob("*.dcm"))), None)
    if series is None:
        pytest.skip("no DICOM series in the sample data")
    copy = shutil.copytree(series, tmp_path / "series")
    names = sorted(p.name for p in copy.iterdir())
    clicks = write_clicks(tmp_path / "c.mrk.json", [ClickPoint((0.0, 0.0, 0.0))])
    assert main(["segment", str(copy), "--clicks", str(clicks), "--model", "m.pth",
                 "--out", str(copy / "result.seg.nrrd")]) == 1
    assert "inside the input folder" in capsys.readouterr().err
    assert sorted(p.name for p in copy.iterdir()) == names


def test_evaluation_commands_refuse_an_output_folder_inside_their_inputs(tmp_path, capsys):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    assert main(["evaluate-clicks", "--model", "m.pth", "--images", str(images), "--masks", str(masks),
                 "--out", str(images)]) == 1
    assert "inside the input folder" in capsys.readouterr().err
    cases = tmp_path / "cases"
    (cases / "c1").mkdir(parents=True)
    (cases / "c1" / "img.nrrd").write_bytes(b"x")
    (cases / "c1" / "lab.nrrd").write_bytes(b"x")
    assert main(["evaluate-propagation", "--cases", str(cases), "--image-name", "img.nrrd",
                 "--label-name", "lab.nrrd", "--out", str(cases / "results")]) == 1
    assert "inside the input folder" in capsys.readouterr().err
    assert sorted(p.name for p in (cases / "c1").iterdir()) == ["img.nrrd", "lab.nrrd"]
    assert not (cases / "results").exists()


def test_finetune_refuses_a_run_folder_over_its_training_data(tmp_path, capsys):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    assert main(["finetune", "--images", str(images), "--masks", str(masks), "--out", str(images)]) == 1
    assert "inside the input folder" in capsys.readouterr().err
    init = tmp_path / "run" / "model.pth"
    init.parent.mkdir()
    init.write_bytes(b"a previous fine-tune")
    assert main(["finetune", "--images", str(images), "--masks", str(masks), "--init", str(init),
                 "--out", str(init.parent)]) == 1
    assert "--init" in capsys.readouterr().err
    assert init.read_bytes() == b"a previous fine-tune"


def test_download_refuses_a_registry_that_is_the_cache_record(tmp_path, capsys):
    from isegformer.weights.registry import load_registry  # noqa: F401  (the bundled one must load)
    from importlib import resources

    home = tmp_path / "home"
    home.mkdir()
    record = home / "cache.json"
    record.write_bytes(resources.files("isegformer.resources").joinpath("models.json").read_bytes())
    before = record.read_bytes()
    assert main(["download", "stcn", "--registry", str(record), "--no-progress"]) == 1
    assert "--registry" in capsys.readouterr().err
    assert record.read_bytes() == before


def test_demo_refuses_outputs_over_its_inputs(tmp_path):
    out = tmp_path / "demo"
    out.mkdir()
    label = out / "demo.seg.nrrd"  # the user's label map, named like the demo's output
    label.write_bytes(b"the user's labels")
    files = DemoFiles(click_model=tmp_path / "m.pth", stcn=tmp_path / "s.pth", fusion=None,
                      volume=tmp_path / "v.nrrd", label=label, sample=False)
    with pytest.raises(OutputIsInputError, match="label file"):
        run_demo(files, out)
    assert label.read_bytes() == b"the user's labels"


# --- the Session writers ----------------------------------------------------------------------
WRITERS = {
    "save_label_map": lambda s, p: s.save_label_map(p),
    "save_segmentation": lambda s, p: s.save_segmentation(p),
    "save_clicks": lambda s, p: s.save_clicks(p),
    "save_overlay": lambda s, p: s.save_overlay(p),
    "save": lambda s, p: s.save(p),
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
@pytest.mark.parametrize("spelling", ["same path", "hard link", "symlink"])
def test_session_writers_never_replace_the_volume_it_was_opened_from(files, tmp_path, writer, spelling):
    volume_path, labels_path, _ = files
    session = Session.open(volume_path)
    session.annotate_from_label_map(labels_path)
    target = volume_path
    if spelling == "hard link":
        target = tmp_path / "hard.nrrd"
        os.link(volume_path, target)
    elif spelling == "symlink":
        target = tmp_path / "soft.nrrd"
        target.symlink_to(volume_path)
    before = volume_path.read_bytes()
    with pytest.raises(OutputIsInputError, match="opened from"):
        WRITERS[writer](session, target)
    assert volume_path.read_bytes() == before


def test_session_writers_never_replace_the_files_it_read(files, tmp_path):
    volume_path, labels_path, clicks_path = files
    session = Session.open(volume_path, click_model=_fake_predictor())
    session.load_clicks(iter([clicks_path]))  # any iterable of paths
    session.annotate_from_label_map(labels_path)
    before = _snapshot(labels_path, clicks_path)
    for writer in ("save_label_map", "save_clicks", "save_overlay", "save_segmentation", "save"):
        for victim in (labels_path, clicks_path):
            with pytest.raises(OutputIsInputError, match="this session"):
                WRITERS[writer](session, victim)
    assert _snapshot(labels_path, clicks_path) == before


def test_a_loaded_session_may_update_its_file_but_nothing_else_may_replace_it(files, tmp_path):
    volume_path, labels_path, _ = files
    session = Session.open(volume_path)
    session.annotate_from_label_map(labels_path)
    saved = session.save(tmp_path / "work.isegsession")
    loaded = Session.load(saved)
    loaded.save(saved)  # saving back to where it came from is what save is for
    with pytest.raises(OutputIsInputError, match="loaded from"):
        loaded.save_overlay(saved)
    with pytest.raises(OutputIsInputError, match="opened from"):
        loaded.save(volume_path)
    assert Session.load(saved).segments[0].name == session.segments[0].name


def _fake_predictor():
    """The network stand-in of the click tests: this test is about files, not masks."""
    from fake_click_net import FakeClickNet
    from isegformer.click_engine.predictor import ClickPredictor

    return ClickPredictor(FakeClickNet(), zoom_in=False, flip=False, device="cpu")


@pytest.mark.parametrize("bad", ["", "a\x00b", 42, None.__class__])
def test_unusable_paths_are_the_packages_error(tmp_path, bad):
    from isegformer.output.atomic import OutputPathError

    with pytest.raises(OutputPathError):
        guard_outputs([tmp_path], [bad])
    with pytest.raises(OutputPathError):
        guard_outputs([bad], [tmp_path / "x"])
