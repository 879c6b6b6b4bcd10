"""Fine-tuning iSegFormer on a few segmented slices: the paper's training recipe.

One training step, as in the paper (RITM's iterative training):

1. a batch of augmented crops, each with one target object and 1-12 simulated clicks
   (:mod:`.data`, :mod:`.augment`, :mod:`.points_sampler`);
2. 0 to 3 *iterative* clicks: the network predicts without gradient, a corrective click is put
   in its largest error, and its prediction is fed back as the previous mask;
3. the last prediction is scored with the normalised focal loss (alpha 0.5, gamma 2) and Adam
   (lr 5e-4) takes a step; the learning rate drops tenfold near the end (a step schedule).

After each epoch the network is saved in the official checkpoint format (``model.pth``, read by
the same loader as the official weights), the full training state (model, optimiser, schedule,
epoch) goes to ``training_state.pt`` for resuming, and ``finetune.json`` records the settings
and the history: loss and a quick validation NoC@85 per epoch.

Randomness is derived from (seed, epoch, step) rather than carried along, so a run resumed
after an interruption continues exactly as the uninterrupted run would have, and a fixed seed
gives the same weights on the CPU.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import numbers
import os
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from ..atomic import atomic_replace, remove_stale_temporaries
from ..checkpoint import (
    check_finite,
    describe_keys,
    non_finite_tensors,
    read_torch_object,
    save_checkpoint,
    write_torch_file,
)
from ..click_engine.build import validate_click_config
from ..click_engine.model import ClickModelConfig, ISegFormer
from ..device import resolve_device
from ..errors import CancelledError, CheckpointError, InvalidInputError, ISegFormerError
from ..progress import ProgressCallback, report
from .augment import AugmentSettings, Augmenter
from .data import DEFAULT_MIN_AREA, TrainingSlice, training_example
from .init import InitReport, initial_model
from .loss import NormalizedFocalLoss
from .points_sampler import MultiPointSampler, SamplerSettings, next_training_points
from .runs import (MODEL_FILE, RUN_FILE, RUN_FILES, STATE_FILE, RunLock, RunRecordError,
                   read_run_record)

log = logging.getLogger(__name__)

STATE_FORMAT = 1
_STATE_ADVICE = ("Restore it from a backup; or, to go on from this folder's model.pth without "
                 "its training state, start a new run in another --out folder with --init "
                 "pointing at that model.pth.")
#: The reference drops the learning rate at epoch 49 of 55; we keep that proportion.
LR_DROP_FRACTION = 49 / 55


@dataclass
class FinetuneSettings:
    """Everything that defines a fine-tuning run.

    A field left as None takes the paper's recipe (:data:`RECIPE`) in a new run; in a resumed
    run it keeps the run's stored value. A field given on resume must equal the stored one,
    except those in :data:`RESUME_CHANGEABLE` (applied, logged and recorded) and
    :data:`PER_INVOCATION` (where this invocation runs).
    """

    init: Optional[str] = None             # "official", "scratch" or a checkpoint path
    variant: Optional[str] = None          # network for "official" and "scratch"
    model_config: Optional[ClickModelConfig] = None  # a custom shape for "scratch" (overrides variant)
    imagenet_checkpoint: Optional[str] = None        # ImageNet Swin weights for "scratch"
    epochs: Optional[int] = None
    steps_per_epoch: Optional[int] = None
    batch_size: Optional[int] = None
    lr: Optional[float] = None
    lr_milestones: Optional[tuple[int, ...]] = None  # epochs after which lr *= lr_gamma
    lr_gamma: Optional[float] = None
    crop_size: Optional[tuple[int, int]] = None
    max_num_points: Optional[int] = None
    max_iterative_clicks: Optional[int] = None
    min_area: Optional[int] = None
    seed: Optional[int] = None
    device: Optional[str] = None
    mixed_precision: Optional[bool] = None  # CUDA only
    gradient_checkpointing: Optional[bool] = None  # CUDA only
    val_samples: Optional[int] = None
    val_max_clicks: Optional[int] = None
    val_zoom_in: Optional[bool] = None
    num_workers: Optional[int] = None

    def with_defaults(self) -> "FinetuneSettings":
        """A copy with every field left as None set to the paper's recipe."""
        return replace(self, **{k: v for k, v in RECIPE.items() if getattr(self, k) is None})

    def validate(self) -> None:
        """Refuse impossible settings (of the recipe-completed copy) before anything is built."""
        s = self.with_defaults()
        ints = {"epochs": s.epochs, "steps_per_epoch": s.steps_per_epoch, "batch_size": s.batch_size,
                "max_num_points": s.max_num_points, "val_max_clicks": s.val_max_clicks,
                "max_iterative_clicks": s.max_iterative_clicks, "min_area": s.min_area,
                "val_samples": s.val_samples, "num_workers": s.num_workers}
        not_int = [f"{k}={v!r}" for k, v in ints.items() if not _whole(v)]
        if not_int:
            raise InvalidInputError(f"These settings must be whole numbers: {', '.join(not_int)}.")
        positive = {k: ints[k] for k in ("epochs", "steps_per_epoch", "batch_size",
                                         "max_num_points", "val_max_clicks")}
        bad = [f"{k}={v}" for k, v in positive.items() if int(v) < 1]
        if bad:
            raise InvalidInputError(f"These settings must be at least 1: {', '.join(bad)}.")
        if not (isinstance(s.lr, (int, float)) and math.isfinite(s.lr) and s.lr > 0):
            raise InvalidInputError(f"The learning rate must be a positive number, got {s.lr}.")
        if not (isinstance(s.lr_gamma, (int, float)) and math.isfinite(s.lr_gamma)
                and s.lr_gamma > 0):
            raise InvalidInputError(f"lr_gamma must be a positive number, got {s.lr_gamma}.")
        if type(s.seed) is not int or not 0 <= s.seed < 2**63:
            raise InvalidInputError(f"The seed must be an integer from 0 to 2**63-1, got {s.seed}.")
        if not 0 <= s.max_iterative_clicks <= s.max_num_points:
            raise InvalidInputError(
                f"max_iterative_clicks must be in 0..{s.max_num_points}, got {s.max_iterative_clicks}."
            )
        if s.val_samples < 0 or s.num_workers < 0:
            raise InvalidInputError("val_samples and num_workers cannot be negative.")
        if s.min_area < 0:
            raise InvalidInputError(f"min_area cannot be negative, got {s.min_area}.")
        crop = tuple(s.crop_size)
        if len(crop) != 2 or not all(_whole(v) for v in crop):
            raise InvalidInputError(f"The crop size must be two whole numbers (rows, cols), got {crop}.")
        Augmenter(AugmentSettings(crop_size=crop))  # its own checks, before any model is built
        if s.model_config is not None:
            validate_click_config(s.model_config)
        if s.imagenet_checkpoint is not None and s.init != "scratch":
            raise InvalidInputError(
                f"An ImageNet backbone (--imagenet) is only used with --init scratch; this run "
                f"starts from --init {s.init!r}. Leave --imagenet out, or use --init scratch.")

    def milestones(self) -> list[int]:
        if self.lr_milestones is not None:
            return sorted(int(m) for m in self.lr_milestones)
        epochs = self.epochs if self.epochs is not None else RECIPE["epochs"]
        drop = int(round(epochs * LR_DROP_FRACTION))
        return [drop] if 0 < drop < epochs else []

    def to_plain(self) -> dict[str, Any]:
        resolved = self.with_defaults()
        plain = asdict(resolved)
        plain["crop_size"] = list(resolved.crop_size)
        plain["lr_milestones"] = resolved.milestones()
        if resolved.model_config is not None:
            plain["model_config"] = resolved.model_config.to_plain()["params"]
        return plain

    @classmethod
    def from_plain(cls, plain: dict[str, Any]) -> "FinetuneSettings":
        """The stored settings of a run; a field the record lacks takes the recipe's value."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in plain.items() if k in known}
        if values.get("crop_size") is not None:
            values["crop_size"] = tuple(values["crop_size"])
        if values.get("lr_milestones") is not None:
            values["lr_milestones"] = tuple(values["lr_milestones"])
        if values.get("model_config") is not None:
            values["model_config"] = config_from_plain(values["model_config"])
        return cls(**values).with_defaults()


#: The paper's recipe: the value of every setting a new run is not given. None for
#: model_config, imagenet_checkpoint and lr_milestones means: the variant's shape, no ImageNet
#: backbone, and the drop at 49/55 of the run.
RECIPE: dict[str, Any] = dict(
    init="official", variant="swin_base", model_config=None, imagenet_checkpoint=None,
    epochs=10, steps_per_epoch=100, batch_size=8, lr=5e-4, lr_milestones=None, lr_gamma=0.1,
    crop_size=(320, 480), max_num_points=12, max_iterative_clicks=3, min_area=DEFAULT_MIN_AREA,
    seed=0, device="auto", mixed_precision=True, gradient_checkpointing=True, val_samples=8,
    val_max_clicks=20, val_zoom_in=True, num_workers=0)

#: Settings a resumed run may change: the run's length, the learning rate (set in the
#: optimiser, so that a diverged run can go on from its last good epoch), what changes only
#: speed, memory or the per-epoch validation, and min_area, which selects the training objects
#: as the other data options do (an explicit change of the data; see ``finetune``).
RESUME_CHANGEABLE = ("epochs", "lr", "mixed_precision", "gradient_checkpointing", "val_samples",
                     "val_max_clicks", "val_zoom_in", "min_area")
#: Where this invocation runs: not part of the run, so never compared with the stored run.
PER_INVOCATION = ("device", "num_workers")
#: The command-line option of each setting, for messages.
OPTION_NAMES = {
    "init": "--init", "variant": "--variant", "model_config": "the network shape (model_config)",
    "imagenet_checkpoint": "--imagenet", "epochs": "--epochs", "steps_per_epoch": "--steps-per-epoch",
    "batch_size": "--batch-size", "lr": "--lr", "lr_milestones": "lr_milestones",
    "lr_gamma": "lr_gamma", "crop_size": "--crop", "max_num_points": "max_num_points",
    "max_iterative_clicks": "max_iterative_clicks", "min_area": "--min-area", "seed": "--seed",
    "mixed_precision": "--amp/--no-amp", "gradient_checkpointing":
        "--gradient-checkpointing/--no-gradient-checkpointing", "val_samples": "--val-samples",
    "val_max_clicks": "--val-max-clicks", "val_zoom_in": "val_zoom_in",
}


def _shown(name: str, value: Any) -> str:
    if name == "model_config":
        return "another network shape" if value is not None else "the variant's shape"
    if name in ("crop_size", "lr_milestones"):
        return " ".join(str(v) for v in _comparable(name, value)) or "none"
    return str(value)


def _comparable(name: str, value: Any) -> Any:
    if name == "crop_size":
        return tuple(int(v) for v in value)
    if name == "lr_milestones":
        return tuple(sorted(int(m) for m in value))
    if name == "model_config":
        return value.to_plain()["params"] if value is not None else None
    return value


def resumed_settings(stored: FinetuneSettings, given: FinetuneSettings, epochs_done: int,
                     run_dir: Path) -> tuple[FinetuneSettings, dict[str, list]]:
    """The settings a resumed run goes on with, and what changed (name: [stored, new]).

    Only what ``given`` sets (not None) counts; a setting outside RESUME_CHANGEABLE that differs
    from the stored run is refused, since the run would silently become another one.
    """
    merged, changed, refused = replace(stored), {}, []
    for f in fields(FinetuneSettings):
        new = getattr(given, f.name)
        if f.name in PER_INVOCATION:
            setattr(merged, f.name, new if new is not None else RECIPE[f.name])
            continue
        old = getattr(stored, f.name)
        if new is None or _comparable(f.name, new) == _comparable(f.name, old):
            continue
        if f.name in RESUME_CHANGEABLE:
            setattr(merged, f.name, new)
            changed[f.name] = [old, new]
        else:
            refused.append(f"{OPTION_NAMES[f.name]} {_shown(f.name, new)} (the run has "
                           f"{_shown(f.name, old) if f.name != 'model_config' else 'its own'})")
    if refused:
        raise InvalidInputError(
            f"The run in {run_dir} cannot be resumed with other settings: {'; '.join(refused)}. "
            "Leave these options out to go on with the run's own values, or start a new run in "
            "another --out folder. On resume only --epochs, --lr, --amp/--no-amp, "
            "--gradient-checkpointing, --val-samples, --val-max-clicks, --device, --workers "
            "and the data options (--min-area, --slices, --label-value, ...) may change."
        )
    if merged.epochs < epochs_done:
        raise InvalidInputError(
            f"The run in {run_dir} has already done {epochs_done} epochs, so --epochs "
            f"{merged.epochs} is too few: give --epochs {epochs_done} or more, or leave it out "
            f"(the run's length is {stored.epochs})."
        )
    return merged, changed


def _whole(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def config_from_plain(params: dict[str, Any]) -> ClickModelConfig:
    """The inverse of ``ClickModelConfig.to_plain()["params"]``; the shape is validated."""
    known = {f.name for f in fields(ClickModelConfig)}
    values = {k: v for k, v in params.items() if k in known}
    values["depths"], values["num_heads"] = tuple(values["depths"]), tuple(values["num_heads"])
    config = ClickModelConfig(**values)
    validate_click_config(config)
    return config


@dataclass
class EpochRecord:
    epoch: int                  # 1-based
    loss: float                 # mean training loss (normalised focal) of the epoch
    lr: float
    seconds: float
    # The normalised focal loss is rescaled per image to the weight of its hard pixels, so it
    # stays near its starting value while the network improves; these two show the progress.
    bce: float = float("nan")   # mean binary cross-entropy of the training predictions
    iou: float = float("nan")   # mean IoU (probability > 0.5) of the training predictions
    val_noc85: Optional[float] = None
    val_samples: int = 0


@dataclass
class FinetuneResult:
    checkpoint: Path
    out_dir: Path
    epochs_done: int
    history: list[EpochRecord] = field(default_factory=list)
    init: str = ""


def derived_seed(*parts: int) -> int:
    """A 32-bit seed for one purpose of a run (parts: the run's seed, then what it is for)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


_INIT_STREAM, _EPOCH_STREAM = 2, 1


def starting_model(settings: FinetuneSettings) -> tuple[ISegFormer, InitReport]:
    """The network a run starts from (CPU, train mode); random weights follow the run's seed."""
    settings = settings.with_defaults()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derived_seed(settings.seed, _INIT_STREAM))
        return initial_model(settings.init, settings.model_config or settings.variant,
                             settings.imagenet_checkpoint)


