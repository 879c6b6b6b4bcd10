"""Review R6 item 3: a resumed fine-tuning run trains on the run's own data.

The data options (--volumes/--labels, --slices, --axis, --label-value, --min-area and the
validation ones) are recorded when a run starts; a resume that leaves one out takes the run's
value, one given explicitly that differs is applied and recorded under ``resumes``, and training
data that differs from the run's without such a change (the files changed, or an old record that
did not store the options) is refused before anything in the folder changes.

Real NIfTI files (SimpleITK), the real CLI, a tiny network, one-step epochs and 32x32 crops.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from isegformer.cli.main import main
from isegformer.finetune.data import slices_from_volumes
from isegformer.finetune.runs import MODEL_FILE, RUN_FILE, STATE_FILE
from isegformer.finetune.trainer import data_fingerprint
from finetune_testkit import two_object_volume, write_nifti

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py

LABELLED = [2, 5]  # the run's slices; the volume has 12, so the default (paper: 40, 80, 120) fails


@pytest.fixture()
def nifti(tmp_path):
    """A 12x40x40 volume with objects of label 1 and label 2 on slices 2..9, and its label map
    (one per test: some tests rewrite the label file)."""
    return two_object_volume(tmp_path)


def _start(nifti, out, *extra):
    volume, label = nifti
    return main(["finetune", "--volumes", str(volume), "--labels", str(label), "--slices", "2,5",
                 "--label-value", "2", "--init", "scratch", "--variant", "tiny", "--device", "cpu",
                 "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "1", "--crop", "32", "32",
                 "--val-samples", "0", "--out", str(out), *extra])


def _fingerprint(nifti, label_value):
    """The training data's fingerprint as the trainer computes it, read here independently."""
    return data_fingerprint(slices_from_volumes([nifti[0]], [nifti[1]], 0, LABELLED, label_value, 20))


def _state(out) -> dict:
    return torch.load(Path(out) / STATE_FILE, map_location="cpu", weights_only=False)


def _record(out) -> dict:
    return json.loads((Path(out) / RUN_FILE).read_text())


def _files(out) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in Path(out).iterdir()
            if p.name in (MODEL_FILE, STATE_FILE, RUN_FILE)}


@pytest.fixture()
def run(nifti, tmp_path):
    out = tmp_path / "run"
    assert _start(nifti, out) == 0
    assert _fingerprint(nifti, 2) != _fingerprint(nifti, None)
    assert _state(out)["data"] == _fingerprint(nifti, 2)
    return out


def test_a_run_records_its_data_options(run, nifti):
    data = _record(run)["data"]
    assert data["volumes"] == [str(nifti[0].resolve())]
    assert data["labels"] == [str(nifti[1].resolve())]
    assert (data["slices"], data["axis"], data["label_value"], data["min_area"]) == ("2,5", "k", 2, 20)
    assert data["val_volumes"] is None and data["val_slices"] is None


def test_resume_without_label_value_keeps_label_2(run, nifti):
    volume, label = nifti
    assert main(["finetune", "--volumes", str(volume), "--labels", str(label), "--slices", "2,5",
                 "--epochs", "2", "--device", "cpu", "--out", str(run), "--resume"]) == 0
    assert _state(run)["epoch"] == 2
    assert _state(run)["data"] == _fingerprint(nifti, 2)  # not every label
    record = _record(run)
    assert record["data"]["label_value"] == 2
    assert record["resumes"] == [{"epoch": 1, "changed": {"epochs": [1, 2]}}]


def test_resume_with_no_data_option_at_all_takes_the_runs_files_and_slices(run, nifti):
    assert main(["finetune", "--epochs", "2", "--device", "cpu", "--out", str(run), "--resume"]) == 0
    assert _state(run)["epoch"] == 2
    assert _state(run)["data"] == _fingerprint(nifti, 2)
    assert len(_record(run)["training_slices"]) == len(LABELLED)


