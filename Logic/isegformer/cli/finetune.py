"""``isegformer finetune``: fine-tune the click model on a few segmented slices.

With ``--progress-json`` the command prints one JSON object per line on stdout instead of bars
(``{"event": "start" | "step" | "epoch" | "done" | "cancelled" | "error", ...}``), which is what
:mod:`isegformer.finetune.process` (the Slicer action's launcher) reads.
"""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from datetime import datetime
from pathlib import Path

from ..errors import InvalidInputError
from .common import AXES

log = logging.getLogger(__name__)

STEP_EVENT_INTERVAL_S = 0.5


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "finetune",
        help="fine-tune the click model on a few segmented slices (the paper's recipe)",
        description=(
            "Fine-tune iSegFormer on your own segmented slices, with the paper's training recipe "
            "(normalised focal loss, RITM click sampling with iterative clicks, 320x480 crops, "
            "Adam 5e-4 with a step schedule). The result, model.pth in the official checkpoint "
            "format, is written after every epoch; an interrupted run continues with --resume."))
    data = p.add_argument_group("training data (volumes, or PNG folders)")
    data.add_argument("--volumes", type=Path, nargs="+", metavar="FILE", help="image volumes")
    data.add_argument("--labels", type=Path, nargs="+", metavar="FILE",
                      help="their label maps, on the same grids, in the same order")
    data.add_argument("--images", type=Path, metavar="DIR", help="folder of PNG slices")
    data.add_argument("--masks", type=Path, metavar="DIR", help="folder of PNG masks named like the images")
    data.add_argument("--label-value", type=int, metavar="N",
                      help="the label to learn; default: each label value is an object of its own")
    data.add_argument("--axis", choices=sorted(AXES),
                      help="slice axis of the (k, j, i) array: k (0, default), j (1) or i (2)")
    data.add_argument("--slices",
                      help="'paper' (slices 40,80,120: the paper's 3 per volume, default), 'all' "
                           "(every labelled slice) or a list such as 35,60,92")
    data.add_argument("--min-area", type=int,
                      help="objects smaller than this many pixels are skipped (default 20)")
    val = p.add_argument_group("validation (optional held-out data for the per-epoch NoC@85)")
    val.add_argument("--val-volumes", type=Path, nargs="+", metavar="FILE")
    val.add_argument("--val-labels", type=Path, nargs="+", metavar="FILE")
    val.add_argument("--val-slices", help="slices of the validation volumes (default all)")
    val.add_argument("--val-images", type=Path, metavar="DIR")
    val.add_argument("--val-masks", type=Path, metavar="DIR")
    val.add_argument("--val-samples", type=int,
                     help="objects in the quick NoC@85 after each epoch (0: none; default 8)")
    val.add_argument("--val-max-clicks", type=int, help="(default 20)")
    model = p.add_argument_group(
        "model and training",
        "With --resume, an option left out keeps the run's value, the data options too; only "
        "--epochs, --lr, --amp, --gradient-checkpointing, --val-samples, --val-max-clicks, "
        "--device, --workers and the data options may differ from it (a data change is "
        "recorded; other data without one is refused).")
    model.add_argument("--init",
                       help="'official' (the released checkpoint, default), 'scratch', or the path "
                            "of a checkpoint to continue from (e.g. a previous fine-tune)")
    model.add_argument("--imagenet", type=Path, metavar="FILE",
                       help="with --init scratch: an ImageNet Swin checkpoint for the backbone")
    model.add_argument("--variant", choices=("swin_base", "swin_large", "tiny"),
                       help="network size for --init official/scratch (default swin_base)")
    model.add_argument("--epochs", type=int, help="(default 10; on resume it may extend the run)")
    model.add_argument("--steps-per-epoch", type=int, help="(default 100)")
    model.add_argument("--batch-size", type=int, help="(default 8)")
    model.add_argument("--lr", type=float,
                       help="learning rate (default 5e-4; on resume the new base rate)")
    model.add_argument("--crop", type=int, nargs=2, metavar=("ROWS", "COLS"),
                       help="training crop size (default 320 480)")
    model.add_argument("--seed", type=int, help="(default 0)")
    model.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    model.add_argument("--amp", action=argparse.BooleanOptionalAction,
                       help="mixed precision (CUDA; default on)")
    model.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction,
                       help="recompute activations to save memory (CUDA; default on; off is "
                            "faster and needs more memory)")
    model.add_argument("--workers", type=int, help="data loader processes (default 0)")
    out = p.add_argument_group("output")
    out.add_argument("--out", type=Path, metavar="DIR",
                     help="run folder; default ISEGFORMER_HOME/finetuned/NAME")
    out.add_argument("--name", help="run name under ISEGFORMER_HOME/finetuned (default: date and time)")
    out.add_argument("--resume", action="store_true", help="continue the run in --out")
    out.add_argument("--progress-json", action="store_true",
                     help="print machine-readable progress lines (JSON) instead of bars")
    p.set_defaults(func=run)