# --- data -------------------------------------------------------------------------------------------
class _EpochBatches(torch.utils.data.Dataset):
    """Batch ``step`` of an epoch, a pure function of (seed, epoch, step): workers may run in any order."""

    def __init__(self, slices: Sequence[TrainingSlice], settings: FinetuneSettings, epoch: int) -> None:
        self.slices = slices
        self.settings = settings
        self.epoch = epoch
        self.augmenter = Augmenter(AugmentSettings(crop_size=tuple(settings.crop_size)))
        self.sampler = MultiPointSampler(SamplerSettings(max_num_points=settings.max_num_points))

    def __len__(self) -> int:
        return self.settings.steps_per_epoch

    def __getitem__(self, step: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.settings.seed, self.epoch, step, 0])
        examples = []
        for _ in range(self.settings.batch_size):
            slice_ = self.slices[int(rng.integers(len(self.slices)))]
            examples.append(training_example(slice_, self.augmenter, self.sampler, rng, self.settings.min_area))
        return {
            "images": torch.from_numpy(np.stack([e.image for e in examples])),
            "targets": torch.from_numpy(np.stack([e.target for e in examples])),
            "points": torch.from_numpy(np.stack([e.points for e in examples])),
        }


def data_fingerprint(slices: Sequence[TrainingSlice]) -> str:
    digest = hashlib.sha256()
    for s in slices:
        digest.update(s.name.encode())
        digest.update(np.ascontiguousarray(s.label).tobytes())
    return digest.hexdigest()[:16]


