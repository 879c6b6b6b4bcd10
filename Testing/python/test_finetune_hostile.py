"""Fine-tuning against hostile input: tampered run records and training states, damaged PNGs, a
full disk under --out, and a process killed while writing its checkpoint.

Each is answered with the package's own error (or, for the listing, a run marked unreadable);
nothing half-written is left behind.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from isegformer.cli.main import main
from isegformer.click_engine.model import ClickModelConfig
from isegformer.errors import CheckpointError, InvalidInputError, ISegFormerError
from isegformer.finetune.data import TrainingSlice, slices_from_png_folders
from isegformer.finetune.runs import MODEL_FILE, RUN_FILE, STATE_FILE, list_finetuned
from isegformer.finetune.trainer import FinetuneSettings, finetune

LOGIC = Path(__file__).resolve().parents[2] / "Logic"
MICRO = ClickModelConfig(embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), window=4,
                         head_channels=8, name="micro")


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def _slices(count=2, size=40):
    rng = np.random.default_rng(3)
    slices = []
    for n in range(count):
        image = rng.random((size, size, 3)).astype(np.float32) * 0.3
        label = np.zeros((size, size), dtype=np.int32)
        label[10:24, 12:26] = 1
        image[label == 1] += 0.6
        slices.append(TrainingSlice(image, label, (1,), f"synthetic {n}"))
    return slices


def _settings(**change):
    base = dict(init="scratch", model_config=MICRO, epochs=1, steps_per_epoch=1, batch_size=1,
                crop_size=(32, 32), seed=1, device="cpu", val_samples=0, max_num_points=4)
    base.update(change)
    return FinetuneSettings(**base)


def _png_folders(tmp_path: Path) -> tuple[Path, Path]:
    from skimage.io import imsave

    images, masks = tmp_path / "img", tmp_path / "msk"
    images.mkdir()
    masks.mkdir()
    for n, s in enumerate(_slices()):
        imsave(images / f"s{n}.png", (s.image[..., 0] * 255).astype(np.uint8), check_contrast=False)
        imsave(masks / f"s{n}.png", (s.label * 255).astype(np.uint8), check_contrast=False)
    return images, masks


def _leftover_temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and "tmp" in p.name)


# --- item 17: tampered finetune.json in `isegformer models` -----------------------------------

@pytest.mark.parametrize("content", [
    b"[]",
    b'{"history": [1]}',
    b'{"epochs_done": "many"}',
    b'{"status": {"a": 1}}',
    b'{"history": [{"val_noc85": "low"}]}',
    b"\xff\xfe\x00not text",
    b"[" * 5000 + b"]" * 5000,
])
def test_tampered_run_record_is_listed_as_unreadable(tmp_path, monkeypatch, capsys, content):
    monkeypatch.setenv("ISEGFORMER_HOME", str(tmp_path / "home"))
    run = tmp_path / "home" / "finetuned" / "my-run"
    run.mkdir(parents=True)
    (run / MODEL_FILE).write_bytes(b"weights")
    (run / RUN_FILE).write_bytes(content)
    (listed,) = list_finetuned()
    assert listed.name == "my-run" and "unreadable" in listed.status
    assert main(["models", "--no-verify"]) == 0
    assert "my-run" in capsys.readouterr().out


# --- item 26: damaged PNGs ---------------------------------------------------------------------

@pytest.mark.parametrize("damage", ["truncated", "text", "garbage header"])
def test_a_damaged_png_is_named_in_a_package_error(tmp_path, damage):
    images, masks = _png_folders(tmp_path)
    target = images / "s1.png"
    data = target.read_bytes()
    target.write_bytes({"truncated": data[: len(data) // 2],
                        "text": b"this is not an image",
                        "garbage header": data[:8] + b"\0" * 40 + data[48:]}[damage])
    with pytest.raises(InvalidInputError, match="s1.png"):
        slices_from_png_folders(images, masks)


def test_a_damaged_mask_gives_a_cli_error_not_a_traceback(tmp_path, capsys):
    images, masks = _png_folders(tmp_path)
    (masks / "s0.png").write_bytes((masks / "s0.png").read_bytes()[:60])
    code = main(["finetune", "--images", str(images), "--masks", str(masks), "--init", "scratch",
                 "--variant", "tiny", "--epochs", "1", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 1 and "s0.png" in err and "cannot be read as a PNG" in err
    assert "Traceback" not in err


# --- item 26: a full disk under --out ------------------------------------------------------------

def test_full_disk_while_saving_the_checkpoint_is_an_output_error(tmp_path, monkeypatch):
    import isegformer.checkpoint as checkpoint

    def torch_full_disk(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 partial")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter "
                           "failed writing file data/3: file write failed")

    monkeypatch.setattr(checkpoint.torch, "save", torch_full_disk)
    out = tmp_path / "run"
    with pytest.raises(ISegFormerError, match="Could not write the checkpoint.*file write failed"):
        finetune(_slices(), out, _settings())
    assert not (out / MODEL_FILE).exists()
    assert _leftover_temporaries(out) == []


@contextlib.contextmanager
def _small_tmpfs(target: Path, size: str):
    target.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(target)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root on Linux); the monkeypatched test "
                    "above covers the same code")
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


def test_out_on_a_full_disk_gives_a_cli_error_and_leaves_nothing(tmp_path, capsys):
    images, masks = _png_folders(tmp_path)
    with _small_tmpfs(tmp_path / "disk", "512k") as out:
        code = main(["finetune", "--images", str(images), "--masks", str(masks), "--init",
                     "scratch", "--variant", "tiny", "--epochs", "1", "--steps-per-epoch", "1",
                     "--batch-size", "1", "--crop", "32", "32", "--device", "cpu",
                     "--val-samples", "0", "--out", str(out / "run")])
        err = capsys.readouterr().err
        assert code == 1, err
        assert "Could not write the checkpoint" in err and "Traceback" not in err
        assert not (out / "run" / MODEL_FILE).exists()
        assert _leftover_temporaries(out / "run") == []


@pytest.mark.parametrize("change, message", [
    ({"seed": -1}, "seed"),
    ({"seed": 2**70}, "seed"),
    ({"lr": float("inf")}, "learning rate"),
    ({"lr": float("nan")}, "learning rate"),
    ({"lr_gamma": float("nan")}, "lr_gamma"),
])
def test_impossible_settings_are_refused_before_training(tmp_path, change, message):
    with pytest.raises(InvalidInputError, match=message):
        finetune(_slices(), tmp_path / "run", _settings(**change))
    assert not (tmp_path / "run" / MODEL_FILE).exists()


def test_a_diverged_epoch_never_replaces_the_last_good_checkpoint(tmp_path, monkeypatch):
    from isegformer.finetune import trainer

    out = tmp_path / "run"
    finetune(_slices(), out, _settings(epochs=1))
    good = (out / MODEL_FILE).read_bytes(), (out / STATE_FILE).read_bytes()
    real_epoch = trainer._Run._epoch

    def diverging_epoch(self, epoch, progress):
        record = real_epoch(self, epoch, progress)
        with torch.no_grad():
            next(self.model.parameters()).fill_(float("nan"))
        return record

    monkeypatch.setattr(trainer._Run, "_epoch", diverging_epoch)
    with pytest.raises(InvalidInputError, match="diverged in epoch 2.*last good epoch"):
        finetune(_slices(), out, _settings(epochs=2), resume=True)
    assert ((out / MODEL_FILE).read_bytes(), (out / STATE_FILE).read_bytes()) == good


# --- tampered training states ---------------------------------------------------------------------

def _state(**change):
    state = {"format": 1, "epoch": 1, "model": {"w": torch.zeros(2)},
             "model_config": dict(MICRO.to_plain()["params"]), "optimizer": {}, "scheduler": {},
             "settings": _settings().to_plain(), "history": []}
    state.update(change)
    return state


@pytest.mark.parametrize("state, message", [
    ([1, 2], "not a training state"),
    (_state(epoch="many"), "epoch"),
    (_state(history=[{"epoch": "one"}]), "history"),
    (_state(model_config=dict(MICRO.to_plain()["params"], embed_dim=0)), "embed_dim"),
    (_state(model_config={"depths": 3}), "network shape"),
    (_state(settings={"lr": "fast"}), "settings"),
    (_state(), "weights"),
    (_state(model={"w": torch.tensor([float("nan")])}), "not finite"),
])
def test_a_tampered_training_state_is_a_checkpoint_error(tmp_path, state, message):
    out = tmp_path / "run"
    out.mkdir()
    torch.save(state, out / STATE_FILE)
    with pytest.raises(CheckpointError, match=message):
        finetune(_slices(), out, _settings(), resume=True)


# --- item 12: a process killed while writing its checkpoint ----------------------------------------

_KILLED_WHILE_SAVING = textwrap.dedent("""
    import os, signal, sys
    import numpy as np, torch
    import isegformer.checkpoint as checkpoint
    from isegformer.click_engine.model import ClickModelConfig
    from isegformer.finetune.data import TrainingSlice
    from isegformer.finetune.trainer import FinetuneSettings, finetune

    real_save, which = torch.save, sys.argv[2]

    def dies_halfway(obj, f, *args, **kwargs):
        if which == "state" and "optimizer" not in obj:
            return real_save(obj, f, *args, **kwargs)  # model.pth completes
        f.write(b"PK\\x03\\x04 half of a checkpoint")
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    checkpoint.torch.save = dies_halfway
    label = np.zeros((40, 40), np.int32); label[10:24, 12:26] = 1
    image = np.full((40, 40, 3), 0.2, np.float32); image[label == 1] = 0.8
    config = ClickModelConfig(embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2),
                              window=4, head_channels=8)
    finetune([TrainingSlice(image, label, (1,), "s")], sys.argv[1], FinetuneSettings(
        init="scratch", model_config=config, epochs=1, steps_per_epoch=1, batch_size=1,
        crop_size=(32, 32), device="cpu", val_samples=0, max_num_points=4))
