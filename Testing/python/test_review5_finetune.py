"""Fine-tuning runs under review R5b (items 3, 4, 6b, 8, 9, 10, 14b, 14d): a resumed run keeps its
own settings unless an option is given, a folder holding a run's (or a user's) files is never
written over, --out problems and bad settings are found before any model is built, two writers
of one folder are refused, and a failed run is recorded as failed.

Real NIfTI files (SimpleITK), the real CLI, a tiny network, one-step epochs and 32x32 crops.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from isegformer.cli.main import main
from isegformer.finetune import trainer
from isegformer.finetune.runs import MODEL_FILE, RUN_FILE, STATE_FILE
from finetune_testkit import two_object_volume

LOGIC = Path(__file__).resolve().parents[2] / "Logic"

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.fixture(scope="module")
def nifti(tmp_path_factory):
    """A 12x40x40 volume with two labelled objects on slices 2..9, and its label map."""
    return two_object_volume(tmp_path_factory.mktemp("data"))


def _args(nifti, out, *extra):
    volume, label = nifti
    return ["finetune", "--volumes", str(volume), "--labels", str(label), "--slices", "all",
            "--init", "scratch", "--variant", "tiny", "--device", "cpu", "--steps-per-epoch", "1",
            "--batch-size", "1", "--crop", "32", "32", "--val-samples", "0", "--out", str(out),
            *extra]


def _resume_args(nifti, out, *extra):
    """What the README shows for a resume: the data and the folder, nothing else."""
    volume, label = nifti
    return ["finetune", "--volumes", str(volume), "--labels", str(label), "--slices", "all",
            "--device", "cpu", "--out", str(out), "--resume", *extra]


def _record(out) -> dict:
    return json.loads((Path(out) / RUN_FILE).read_text())


def _files(out) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in Path(out).iterdir()
            if p.name in (MODEL_FILE, STATE_FILE, RUN_FILE)}


def _cancel_after_first_epoch(monkeypatch):
    real_save = trainer._Run._save

    def save_then_stop(self, status):
        real_save(self, status)
        raise KeyboardInterrupt  # what Ctrl-C right after the first epoch does
    monkeypatch.setattr(trainer._Run, "_save", save_then_stop)
    return real_save


def _never_trained(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("a model was built or an epoch trained before the error")
    monkeypatch.setattr(trainer, "starting_model", fail)
    monkeypatch.setattr(trainer._Run, "_epoch", fail)


# --- item 3: resume ------------------------------------------------------------------------------

def test_resume_without_epochs_keeps_the_runs_own_length(nifti, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    real_save = _cancel_after_first_epoch(monkeypatch)
    assert main(_args(nifti, out, "--epochs", "3")) == 130
    assert _record(out)["status"] == "cancelled" and _record(out)["epochs_done"] == 1
    monkeypatch.setattr(trainer._Run, "_save", real_save)
    assert main(_resume_args(nifti, out)) == 0
    record = _record(out)
    # the old code took the CLI default (--epochs 10) as the run's new length
    assert (record["status"], record["epochs_done"], record["settings"]["epochs"]) == ("finished", 3, 3)
    assert record["resumes"] == []  # nothing was given that changes the run
    assert [h["epoch"] for h in record["history"]] == [1, 2, 3]


def test_resume_with_a_new_lr_applies_and_records_it(nifti, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(nifti, out, "--epochs", "1", "--lr", "1e-3")) == 0
    assert main(_resume_args(nifti, out, "--epochs", "2", "--lr", "1e-5")) == 0
    record = _record(out)
    assert [h["lr"] for h in record["history"]] == [1e-3, 1e-5]
    assert record["settings"]["lr"] == 1e-5 and record["settings"]["epochs"] == 2
    assert record["resumes"] == [{"epoch": 1, "changed": {"epochs": [1, 2], "lr": [1e-3, 1e-5]}}]
    state = torch.load(out / STATE_FILE, weights_only=False)
    assert [g["lr"] for g in state["optimizer"]["param_groups"]] == [1e-5]
    assert state["resumes"] == record["resumes"]  # a later resume keeps knowing it


@pytest.mark.parametrize("change, named", [
    (["--crop", "40", "40"], "--crop 40 40 (the run has 32 32)"),
    (["--seed", "5"], "--seed 5 (the run has 0)"),
    (["--batch-size", "2"], "--batch-size 2 (the run has 1)"),
])
def test_resume_refuses_a_setting_that_would_make_another_run(nifti, tmp_path, capsys, change, named):
    out = tmp_path / "run"
    assert main(_args(nifti, out, "--epochs", "1")) == 0
    before = _files(out)
    capsys.readouterr()
    assert main(_resume_args(nifti, out, "--epochs", "2", *change)) == 1
    err = capsys.readouterr().err
    assert named in err and "another --out folder" in err and "Traceback" not in err
    assert _files(out) == before  # a refused resume changes nothing


def test_python_api_resume_keeps_what_is_none_and_refuses_a_change(nifti, tmp_path):
    from isegformer.errors import InvalidInputError
    from isegformer.finetune.data import parse_slice_choice, slices_from_volumes
    from isegformer.finetune.trainer import FinetuneSettings, finetune

    slices = slices_from_volumes([nifti[0]], [nifti[1]], 0, parse_slice_choice("all"), None, 20)
    settings = FinetuneSettings(init="scratch", variant="tiny", epochs=2, steps_per_epoch=1,
                                batch_size=1, crop_size=(32, 32), device="cpu", val_samples=0)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        finetune(slices, out, settings, progress=lambda done, total, msg: (_ for _ in ()).throw(
            KeyboardInterrupt) if done == 2 else None)
    with pytest.raises(InvalidInputError, match="steps-per-epoch 3"):
        finetune(slices, out, FinetuneSettings(steps_per_epoch=3), resume=True)
    result = finetune(slices, out, FinetuneSettings(), resume=True)  # everything None: keep
    assert result.epochs_done == 2 and _record(out)["settings"]["crop_size"] == [32, 32]


# --- item 4: a folder that holds something ---------------------------------------------------------

@pytest.mark.parametrize("files", [
    {MODEL_FILE: b"my own model, not a run\n", RUN_FILE: b'{"mine": 1}\n'},
    {MODEL_FILE: b"my own model, not a run\n"},
    {RUN_FILE: b'{"mine": 1}\n'},
])
def test_a_folder_holding_a_users_files_is_refused_and_left_as_it_was(nifti, tmp_path, capsys,
                                                                      monkeypatch, files):
    out = tmp_path / "mine"
    out.mkdir()
    for name, content in files.items():
        (out / name).write_bytes(content)
    _never_trained(monkeypatch)
    assert main(_args(nifti, out)) == 1
    err = capsys.readouterr().err
    assert "already holds" in err and "another --out" in err and "Traceback" not in err
    assert _files(out) == files
    assert sorted(os.listdir(out)) == sorted(files)  # not even a lock file was added


# --- items 8 and 14d: refused before any model is built ----------------------------------------------

def test_out_that_is_a_file_is_refused_before_any_model_or_epoch(nifti, tmp_path, capsys, monkeypatch):
    target = tmp_path / "afile"
    target.write_bytes(b"x")
    _never_trained(monkeypatch)
    assert main(_args(nifti, target)) == 1
    assert "is a file, not a folder" in capsys.readouterr().err
    assert main(_args(nifti, target / "sub")) == 1
    assert "Cannot create the run folder" in capsys.readouterr().err
    assert target.read_bytes() == b"x"


@pytest.mark.parametrize("bad, message", [
    (["--crop", "0", "0"], "crop size"),
    (["--crop", "-4", "32"], "crop size"),
    (["--imagenet", "backbone.pth"], "--imagenet is used only with --init scratch"),
])
def test_bad_settings_are_refused_before_the_starting_model_is_built(nifti, tmp_path, capsys,
                                                                     monkeypatch, bad, message):
    _never_trained(monkeypatch)
    args = _args(nifti, tmp_path / "run", *bad)
    args[args.index("scratch")] = "official"  # would download the released model first
    assert main(args) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# --- items 6b and 14b: option pairs ------------------------------------------------------------------

@pytest.mark.parametrize("extra, message", [
    (["--val-images", "IMG"], "--val-images and --val-masks go together: --val-masks is missing"),
    (["--val-masks", "IMG"], "--val-images and --val-masks go together: --val-images is missing"),
    (["--val-labels", "LAB"], "--val-volumes and --val-labels go together"),
    (["--val-images", "IMG", "--val-masks", "IMG", "--val-volumes", "VOL", "--val-labels", "LAB"],
     "either --val-volumes/--val-labels or --val-images/--val-masks, not both"),
    (["--val-slices", "3"], "--val-slices is used only with --val-volumes"),
    (["--name", "x"], "either --out or --name, not both"),
])
def test_option_pairs_are_checked_for_training_and_validation_alike(nifti, tmp_path, capsys,
                                                                    monkeypatch, extra, message):
    _never_trained(monkeypatch)
    names = {"IMG": str(tmp_path), "VOL": str(nifti[0]), "LAB": str(nifti[1])}
    assert main(_args(nifti, tmp_path / "run", *[names.get(e, e) for e in extra])) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


# --- item 9: two writers -------------------------------------------------------------------------------

def test_a_second_writer_is_refused_and_a_killed_one_does_not_block(nifti, tmp_path, capsys):
    out = tmp_path / "run"
    args = _args(nifti, out, "--epochs", "500", "--progress-json")[1:]
    first = subprocess.Popen([sys.executable, "-m", "isegformer.cli.main", "finetune", *args],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                             env=dict(os.environ, PYTHONPATH=str(LOGIC), OMP_NUM_THREADS="1"))
    try:
        for line in first.stdout:  # the first writer has saved an epoch and goes on
            if json.loads(line)["event"] == "epoch":
                break
        assert main(_resume_args(nifti, out)) == 1
        err = capsys.readouterr().err
        assert f"Another fine-tuning run is writing to {out} (pid {first.pid}" in err
        assert main(_args(nifti, out)) == 1  # a new run is refused too
    finally:
        first.send_signal(signal.SIGKILL)  # dies holding the lock: no cleanup of its own
        first.wait(timeout=60)
    assert main(_resume_args(nifti, out, "--epochs", str(_record(out)["epochs_done"] + 1))) == 0
    assert _record(out)["status"] == "finished"


# --- item 10: a failed run ---------------------------------------------------------------------------

def test_a_diverging_run_is_recorded_as_failed_and_resumes_with_a_lower_lr(nifti, tmp_path, capsys,
                                                                         monkeypatch):
    monkeypatch.setenv("ISEGFORMER_HOME", str(tmp_path / "home"))
    args = _args(nifti, "unused", "--epochs", "6", "--lr", "1e5", "--steps-per-epoch", "3")
    args[args.index("--out"):args.index("--out") + 2] = ["--name", "failedrun"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "diverged" in err and "--resume" in err
    out = tmp_path / "home" / "finetuned" / "failedrun"
    record = _record(out)
    done = record["epochs_done"]
    assert record["status"] == "failed" and "diverged" in record["error"] and done >= 1
    assert main(["models", "--no-verify"]) == 0
    listing = capsys.readouterr().out
    assert "failedrun  " in listing and f"failed, {done} epochs" in listing
    # what the message advises works: the lower learning rate is used from the next epoch on
    assert main(_resume_args(nifti, out, "--lr", "1e-4", "--epochs", str(done + 1))) == 0
    record = _record(out)
    assert record["status"] == "finished" and record["history"][-1]["lr"] == 1e-4
    assert "error" not in record
