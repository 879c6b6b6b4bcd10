"""Where fine-tuned models live (``ISEGFORMER_HOME/finetuned/<run>/model.pth``) and what they are.

``isegformer models`` lists them next to the registry's models, from the ``finetune.json``
each run writes, without loading any checkpoint.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)

FINETUNED_DIR = "finetuned"
MODEL_FILE = "model.pth"          # the fine-tuned network, official checkpoint format
STATE_FILE = "training_state.pt"  # everything needed to resume
RUN_FILE = "finetune.json"        # settings, status and history, for people and listings


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
    for run_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        checkpoint = run_dir / MODEL_FILE
        if not checkpoint.is_file():
            continue
        info: dict = {}
        try:
            info = json.loads((run_dir / RUN_FILE).read_text())
        except (OSError, ValueError):
            log.info("%s has no readable %s.", run_dir, RUN_FILE)
        history = info.get("history") or []
        nocs = [h.get("val_noc85") for h in history if h.get("val_noc85") is not None]
        models.append(FinetunedModel(
            run_dir.name, checkpoint, str(info.get("status", "unknown")),
            int(info.get("epochs_done", len(history))), str(info.get("init", "")),
            float(nocs[-1]) if nocs else None, checkpoint.stat().st_size))
    return models