def validation_samples(slices: Sequence[TrainingSlice], count: int):
    """Up to ``count`` NoC samples (one object each), spread evenly over ``slices``."""
    from ..evaluation.noc import Sample

    pairs = [(s, i) for s in slices for i in s.object_ids]
    if count <= 0 or not pairs:
        return []
    picks = np.unique(np.linspace(0, len(pairs) - 1, num=min(count, len(pairs))).round().astype(int))
    return [Sample(f"{pairs[p][0].name} #{pairs[p][1]}", pairs[p][0].image,
                   (pairs[p][0].label == pairs[p][1]).astype(np.int8)) for p in picks]


def quick_noc85(model: ISegFormer, samples, device: torch.device, max_clicks: int, zoom_in: bool) -> Optional[float]:
    """Mean NoC@85 of ``samples`` with the simulated user (the paper's protocol)."""
    if not samples:
        return None
    from ..click_engine.predictor import ClickPredictor
    from ..evaluation.noc import evaluate

    was_training = model.training
    try:
        predictor = ClickPredictor(model, zoom_in=zoom_in, device=device)
        result = evaluate(predictor, samples, max_clicks=max_clicks, stop_iou=0.85)
        return float(result.metrics["noc@85"]["mean"])
    finally:
        model.train(was_training)


