"""The one temp-file-then-rename primitive and the writers built on it: a failed write never
touches the previous file and leaves no temporary file behind."""
from __future__ import annotations

import json
import os
import stat

import pytest
import torch

from isegformer import atomic
from isegformer.atomic import atomic_replace
from isegformer.checkpoint import load_checkpoint, save_checkpoint
from isegformer.finetune import trainer
from isegformer.output.atomic import OutputPathError, atomic_write
from isegformer.weights.cache import ModelCache


class _WriterFailed(Exception):
    pass


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("options", [{}, {"fsync": True}, {"keep_extension": True}])
def test_a_raising_writer_leaves_the_old_file_and_no_temporary(tmp_path, options):
    target = tmp_path / "result.nii.gz"
    target.write_bytes(b"old")
    with pytest.raises(_WriterFailed):
        with atomic_replace(target, **options) as tmp:
            tmp.write_bytes(b"new but incomplete")
            raise _WriterFailed()
    assert target.read_bytes() == b"old"
    assert _names(tmp_path) == ["result.nii.gz"]


def test_success_replaces_the_file_with_the_usual_permissions(tmp_path):
    target = tmp_path / "record.json"
    target.write_text("old")
    with atomic_replace(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        assert target.read_text() == "old"  # nothing visible until the block succeeds
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert _names(tmp_path) == ["record.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600


def test_temporary_names(tmp_path):
    # Writers choosing the format from the extension need it last; elsewhere the name ends in
    # .tmp. Both carry the package's prefix and the owner's PID, so leftovers are recognisable.
    with atomic_replace(tmp_path / "labels.nii.gz", keep_extension=True) as tmp:
        assert tmp.name.startswith(".isegformer-tmp.") and tmp.name.endswith(".labels.nii.gz")
        assert f".{os.getpid()}." in tmp.name
        tmp.write_bytes(b"x")
    with atomic_replace(tmp_path / "cache.json") as tmp:
        assert tmp.name.startswith(".isegformer-tmp.") and tmp.name.endswith(".cache.json.tmp")
        tmp.write_bytes(b"x")


def test_fsync_only_when_asked(tmp_path, monkeypatch):
    synced = []
    monkeypatch.setattr(atomic, "_fsync", lambda path: synced.append(path.read_bytes()))
    with atomic_replace(tmp_path / "a", fsync=True) as tmp:
        tmp.write_bytes(b"complete")
    with atomic_replace(tmp_path / "b") as tmp:
        tmp.write_bytes(b"other")
    assert synced == [b"complete"]  # synced once, with the full content, before the rename


def test_the_real_fsync_runs(tmp_path):
    with atomic_replace(tmp_path / "a", fsync=True) as tmp:
        tmp.write_bytes(b"data")
    assert (tmp_path / "a").read_bytes() == b"data"


def test_output_writer_turns_os_errors_into_output_path_errors(tmp_path):
    target = tmp_path / "out.seg.nrrd"
    target.write_bytes(b"old")
    with pytest.raises(OutputPathError, match="Could not write .*out.seg.nrrd"):
        with atomic_write(target) as tmp:
            raise OSError(28, "No space left on device")
    assert target.read_bytes() == b"old" and _names(tmp_path) == ["out.seg.nrrd"]
    with pytest.raises(_WriterFailed):  # other errors pass unchanged
        with atomic_write(target):
            raise _WriterFailed()
    assert target.read_bytes() == b"old" and _names(tmp_path) == ["out.seg.nrrd"]


def test_checkpoint_and_training_state_survive_a_failed_save(tmp_path, monkeypatch):
    path = tmp_path / "model.pth"
    save_checkpoint(path, {"w": torch.ones(2)})
    trainer._atomic_torch_save({"epoch": 1}, tmp_path / "training_state.pt")

    def failing_save(obj, f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(path, {"w": torch.zeros(2)})
    with pytest.raises(OSError, match="No space"):
        trainer._atomic_torch_save({"epoch": 2}, tmp_path / "training_state.pt")
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["state_dict"]["w"], torch.ones(2))
    assert torch.load(tmp_path / "training_state.pt", weights_only=True) == {"epoch": 1}
    assert _names(tmp_path) == ["model.pth", "training_state.pt"]


def test_run_file_is_replaced_whole(tmp_path):
    path = tmp_path / "finetune.json"
    trainer._write_json(path, {"status": "running"})
    with pytest.raises(TypeError):
        trainer._write_json(path, {"status": object()})  # not JSON: the old file stays
    trainer._write_json(path, {"status": "done"})
    assert json.loads(path.read_text()) == {"status": "done"}
    assert _names(tmp_path) == ["finetune.json"]


def test_cache_record_survives_a_failed_edit(tmp_path):
    cache = ModelCache(tmp_path)
    with cache._editing() as data:
        data["note"] = "kept"
    before = cache.record_path.read_text()
    with pytest.raises(TypeError):
        with cache._editing() as data:
            data["note"] = object()  # json.dump fails half-way through the record
    assert cache.record_path.read_text() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("bad", ["", "out\x00.nrrd", None, 3])
def test_unusable_output_paths_are_output_path_errors(bad):
    with pytest.raises(OutputPathError, match="not a usable output path"):
        with atomic_write(bad):
            pass
