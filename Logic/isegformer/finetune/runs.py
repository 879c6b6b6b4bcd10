"""Where fine-tuned models live (``ISEGFORMER_HOME/finetuned/<run>/model.pth``) and what they are.

``isegformer models`` lists them next to the registry's models, from the ``finetune.json``
each run writes, without loading any checkpoint. :func:`read_run_record` is the one reader of
that file: bounded (:func:`isegformer.json_io.read_json_bounded`) and schema-checked, so a
tampered record is listed as unreadable instead of crashing the listing.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..errors import FileFormatError
from ..json_io import read_json_bounded

log = logging.getLogger(__name__)

FINETUNED_DIR = "finetuned"
MODEL_FILE = "model.pth"          # the fine-tuned network, official checkpoint format
STATE_FILE = "training_state.pt"  # everything needed to resume
RUN_FILE = "finetune.json"        # settings, status and history, for people and listings
STATUSES = ("finished", "running", "cancelled")


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


def finetuned_home(home: Optional[Path] = None) -> Path:
    """``ISEGFORMER_HOME/finetuned`` (or under ``home``)."""
    from ..weights.cache import cache_home

    return Path(home if home is not None else cache_home()) / FINETUNED_DIR


@dataclass(frozen=True)
class FinetunedModel:
    name: str              # the run folder's name
    checkpoint: Path       # its model.pth
    status: str            # "finished", "running", "cancelled" or "unknown"
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