def _prediction_quality(logits: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
    """Mean BCE over valid pixels and mean per-sample IoU of ``logits > 0``."""
    logits, valid = logits.float(), targets >= 0
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits[valid], targets[valid])
    pred, obj = (logits > 0) & valid, (targets > 0.5) & valid
    inter = (pred & obj).flatten(1).sum(1).float()
    union = (pred | obj).flatten(1).sum(1).float()
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    return float(bce), float(iou.mean())


# --- files -------------------------------------------------------------------------------------------
def _atomic_torch_save(obj: Any, path: Path) -> None:
    write_torch_file(path, obj, "the training state")


def _write_json(path: Path, data: dict) -> None:
    from ..output.atomic import OutputPathError

    try:
        with atomic_replace(path) as tmp:
            tmp.write_text(json.dumps(data, indent=1))
    except OSError as err:
        if isinstance(err, OutputPathError):
            raise
        raise OutputPathError(
            f"Could not write the run record {path}: {err.strerror or err}. The previous record, "
            "if any, is unchanged. Free some disk space or choose another folder, then retry."
        ) from None


def _state_problem(state: Any) -> Optional[str]:
    """What makes a loaded training state unusable, or None (the schema this module writes)."""
    if not isinstance(state, dict):
        return f"it holds a {type(state).__name__}, not a training state"
    if state.get("format") != STATE_FORMAT:
        return f"its format is {state.get('format')!r:.40}, this version writes {STATE_FORMAT}"
    if type(state.get("epoch")) is not int or state["epoch"] < 0:
        return f"its epoch is {state.get('epoch')!r:.40}, not a non-negative integer"
    for key in ("model", "model_config", "optimizer", "scheduler", "settings"):
        if not isinstance(state.get(key), dict):
            return f"its {key!r} is missing or not a mapping"
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state["model"].items()):
        return "its 'model' is not a state dict of tensors"
    history = state.get("history", [])
    if not isinstance(history, list) or not all(_is_epoch_record(r) for r in history):
        return "its 'history' is not a list of epoch records"
    return None


def _is_epoch_record(record: Any) -> bool:
    if not isinstance(record, dict):
        return False
    kinds = {f.name: f.type for f in fields(EpochRecord)}
    if not set(record) <= set(kinds) or not {"epoch", "loss", "lr", "seconds"} <= set(record):
        return False
    for key, value in record.items():
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if kinds[key] == "int" and type(value) is not int:
            return False
        if kinds[key] == "float" and not number:
            return False
        if kinds[key].startswith("Optional") and value is not None and not number:
            return False
    return True


def _cpu_state(module_state: dict) -> dict:
    return {k: v.detach().to("cpu") if torch.is_tensor(v) else v for k, v in module_state.items()}