""")


def test_temporaries_of_a_dead_writer_are_removed_when_the_next_run_starts(tmp_path):
    """What a killed write leaves (the slow test below really kills one): the next run in the
    folder removes it before training, even if that run stops before its first save."""
    from isegformer.atomic import temporary_name

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "run"
    out.mkdir()
    for target in (MODEL_FILE, STATE_FILE):
        name = temporary_name(target, keep_extension=False).split(".")
        name[3] = str(dead.pid)  # .isegformer-tmp.<host>.<pid>.<token>.<target>.tmp
        (out / ".".join(name)).write_bytes(b"PK\x03\x04 half of a checkpoint")
    assert len(_leftover_temporaries(out)) == 2

    def cancel(done, total, message):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(_slices(), out, _settings(), progress=cancel)
    assert _leftover_temporaries(out) == []


@pytest.mark.slow
@pytest.mark.parametrize("which", ["model", "state"])
def test_temporaries_of_a_killed_checkpoint_write_are_removed_by_the_next_run(tmp_path, which):
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-c", _KILLED_WHILE_SAVING, str(out), which],
                          capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=600,
                          env={"PYTHONPATH": str(LOGIC), "OMP_NUM_THREADS": "1"})
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    stale = _leftover_temporaries(out)
    wanted = MODEL_FILE if which == "model" else STATE_FILE
    assert len(stale) == 1 and wanted in stale[0], stale  # what the kill left behind
    if which == "state":  # its model.pth was complete: a new run may not write over it
        with pytest.raises(InvalidInputError, match="already holds model.pth"):
            finetune(_slices(), out, _settings())
        assert _leftover_temporaries(out) == []  # removed even by the refused run
        (out / MODEL_FILE).unlink()
    result = finetune(_slices(), out, _settings())  # the next run in the same folder
    assert result.checkpoint.is_file()
    assert _leftover_temporaries(out) == []
