"""Where fine-tuned models live (``ISEGFORMER_HOME/finetuned/<run>/model.pth``) and what they are.

``isegformer models`` lists them next to the registry's models, from the ``finetune.json``
each run writes, without loading any checkpoint. :func:`read_run_record` is the one reader of
that file: bounded (:func:`isegformer.json_io.read_json_bounded`) and schema-checked, so a
tampered record is listed as unreadable instead of crashing the listing.
"""
from __future__ import annotations

import logging
import math
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..errors import FileFormatError, InvalidInputError
from ..json_io import read_json_bounded
from ..os_lock import try_lock, unlock_and_close

log = logging.getLogger(__name__)

FINETUNED_DIR = "finetuned"
MODEL_FILE = "model.pth"          # the fine-tuned network, official checkpoint format
STATE_FILE = "training_state.pt"  # everything needed to resume
RUN_FILE = "finetune.json"        # settings, status and history, for people and listings
LOCK_FILE = ".isegformer-run.lock"  # held (flock) by the one process writing the run
RUN_FILES = (MODEL_FILE, STATE_FILE, RUN_FILE)
STATUSES = ("finished", "running", "cancelled", "failed")


class RunRecordError(FileFormatError):
    """A ``finetune.json`` that is not a run record this package wrote."""


@dataclass(frozen=True)
class RunRecord:
    """What a listing needs from ``finetune.json``."""

    status: str
    epochs_done: int
    init: str
    last_noc85: Optional[float]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_run_record(path: Path) -> RunRecord:
    """The checked content of a ``finetune.json``; raises RunRecordError (FileNotFoundError when
    absent)."""
    data = read_json_bounded(path, f"the run record {path}", error=RunRecordError,
                             max_bytes=16 << 20)

    def bad(why: str) -> RunRecordError:
        return RunRecordError(f"the run record {path} {why}; it was not written by this package "
                              "or was changed by hand.")

    if not isinstance(data, dict):
        raise bad(f"holds a {type(data).__name__}, not an object")
    status = data.get("status", "unknown")
    if not isinstance(status, str) or status not in STATUSES:
        raise bad(f"has the status {status!r:.40}, not one of {', '.join(STATUSES)}")
    history = data.get("history", [])
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        raise bad("has a history that is not a list of epoch records")
    nocs = [h.get("val_noc85") for h in history]
    if not all(n is None or _number(n) for n in nocs):
        raise bad("has a val_noc85 that is not a number")
    epochs = data.get("epochs_done", len(history))
    if type(epochs) is not int or epochs < 0:
        raise bad(f"has epochs_done {epochs!r:.40}, not a non-negative integer")
    init = data.get("init", "")
    if not isinstance(init, str):
        raise bad("has an 'init' that is not text")
    known = [float(n) for n in nocs if n is not None]
    return RunRecord(status, epochs, init, known[-1] if known else None)


#: The command-line options that select the training and validation slices. A run records them
#: (paths made absolute, defaults filled in) under ``"data"`` in ``finetune.json`` and in its
#: training state; a resume takes each one it is not given from there.
TRAIN_SOURCE_OPTIONS = ("volumes", "labels", "images", "masks")
VAL_SOURCE_OPTIONS = ("val_volumes", "val_labels", "val_images", "val_masks")
DATA_OPTIONS = TRAIN_SOURCE_OPTIONS + VAL_SOURCE_OPTIONS + (
    "slices", "axis", "label_value", "min_area", "val_slices")


def _well_formed_data_value(name: str, value: Any) -> bool:
    if value is None:
        return name != "min_area"
    if name in TRAIN_SOURCE_OPTIONS + VAL_SOURCE_OPTIONS:
        if name.endswith(("volumes", "labels")):
            return isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value)
        return isinstance(value, str)
    if name in ("slices", "axis", "val_slices"):
        return isinstance(value, str)
    return type(value) is int and (name != "min_area" or value >= 0)