# --- the run ------------------------------------------------------------------------------------------
class _Run:
    """One invocation of a run: checks, then the folder's lock, then the model, then epochs.

    Everything that can be refused (settings, the folder, the stored state) is refused before
    the folder is changed or any model is built or downloaded; from the first write on, the
    folder's lock is held and ``finetune.json`` says what the run is doing.
    """

    def __init__(self, slices, out_dir, settings, val_slices, resume, data_selection=None,
                 data_changes=None):
        if not slices:
            raise InvalidInputError("No training slice was given: there is nothing to fine-tune on.")
        self.slices = list(slices)
        self.out_dir = Path(out_dir).expanduser()
        self.state_path = self.out_dir / STATE_FILE
        self.model: Optional[ISegFormer] = None
        self.history: list[EpochRecord] = []
        self.saved_epochs = 0       # epochs whose files are on disk (a failed save adds none)
        self.resumes: list[dict] = []
        self.start_epoch = 0
        self.data_selection = dict(data_selection) if data_selection is not None else None
        self.data_changes = dict(data_changes or {})
        if not resume:  # a resumed run's settings are checked once merged with the stored ones
            settings.validate()
        self.device = resolve_device(settings.device or RECIPE["device"])
        self._check_out_dir(resume)
        self._check_run_files(resume)  # before the lock file is made in a folder that is refused
        self.lock = RunLock(self.out_dir)
        self.lock.acquire()
        try:
            self._prepare(settings, val_slices, resume)
        except BaseException:
            self.lock.release()
            raise

    def close(self) -> None:
        self.lock.release()

    def _check_out_dir(self, resume: bool) -> None:
        from ..output.atomic import OutputPathError

        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise OutputPathError(f"--out {self.out_dir} is a file, not a folder: give the run "
                                  "a folder of its own (it need not exist yet).")
        if resume and not self.out_dir.is_dir():
            raise InvalidInputError(f"Nothing to resume: the run folder {self.out_dir} does not "
                                    "exist. Check --out, or start a new run (without --resume).")
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputPathError(
                f"Cannot create the run folder {self.out_dir} (--out): {err.strerror or err}. "
                "Choose a folder you can write to."
            ) from None

    def _prepare(self, given: FinetuneSettings, val_slices, resume: bool) -> None:
        # A run killed while writing its checkpoint left a temporary file; remove it now,
        # not only at the next epoch's write (which a cancelled resume may never reach).
        remove_stale_temporaries(self.out_dir)
        self.fingerprint = data_fingerprint(self.slices)
        self._check_run_files(resume)  # again, now that no other process can change them
        state = self._read_state() if resume else None
        changed: dict[str, list] = {}
        if state is not None:
            stored = self._stored(lambda: FinetuneSettings.from_plain(state["settings"]),
                                  "its settings")
            self._stored(stored.validate, "its settings")
            # The schedule and the data stay as they were; only what resume allows may change.
            settings, changed = resumed_settings(stored, given, int(state["epoch"]), self.out_dir)
            self.start_epoch = self.saved_epochs = int(state["epoch"])
            self.history = self._stored(
                lambda: [EpochRecord(**r) for r in state.get("history", [])], "its history")
            self.resumes = self._stored(lambda: [dict(r) for r in state.get("resumes", [])],
                                        "its record of earlier resumes")
        else:
            settings = given.with_defaults()
        settings.validate()
        self.settings = settings
        if state is not None:
            self._check_resumed_data(state, changed)
            if self.data_selection is None and isinstance(state.get("data_selection"), dict):
                # A caller that gives no selection keeps the run's, with its stated changes.
                self.data_selection = {**state["data_selection"],
                                       **{k: v[1] for k, v in self.data_changes.items()}}
            if self.data_selection is not None and "min_area" in changed:
                self.data_selection["min_area"] = settings.min_area
            changed = {**changed, **self.data_changes}
        if changed:
            for name, (old, new) in changed.items():
                log.info("Resuming with %s %s (the run had %s).",
                         OPTION_NAMES.get(name, "--" + name.replace("_", "-")), new, old)
            self.resumes.append({"epoch": self.start_epoch, "changed": changed})
        self.init = InitReport(str(state.get("init", "resumed")) if state is not None
                               else str(settings.init))
        # The first write: a folder that cannot take the record fails here, before any model
        # is built or downloaded and before an epoch is trained.
        self._write_run_file("running")
        try:
            self._build(state, val_slices, changed)
        except (CancelledError, KeyboardInterrupt):  # e.g. during the official model's download
            self._write_run_file("cancelled")
            raise
        except Exception as err:  # noqa: BLE001 - recorded, then raised as it was
            self._record_failure(err)
            raise

    def _build(self, state: Optional[dict], val_slices, changed: dict) -> None:
        settings = self.settings
        if state is not None:
            # Rebuilt from the stored config, not from the tensors' shapes: drop-path and dropout
            # rates leave no trace in the shapes but shape the training.
            config = self._stored(lambda: config_from_plain(state["model_config"]),
                                  "its network shape")
            validate_click_config(config, f"The network shape stored in {self.state_path}")
            check_finite(state["model"], str(self.state_path), _STATE_ADVICE)
            self.model = ISegFormer(config)
            self._stored(lambda: self.model.load_state_dict(state["model"], strict=True),
                         "its weights")
            self.model.train()
        else:
            self.model, self.init = starting_model(settings)
        self.model.to(self.device)
        cuda = self.device.type == "cuda"
        if cuda and settings.gradient_checkpointing:
            self.model.backbone.use_checkpointing = True
        amp_dtype = None
        if cuda and settings.mixed_precision:
            amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.model.autocast_dtype = amp_dtype
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=settings.lr,
                                          betas=(0.9, 0.999), eps=1e-8)
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(
            self.optimizer, milestones=settings.milestones(), gamma=settings.lr_gamma)
        if state is not None:
            self._stored(lambda: self.optimizer.load_state_dict(state["optimizer"]),
                         "its optimiser state")
            self._stored(lambda: self.scheduler.load_state_dict(state["scheduler"]),
                         "its learning-rate schedule")
            if state.get("scaler"):
                self._stored(lambda: self.scaler.load_state_dict(state["scaler"]),
                             "its gradient scaler")
            if "lr" in changed:
                self._set_base_lr(settings.lr)
        self.loss_fn = NormalizedFocalLoss(alpha=0.5, gamma=2.0)
        self.val_samples = validation_samples(val_slices if val_slices else self.slices,
                                              settings.val_samples)
        self.val_kind = "held-out" if val_slices else "training"

    def _check_resumed_data(self, state: dict, changed: dict) -> None:
        """A resume never trains on other data unless a data option was changed explicitly."""
        stored = state.get("data")
        if stored == self.fingerprint:
            return
        if stored is None:
            log.warning("The training state in %s holds no fingerprint of its training data, so "
                        "the slices given now cannot be checked against the run's.", self.out_dir)
            return
        explicit = sorted(set(self.data_changes) | ({"min_area"} & set(changed)))
        if explicit:
            log.warning("The training slices differ from those the run was trained on, as this "
                        "resume asked (%s changed).",
                        ", ".join("--" + n.replace("_", "-") for n in explicit))
            return
        recorded = state.get("data_selection")
        if isinstance(recorded, dict):
            why = ("Its data options are the same, so the data files themselves changed: "
                   "restore them")
        else:
            why = ("The run was started by an older version, which did not record its data "
                   "options, so the defaults were used for those left out: give --slices, "
                   "--axis and --label-value as the run started with them")
        raise InvalidInputError(
            f"The training slices read now differ from those the run in {self.out_dir} was "
            f"trained on, and no data option was changed, so the resume would silently train "
            f"on other data. {why}; or give the data options you mean to change; or start a "
            f"new run in another --out folder with --init {self.out_dir / MODEL_FILE}."
        )

    def _set_base_lr(self, lr: float) -> None:
        """A new base learning rate for a resumed run; the drops already passed apply to it."""
        import bisect

        passed = bisect.bisect_right(self.settings.milestones(), self.scheduler.last_epoch)
        current = lr * self.settings.lr_gamma ** passed
        for group in self.optimizer.param_groups:
            group["lr"], group["initial_lr"] = current, lr
        self.scheduler.base_lrs = [lr] * len(self.optimizer.param_groups)
        self.scheduler._last_lr = [current] * len(self.optimizer.param_groups)

    def _check_run_files(self, resume: bool) -> None:
        """A new run needs a folder without a run's files; a resumed one, a training state."""
        present = [name for name in RUN_FILES if (self.out_dir / name).exists()]
        if not resume:
            if present and self._unfinished_first_epoch(present):
                log.info("%s holds only the record of a run that completed no epoch; a new run "
                         "takes its place.", self.out_dir)
            elif present:
                if STATE_FILE in present:
                    what = "Continue that run with --resume, or choose another --out folder."
                else:
                    what = "Choose another --out folder, or move these files away first."
                    if MODEL_FILE in present:
                        what += (f" To start from this model, give --init "
                                 f"{self.out_dir / MODEL_FILE} with another --out folder.")
                raise InvalidInputError(
                    f"{self.out_dir} already holds {', '.join(present)}"
                    f"{self._record_summary()}; a new run there would write over "
                    f"{'it' if len(present) == 1 else 'them'}. {what}"
                )
            return
        if STATE_FILE not in present:
            held = (f" (it holds {', '.join(present)}{self._record_summary()})" if present else "")
            if not present or self._unfinished_first_epoch(present):
                what = "Start a new run there (without --resume)."
            else:
                what = ("Start a new run (without --resume) in another --out folder"
                        + (f", with --init {self.out_dir / MODEL_FILE} to start from its model"
                           if MODEL_FILE in present else "") + ".")
            raise InvalidInputError(
                f"Nothing to resume in {self.out_dir}: it holds no {STATE_FILE}{held}, so no "
                f"epoch of a run was completed there. {what}"
            )

    def _read_state(self) -> dict:
        state = read_torch_object(self.state_path, advice=_STATE_ADVICE)
        problem = _state_problem(state)
        if problem:
            raise CheckpointError(f"{self.state_path} is not a training state of this version: "
                                  f"{problem}. {_STATE_ADVICE}")
        return state

    def _unfinished_first_epoch(self, present: list[str]) -> bool:
        """Only this package's record of a run that never completed an epoch: nothing to lose."""
        if present != [RUN_FILE]:
            return False
        try:
            record = read_run_record(self.out_dir / RUN_FILE)
        except (OSError, RunRecordError):
            return False
        return record.epochs_done == 0

    def _record_summary(self) -> str:
        try:
            record = read_run_record(self.out_dir / RUN_FILE)
        except (OSError, RunRecordError):
            return ""
        return f" (a fine-tuning run, {record.status} after {record.epochs_done} epochs)"

    def _stored(self, build: Callable[[], Any], what: str) -> Any:
        """``build()`` from the stored training state; any failure names the file and ``what``."""
        try:
            return build()
        except CheckpointError:
            raise
        except Exception as err:  # noqa: BLE001 - a tampered state fails in many ways
            raise CheckpointError(
                f"{self.state_path} cannot be resumed: {what} do not fit this version "
                f"({type(err).__name__}: {str(err)[:200]}). {_STATE_ADVICE}"
            ) from None

    def _record_failure(self, err: BaseException) -> None:
        message = str(err) if isinstance(err, ISegFormerError) else f"{type(err).__name__}: {err}"
        try:
            self._write_run_file("failed", error=message)
        except Exception as record_err:  # noqa: BLE001 - the first error is the one to report
            log.warning("could not record the failure in %s: %s", self.out_dir / RUN_FILE, record_err)

    def _divergence_advice(self) -> str:
        if self.saved_epochs:
            return (f"The files in {self.out_dir} still hold the last good epoch "
                    f"({self.saved_epochs}): go on from it with --resume and a lower learning "
                    "rate (--lr), or with mixed precision off (--no-amp).")
        return ("No epoch was completed, so there is nothing to resume: run again with a lower "
                "learning rate (--lr), or with mixed precision off (--no-amp).")

    # --- steps ----------------------------------------------------------------------------------
    def _train_step(self, batch: dict[str, torch.Tensor], rng: np.random.Generator) -> tuple[float, float, float]:
        """One optimiser step; returns (loss, BCE, IoU) of the batch's predictions."""
        model, s = self.model, self.settings
        images = batch["images"].to(self.device, non_blocking=True)
        targets = batch["targets"].to(self.device, non_blocking=True)
        points = batch["points"].to(self.device, non_blocking=True)
        prev = torch.zeros_like(targets)
        iterations = int(rng.integers(0, s.max_iterative_clicks + 1))
        if iterations:
            model.eval()
            with torch.no_grad():
                for click_number in range(1, iterations + 1):
                    prev = torch.sigmoid(model(images, prev, points)).float()
                    points = next_training_points(prev, targets, points, click_number, rng).to(self.device)
            model.train()
        logits = model(images, prev, points)
        loss = self.loss_fn(logits, targets)
        if not torch.isfinite(loss):
            raise InvalidInputError(
                f"The training loss became {loss.item()} (diverged). {self._divergence_advice()}"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        bce, iou = _prediction_quality(logits.detach(), targets)
        return float(loss.detach()), bce, iou

    def _epoch(self, epoch: int, progress: Optional[ProgressCallback]) -> EpochRecord:
        s = self.settings
        start = time.perf_counter()
        torch.manual_seed(derived_seed(s.seed, _EPOCH_STREAM, epoch))
        loader = torch.utils.data.DataLoader(
            _EpochBatches(self.slices, s, epoch), batch_size=None, shuffle=False,
            num_workers=s.num_workers, pin_memory=self.device.type == "cuda")
        lr = self.optimizer.param_groups[0]["lr"]
        total = s.epochs * s.steps_per_epoch
        measures = []
        self.model.train()
        for step, batch in enumerate(loader):
            rng = np.random.default_rng([s.seed, epoch, step, 1])
            measures.append(self._train_step(batch, rng))
            recent = np.mean(measures[-20:], axis=0)
            report(progress, epoch * s.steps_per_epoch + step + 1, total,
                   f"epoch {epoch + 1}/{s.epochs} loss {recent[0]:.4f} IoU {recent[2]:.3f}")
        self.scheduler.step()
        loss, bce, iou = (float(v) for v in np.mean(measures, axis=0))
        record = EpochRecord(epoch + 1, loss, lr, 0.0, bce, iou)
        record.val_noc85 = quick_noc85(self.model, self.val_samples, self.device,
                                       s.val_max_clicks, s.val_zoom_in)
        record.val_samples = len(self.val_samples)
        record.seconds = time.perf_counter() - start
        return record

    # --- saving -----------------------------------------------------------------------------------
    def _model_config(self) -> dict:
        config = self.model.config.to_plain()
        config["finetune"] = {"epoch": len(self.history), "seed": self.settings.seed,
                              "init": self.init.source, "slices": len(self.slices),
                              "data": self.fingerprint}
        return config

    def _save(self, status: str) -> Path:
        bad = non_finite_tensors(self.model.state_dict())
        if bad:  # never let a diverged epoch replace the last good one's files
            raise InvalidInputError(
                f"Training diverged in epoch {len(self.history)}: the weights "
                f"{describe_keys(bad, 4)} became NaN or infinite. {self._divergence_advice()}"
            )
        model_path = save_checkpoint(self.out_dir / MODEL_FILE, self.model.state_dict(), self._model_config())
        state = {
            "format": STATE_FORMAT,
            "epoch": len(self.history),
            "model": _cpu_state(self.model.state_dict()),
            "model_config": self.model.config.to_plain()["params"],
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "settings": self.settings.to_plain(),
            "history": [asdict(r) for r in self.history],
            "init": self.init.source,
            "data": self.fingerprint,
            "data_selection": self.data_selection,
            "resumes": self.resumes,
        }
        _atomic_torch_save(state, self.state_path)
        self.saved_epochs = len(self.history)
        self._write_run_file(status)
        return model_path

    def _write_run_file(self, status: str, error: Optional[str] = None) -> None:
        history = self.history[:self.saved_epochs]
        record = {
            "status": status,
            "checkpoint": MODEL_FILE if (self.out_dir / MODEL_FILE).exists() else None,
            "epochs_done": len(history),
            "init": self.init.describe(),
            "model": self.model.config.to_plain()["params"] if self.model is not None else None,
            "device": str(self.device),
            "torch": torch.__version__,
            "training_slices": [s.name for s in self.slices],
            "data": self.data_selection,
            "validation": getattr(self, "val_kind", None),
            "settings": self.settings.to_plain(),
            "history": [asdict(r) for r in history],
            "resumes": self.resumes,
        }
        if error is not None:
            record["error"] = error
        _write_json(self.out_dir / RUN_FILE, record)

    def run(self, progress: Optional[ProgressCallback], on_epoch: Optional[Callable[[EpochRecord], None]]):
        s = self.settings
        log.info("Fine-tuning %s on %d slices, %s, on %s.", self.model.config.name, len(self.slices),
                 self.init.describe(), self.device)
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            try:
                for epoch in range(self.start_epoch, s.epochs):
                    record = self._epoch(epoch, progress)
                    self.history.append(record)
                    try:
                        self._save("running" if epoch + 1 < s.epochs else "finished")
                    finally:
                        del self.history[self.saved_epochs:]  # an epoch that was not saved
                    log.info("Epoch %d: loss %.4f, NoC@85 (%s slices) %s, %.1f s", record.epoch,
                             record.loss, self.val_kind, record.val_noc85, record.seconds)
                    if on_epoch is not None:
                        on_epoch(record)
                if self.start_epoch >= s.epochs:  # resumed a run that had already finished
                    log.info("The run in %s had already done its %d epochs; give a larger "
                             "--epochs to extend it.", self.out_dir, s.epochs)
                    if (self.out_dir / MODEL_FILE).exists():
                        self._write_run_file("finished")
                    else:
                        self._save("finished")
            except (CancelledError, KeyboardInterrupt):
                # The last completed epoch's files stay as they were.
                self._write_run_file("cancelled")
                raise
            except Exception as err:  # noqa: BLE001 - recorded, then raised as it was
                self._record_failure(err)
                raise
        return FinetuneResult(self.out_dir / MODEL_FILE, self.out_dir, len(self.history),
                              self.history, self.init.describe())


def finetune(
    slices: Sequence[TrainingSlice],
    out_dir: str | os.PathLike,
    settings: Optional[FinetuneSettings] = None,
    val_slices: Optional[Sequence[TrainingSlice]] = None,
    resume: bool = False,
    progress: Optional[ProgressCallback] = None,
    on_epoch: Optional[Callable[[EpochRecord], None]] = None,
    data_selection: Optional[dict] = None,
    data_changes: Optional[dict] = None,
) -> FinetuneResult:
    """Fine-tune a click model on ``slices``; files go to ``out_dir`` (see the module docstring).

    ``val_slices`` (default: the training slices themselves) give the per-epoch NoC@85.
    ``progress(done, total, message)`` is called after every step; raising CancelledError from it
    stops the run, leaving the last completed epoch's checkpoint intact. With ``resume`` the run
    in ``out_dir`` continues from its last completed epoch: a setting left as None keeps the
    run's value; a given one must equal it, except RESUME_CHANGEABLE ones (``epochs`` may extend
    the run, ``lr`` sets a new base learning rate), which are applied and recorded.

    ``data_selection`` (plain JSON: the options that chose ``slices``, see
    :func:`isegformer.cli.finetune.data_selection`) is recorded as ``"data"`` in
    ``finetune.json`` and in the training state; a resume that gives None keeps the run's.
    Resuming never trains on other data without being told: training slices whose fingerprint
    differs from the run's are refused, unless ``data_changes`` (name: [recorded, new]; the
    CLI's :func:`~isegformer.cli.finetune.resumed_data_options`) or a new ``min_area`` says
    that this resume changes the data, which is then logged and recorded under ``resumes``.
    Without ``resume``, a folder that already holds a run's files is refused. One process at a time
    writes a run folder (its lock); a failed run is recorded as "failed" with its message.
    """
    run = _Run(slices, out_dir, settings or FinetuneSettings(), val_slices, resume,
               data_selection, data_changes)
    try:
        return run.run(progress, on_epoch)
    finally:
        run.close()