def _emit(event: str, **fields) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


#: Options that only work as a pair (each needs the other).
_PAIRS = (("volumes", "labels"), ("images", "masks"), ("val_volumes", "val_labels"),
          ("val_images", "val_masks"))
#: Options (or pairs) of which at most one may be given: the other would be silently ignored.
_EXCLUSIVE = ((("volumes", "labels"), ("images", "masks")),
              (("val_volumes", "val_labels"), ("val_images", "val_masks")),
              (("out",), ("name",)))
#: Options that mean something only next to another one.
_NEEDS = (("slices", ("volumes",)), ("axis", ("volumes", "val_volumes")),
          ("val_slices", ("val_volumes",)))


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_option_combinations(args) -> None:
    """Refuse every option combination whose meaning is not what the user would expect: a half
    pair, two data sources of one kind, or an option that the others make unused."""
    from ..errors import InvalidInputError

    given = {name for name, value in vars(args).items()
             if value is not None and value is not False and value != []}
    for group_a, group_b in _EXCLUSIVE:
        if given & set(group_a) and given & set(group_b):
            raise InvalidInputError(
                f"Give either {'/'.join(map(_flag, group_a))} or {'/'.join(map(_flag, group_b))}, "
                "not both.")
    for first, second in _PAIRS:
        if (first in given) != (second in given):
            missing = second if first in given else first
            raise InvalidInputError(
                f"{_flag(first)} and {_flag(second)} go together: {_flag(missing)} is missing.")
    for option, needs in _NEEDS:
        if option in given and not given & set(needs):
            raise InvalidInputError(
                f"{_flag(option)} is used only with {' or '.join(map(_flag, needs))}, which is "
                "not given; leave it out, or add what it goes with.")
    if "imagenet" in given and args.init != "scratch":
        raise InvalidInputError("--imagenet is used only with --init scratch (a random network "
                                "whose backbone it fills); leave it out, or add --init scratch.")


def _normalised(name: str, value):
    """A data option's value as recorded and compared: paths absolute, slice choices parsed."""
    from ..volume.slice_choice import parse_slice_choice

    if value is None:
        return None
    if isinstance(value, list):
        return [str(Path(v).expanduser().resolve()) for v in value]
    if isinstance(value, Path) or name in ("images", "masks", "val_images", "val_masks"):
        return str(Path(value).expanduser().resolve())
    if name in ("slices", "val_slices"):
        return parse_slice_choice(value, _flag(name))
    return value


def data_selection(args) -> dict:
    """What selects this invocation's training and validation slices, defaults filled in: the
    record a run keeps (``finetune.json`` ``"data"``), so that a resume can take it back."""
    from ..finetune.data import DEFAULT_MIN_AREA
    from ..finetune.runs import DATA_OPTIONS

    plain = {name: _normalised(name, getattr(args, name)) for name in DATA_OPTIONS}
    plain["slices"] = (args.slices or "paper") if args.volumes else None
    plain["val_slices"] = (args.val_slices or "all") if args.val_volumes else None
    plain["axis"] = (args.axis or "k") if args.volumes or args.val_volumes else None
    plain["min_area"] = DEFAULT_MIN_AREA if args.min_area is None else args.min_area
    return plain