def test_resume_with_another_label_value_given_is_applied_and_recorded(run, nifti):
    assert main(["finetune", "--label-value", "1", "--epochs", "2", "--device", "cpu",
                 "--out", str(run), "--resume"]) == 0
    assert _state(run)["data"] == _fingerprint(nifti, 1)
    record = _record(run)
    assert record["data"]["label_value"] == 1
    assert record["resumes"] == [{"epoch": 1, "changed": {"epochs": [1, 2], "label_value": [2, 1]}}]
    assert _state(run)["resumes"] == record["resumes"]


def test_resume_with_another_min_area_given_is_applied_and_recorded(run, nifti):
    assert main(["finetune", "--min-area", "5", "--epochs", "2", "--device", "cpu",
                 "--out", str(run), "--resume"]) == 0
    record = _record(run)
    assert record["settings"]["min_area"] == 5 and record["data"]["min_area"] == 5
    assert record["resumes"][-1]["changed"]["min_area"] == [20, 5]


def _refused(argv, capsys) -> str:
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_resume_on_changed_data_files_without_a_data_option_changed_is_refused(run, nifti, capsys):
    label = np.zeros((12, 40, 40), np.uint8)
    label[2:10, 5:35, 5:35] = 2  # same path, same options, other objects
    write_nifti(label, nifti[1])
    before = _files(run)
    err = _refused(["finetune", "--epochs", "2", "--device", "cpu", "--out", str(run), "--resume"],
                   capsys)
    assert "differ from those the run" in err and "no data option was changed" in err
    assert "data files themselves changed" in err
    assert _files(run) == before  # nothing recorded, nothing trained


def _make_old(run):
    """What a run written before the data options were recorded holds."""
    record = _record(run)
    del record["data"]
    (run / RUN_FILE).write_text(json.dumps(record))
    state = _state(run)
    del state["data_selection"]
    torch.save(state, run / STATE_FILE)


def test_an_old_record_without_data_options_still_resumes_with_the_data_given(run, nifti, caplog):
    _make_old(run)
    volume, label = nifti
    with caplog.at_level(logging.WARNING, logger="isegformer"):
        assert main(["finetune", "--volumes", str(volume), "--labels", str(label), "--slices", "2,5",
                     "--label-value", "2", "--epochs", "2", "--device", "cpu", "--out", str(run),
                     "--resume"]) == 0
    assert "holds no data options" in caplog.text
    assert _state(run)["epoch"] == 2 and _state(run)["data"] == _fingerprint(nifti, 2)
    assert _record(run)["data"]["label_value"] == 2  # recorded from now on


def test_an_old_record_resumed_on_other_data_is_refused_not_trained(run, nifti, capsys):
    _make_old(run)
    volume, label = nifti
    before = _files(run)
    err = _refused(["finetune", "--volumes", str(volume), "--labels", str(label), "--slices", "2,5",
                    "--epochs", "2", "--device", "cpu", "--out", str(run), "--resume"], capsys)
    assert "older version" in err and "--label-value" in err
    assert _files(run) == before


def test_python_api_resume_on_other_slices_is_refused_unless_told(run, nifti):
    """The trainer's own rule, for callers other than the CLI: other data needs data_changes."""
    from isegformer.errors import InvalidInputError
    from isegformer.finetune.trainer import FinetuneSettings, finetune

    every_label = slices_from_volumes([nifti[0]], [nifti[1]], 0, LABELLED, None, 20)
    before = _files(run)
    with pytest.raises(InvalidInputError, match="no data option was changed"):
        finetune(every_label, run, FinetuneSettings(epochs=2, device="cpu"), resume=True)
    assert _files(run) == before
    result = finetune(every_label, run, FinetuneSettings(epochs=2, device="cpu"), resume=True,
                      data_changes={"label_value": [2, None]})
    assert result.epochs_done == 2
    assert _state(run)["data"] == _fingerprint(nifti, None)
    assert _record(run)["data"]["label_value"] is None  # the run's selection, with the change
    assert _record(run)["resumes"][-1]["changed"]["label_value"] == [2, None]
