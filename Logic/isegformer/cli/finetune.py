"""``isegformer finetune``: fine-tune the click model on a few segmented slices.

With ``--progress-json`` the command prints one JSON object per line on stdout instead of bars
(``{"event": "start" | "step" | "epoch" | "done" | "cancelled" | "error", ...}``), which is what
:mod:`isegformer.finetune.process` (the Slicer action's launcher) reads.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from datetime import datetime
from pathlib import Path

from .common import AXES

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
    data.add_argument("--axis", default="k", choices=sorted(AXES),
                      help="slice axis of the (k, j, i) array: k (0, default), j (1) or i (2)")
    data.add_argument("--slices", default="paper",
                      help="'paper' (slices 40,80,120: the paper's 3 per volume, default), 'all' "
                           "(every labelled slice) or a list such as 35,60,92")
    data.add_argument("--min-area", type=int, default=20,
                      help="objects smaller than this many pixels are skipped (default 20)")
    val = p.add_argument_group("validation (optional held-out data for the per-epoch NoC@85)")
    val.add_argument("--val-volumes", type=Path, nargs="+", metavar="FILE")
    val.add_argument("--val-labels", type=Path, nargs="+", metavar="FILE")
    val.add_argument("--val-slices", default="all", help="slices of the validation volumes (default all)")
    val.add_argument("--val-images", type=Path, metavar="DIR")
    val.add_argument("--val-masks", type=Path, metavar="DIR")
    val.add_argument("--val-samples", type=int, default=8,
                     help="objects in the quick NoC@85 after each epoch (0: none; default 8)")
    val.add_argument("--val-max-clicks", type=int, default=20)
    model = p.add_argument_group("model and training")
    model.add_argument("--init", default="official",
                       help="'official' (the released checkpoint, default), 'scratch', or the path "
                            "of a checkpoint to continue from (e.g. a previous fine-tune)")
    model.add_argument("--imagenet", type=Path, metavar="FILE",
                       help="with --init scratch: an ImageNet Swin checkpoint for the backbone")
    model.add_argument("--variant", default="swin_base", choices=("swin_base", "swin_large", "tiny"),
                       help="network size for --init official/scratch (default swin_base)")
    model.add_argument("--epochs", type=int, default=10)
    model.add_argument("--steps-per-epoch", type=int, default=100)
    model.add_argument("--batch-size", type=int, default=8)
    model.add_argument("--lr", type=float, default=5e-4)
    model.add_argument("--crop", type=int, nargs=2, default=(320, 480), metavar=("ROWS", "COLS"),
                       help="training crop size (default 320 480)")
    model.add_argument("--seed", type=int, default=0)
    model.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    model.add_argument("--no-amp", action="store_true", help="no mixed precision (CUDA)")
    model.add_argument("--no-gradient-checkpointing", action="store_true",
                       help="keep every activation (faster, more memory; CUDA)")
    model.add_argument("--workers", type=int, default=0, help="data loader processes (default 0)")
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


def _load_slices(args):
    from ..errors import InvalidInputError
    from ..finetune.data import parse_slice_choice, slices_from_png_folders, slices_from_volumes

    if (args.volumes or args.labels) and (args.images or args.masks):
        raise InvalidInputError("Give either --volumes/--labels or --images/--masks, not both.")
    if args.volumes or args.labels:
        if not (args.volumes and args.labels):
            raise InvalidInputError("--volumes and --labels go together: one label map per volume.")
        train = slices_from_volumes(args.volumes, args.labels, AXES[args.axis],
                                    parse_slice_choice(args.slices), args.label_value, args.min_area)
    elif args.images or args.masks:
        if not (args.images and args.masks):
            raise InvalidInputError("--images and --masks go together.")
        train = slices_from_png_folders(args.images, args.masks, args.label_value, args.min_area)
    else:
        raise InvalidInputError(
            "No training data: give --volumes FILE... --labels FILE... or --images DIR --masks DIR.")
    val = None
    if args.val_volumes or args.val_labels:
        val = slices_from_volumes(args.val_volumes or [], args.val_labels or [], AXES[args.axis],
                                  parse_slice_choice(args.val_slices), args.label_value, args.min_area)
    elif args.val_images or args.val_masks:
        val = slices_from_png_folders(args.val_images, args.val_masks, args.label_value, args.min_area)
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
    if not args.resume:  # resuming continues from the run's own files, by design
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
        _guard_run_files(args, out_dir)
        train, val = _load_slices(args)
        settings = FinetuneSettings(
            init=args.init, variant=args.variant,
            imagenet_checkpoint=str(args.imagenet) if args.imagenet else None,
            epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size,
            lr=args.lr, crop_size=tuple(args.crop), min_area=args.min_area, seed=args.seed,
            device=args.device, mixed_precision=not args.no_amp,
            gradient_checkpointing=not args.no_gradient_checkpointing,
            val_samples=args.val_samples, val_max_clicks=args.val_max_clicks,
            num_workers=args.workers)
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
                          progress=json_progress if json_mode else bar, on_epoch=on_epoch)
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