def resumed_data_options(args, out_dir: Path) -> tuple[argparse.Namespace, dict]:
    """The data options a resumed run goes on with, and what this resume changes.

    The one place where a resume's data is chosen: each data option left out takes the run's
    recorded value (a data source as a whole: given --images, the run's --volumes are not
    taken); one given that differs from the record is a change, returned as name:
    [recorded, given] (the trainer applies and records it, and only then accepts training
    data that differs from the run's). A record written before data options were recorded
    lacks them: those left out take the defaults, as before, which is logged; the trainer
    refuses the resume if the data then differs from the run's."""
    from ..finetune.runs import TRAIN_SOURCE_OPTIONS, VAL_SOURCE_OPTIONS, recorded_data_selection

    path_options = TRAIN_SOURCE_OPTIONS + VAL_SOURCE_OPTIONS
    chosen = argparse.Namespace(**vars(args))
    if not args.resume:
        return chosen, {}
    recorded = recorded_data_selection(out_dir)
    changes, taken, unrecorded = {}, [], []

    def compare(name):
        if name not in recorded:
            return
        new = _normalised(name, getattr(args, name))
        try:
            old = _normalised(name, recorded[name])
        except InvalidInputError:  # a recorded slice choice changed by hand
            old = recorded[name]
        if new != old:
            given = getattr(args, name)
            changes[name] = [recorded[name], new if name in path_options else given]

    def take(name, note=True):
        if name in recorded:
            value = recorded[name]
            setattr(chosen, name, [Path(v) for v in value] if isinstance(value, list)
                    else Path(value) if value is not None and name in path_options else value)
            if value is not None:
                taken.append(f"{_flag(name)} {' '.join(value) if isinstance(value, list) else value}")
        elif note:
            unrecorded.append(_flag(name))

    for group in (TRAIN_SOURCE_OPTIONS, VAL_SOURCE_OPTIONS):
        given = any(getattr(args, name) is not None for name in group)
        for name in group:
            compare(name) if given else take(name, note=False)
    uses = {"slices": bool(chosen.volumes), "val_slices": bool(chosen.val_volumes),
            "axis": bool(chosen.volumes or chosen.val_volumes), "label_value": True,
            "min_area": True}
    for name, used in uses.items():
        if getattr(args, name) is not None:
            compare(name)
        elif used:
            take(name)
    if taken:
        log.info("Resuming with the run's own data options: %s.", "; ".join(taken))
    if unrecorded and not set(recorded) - {"min_area"}:
        log.warning("The run record in %s holds no data options (an older version wrote it): "
                    "%s take the values given now or their defaults, as before; the training "
                    "data is checked against the run's.", out_dir, ", ".join(unrecorded))
    for name, (old, new) in changes.items():
        log.info("Resuming with %s %s (the run had %s).", _flag(name), new, old)
    return chosen, changes


def _load_slices(args):
    from ..finetune.data import (DEFAULT_MIN_AREA, parse_slice_choice, slices_from_png_folders,
                                 slices_from_volumes)

    if (args.axis or "k") not in AXES:  # only a run record changed by hand gets here
        raise InvalidInputError(f"--axis {args.axis!r} is not one of {', '.join(sorted(AXES))}.")
    axis = AXES[args.axis or "k"]
    min_area = DEFAULT_MIN_AREA if args.min_area is None else args.min_area

    def read(volumes, labels, slices, images, masks):
        if volumes:
            return slices_from_volumes(volumes, labels, axis, parse_slice_choice(slices),
                                       args.label_value, min_area)
        if images:
            return slices_from_png_folders(images, masks, args.label_value, min_area)
        return None

    # Training takes the paper's slices by default, validation every slice.
    train = read(args.volumes, args.labels, args.slices or "paper", args.images, args.masks)
    if train is None:
        raise InvalidInputError(
            "No training data: give --volumes FILE... --labels FILE... or --images DIR --masks DIR.")
    val = read(args.val_volumes, args.val_labels, args.val_slices or "all", args.val_images, args.val_masks)
    return train, val


def _out_dir(args) -> Path:
    from ..errors import InvalidInputError
    from ..finetune.runs import finetuned_home

    if args.out:
        return args.out.expanduser()
    if args.resume and not args.name:
        raise InvalidInputError("--resume needs the run: give --out DIR (or --name NAME).")
    return finetuned_home() / (args.name or datetime.now().strftime("finetune-%Y%m%d-%H%M%S"))