def recorded_data_selection(run_dir: Path) -> dict[str, Any]:
    """The data options the run's ``finetune.json`` records: only those it holds, well formed.

    A record written before the data options were recorded holds none of them, except
    ``min_area`` (kept among its settings); one that is missing or unreadable gives ``{}``.
    A malformed value (a record changed by hand) is left out with a warning, so it is treated
    as not recorded; the training data's fingerprint still guards the resume."""
    try:
        data = read_json_bounded(Path(run_dir) / RUN_FILE, f"the run record in {run_dir}",
                                 error=RunRecordError, max_bytes=16 << 20)
    except (OSError, RunRecordError):
        return {}
    if not isinstance(data, dict):
        return {}
    recorded = data.get("data") if isinstance(data.get("data"), dict) else {}
    settings = data.get("settings") if isinstance(data.get("settings"), dict) else {}
    if "min_area" not in recorded and "min_area" in settings:
        recorded = {**recorded, "min_area": settings["min_area"]}
    chosen = {}
    for name in DATA_OPTIONS:
        if name not in recorded:
            continue
        if _well_formed_data_value(name, recorded[name]):
            chosen[name] = recorded[name]
        else:
            log.warning("The run record in %s holds a malformed %s (%.40r); it is ignored.",
                        run_dir, name, recorded[name])
    return chosen


def finetuned_home(home: Optional[Path] = None) -> Path:
    """``ISEGFORMER_HOME/finetuned`` (or under ``home``)."""
    from ..weights.cache import cache_home

    return Path(home if home is not None else cache_home()) / FINETUNED_DIR


@dataclass(frozen=True)
class FinetunedModel:
    name: str              # the run folder's name
    checkpoint: Path       # its model.pth
    status: str            # "finished", "running", "cancelled", "failed" or "unknown"
    epochs_done: int
    init: str
    last_noc85: Optional[float]
    size: int              # bytes of model.pth


def list_finetuned(home: Optional[Path] = None) -> list[FinetunedModel]:
    """The fine-tuned models under ``finetuned_home(home)`` that have a checkpoint, by name."""
    root = finetuned_home(home)
    if not root.is_dir():
        return []
    models = []
    try:
        run_dirs = sorted(p for p in root.iterdir() if p.is_dir())
    except OSError as err:
        log.warning("cannot list the fine-tuned models in %s: %s", root, err.strerror or err)
        return []
    for run_dir in run_dirs:
        checkpoint = run_dir / MODEL_FILE
        if not checkpoint.is_file():
            continue
        try:
            record = read_run_record(run_dir / RUN_FILE)
        except FileNotFoundError:
            record = RunRecord("unknown (no finetune.json)", 0, "", None)
        except RunRecordError as err:
            log.warning("%s", err)
            record = RunRecord(f"unknown ({RUN_FILE} unreadable)", 0, "", None)
        try:
            size = checkpoint.stat().st_size
        except OSError:
            continue
        models.append(FinetunedModel(run_dir.name, checkpoint, record.status, record.epochs_done,
                                     record.init, record.last_noc85, size))
    return models


class RunFolderBusyError(InvalidInputError):
    """Another process is writing a fine-tuning run into the same folder."""


class RunLock:
    """The exclusive right to write a run folder, held for the whole run.

    The operating system's lock (:mod:`isegformer.os_lock`, as for the weights cache) goes away
    with its holder, so a killed run never blocks the folder. The lock file stays in place after
    release: removing it would let a process that opened the old file and one that creates a
    new one both believe they hold the lock. It
    records who holds it, so that a refused second writer can be told which process to wait for.
    """

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / LOCK_FILE
        self._fd: Optional[int] = None

    def acquire(self) -> "RunLock":
        from ..output.atomic import OutputPathError
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise OutputPathError(
                f"Cannot write in the run folder {self.path.parent}: {err.strerror or err}. "
                "Choose an --out folder you can write to."
            ) from None
        if not try_lock(fd):
            holder = _read_holder(fd)
            os.close(fd)
            raise RunFolderBusyError(
                f"Another fine-tuning run is writing to {self.path.parent}"
                + (f" ({holder})" if holder else "")
                + ". Wait for it to end (or stop it), or choose another --out folder."
            )
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        except OSError:
            pass  # who holds it is only for messages
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            unlock_and_close(fd)


def _read_holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 200).decode("utf-8", "replace").strip()
    except OSError:
        return ""
    return text if text.startswith("pid ") else ""