def _guard_run_files(args, out_dir: Path) -> None:
    """The run's files (model, training state, record) must not replace any input."""
    from ..finetune.runs import MODEL_FILE, RUN_FILE, STATE_FILE
    from ..output.paths import guard_outputs

    names = ("volumes", "labels", "images", "masks", "val_volumes", "val_labels", "val_images",
             "val_masks", "imagenet")
    inputs = []
    for n in names:
        value = getattr(args, n)
        for p in value if isinstance(value, list) else [value]:
            inputs.append((f"--{n.replace('_', '-')}", p))
    if not args.resume and args.init:  # resuming continues from the run's own files, by design
        inputs.append(("--init", args.init))
    guard_outputs([p for _, p in inputs], [out_dir / f for f in (MODEL_FILE, STATE_FILE, RUN_FILE)],
                  input_names=[n for n, _ in inputs])


def _terminate_as_interrupt(signum, frame):  # SIGTERM (the launcher's cancel) -> clean stop
    raise KeyboardInterrupt


def run(args) -> int:
    from ..errors import CancelledError, ISegFormerError
    from ..finetune.trainer import FinetuneSettings, finetune
    from ..progress import TqdmProgress

    json_mode = args.progress_json
    if hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    try:
        out_dir = _out_dir(args)
        # On resume the data options left out come from the run's record; the combination
        # checks and the rest of the command see the options the run will really use.
        args, data_changes = resumed_data_options(args, out_dir)
        check_option_combinations(args)
        _guard_run_files(args, out_dir)
        # Options left out stay None: a new run takes the recipe's value, a resumed one its own.
        settings = FinetuneSettings(
            init=args.init, variant=args.variant,
            imagenet_checkpoint=str(args.imagenet) if args.imagenet else None,
            epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size,
            lr=args.lr, crop_size=tuple(args.crop) if args.crop else None,
            min_area=args.min_area, seed=args.seed, device=args.device,
            mixed_precision=args.amp, gradient_checkpointing=args.gradient_checkpointing,
            val_samples=args.val_samples, val_max_clicks=args.val_max_clicks,
            num_workers=args.workers)
        settings.validate()  # before the data is read and long before any model is built
        train, val = _load_slices(args)
        if json_mode:
            _emit("start", out_dir=str(out_dir), training_slices=len(train),
                  validation_slices=len(val) if val else 0)
        else:
            print(f"{len(train)} training slices"
                  + (f", {len(val)} validation slices" if val else "") + f"; run folder {out_dir}")
    except ISegFormerError as err:
        if json_mode:
            _emit("error", message=str(err))
        raise

    last_emit = [0.0]

    def json_progress(done: int, total: int, message: str) -> None:
        now = time.monotonic()
        if done == total or now - last_emit[0] >= STEP_EVENT_INTERVAL_S:
            last_emit[0] = now
            _emit("step", done=done, total=total, message=message)

    def on_epoch(record) -> None:
        from dataclasses import asdict

        if json_mode:
            _emit("epoch", **asdict(record))
        else:
            noc = "-" if record.val_noc85 is None else f"{record.val_noc85:.2f}"
            print(f"\nepoch {record.epoch}: loss {record.loss:.4f} (BCE {record.bce:.4f}, IoU "
                  f"{record.iou:.3f}), lr {record.lr:.2g}, "
                  f"NoC@85 {noc} ({record.val_samples} objects), {record.seconds:.0f} s", flush=True)

    bar = None if json_mode else TqdmProgress(desc="fine-tuning", unit="step")
    try:
        result = finetune(train, out_dir, settings, val_slices=val, resume=args.resume,
                          progress=json_progress if json_mode else bar, on_epoch=on_epoch,
                          data_selection=data_selection(args), data_changes=data_changes)
    except (KeyboardInterrupt, CancelledError):
        if json_mode:
            _emit("cancelled", out_dir=str(out_dir))
        else:
            print(f"\ncancelled; the last completed epoch is kept in {out_dir} (continue with --resume)",
                  file=sys.stderr)
        return 130
    except ISegFormerError as err:
        if json_mode:
            _emit("error", message=str(err))
        raise
    finally:
        if bar is not None:
            bar.close()
    if json_mode:
        _emit("done", checkpoint=str(result.checkpoint), epochs=result.epochs_done)
    else:
        print(f"{result.init}; {result.epochs_done} epochs.\nfine-tuned model: {result.checkpoint}")
    return 0
