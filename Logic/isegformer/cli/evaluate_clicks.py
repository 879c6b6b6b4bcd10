"""``isegformer evaluate-clicks``: the NoC protocol (paper Table 1) over PNG slices or volumes."""
from __future__ import annotations

import argparse
import json
import platform
from datetime import datetime, timezone
from pathlib import Path

from .common import AXES, add_precision_argument


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate-clicks",
        help="number of clicks (NoC) to reach 80/85/90%% IoU with the simulated user",
        description=(
            "Run the simulated user of the NoC protocol (iSegFormer paper, Table 1) on images "
            "with ground-truth masks: PNG folders (e.g. the released OAI-ZIB test slices: "
            "--images OAI-ZIB-test) or chosen slices of a volume and its label map."))
    p.add_argument("--model", required=True,
                   help="click-model checkpoint file (official .pth or a plain state dict), or a "
                        "registry model name")
    src = p.add_argument_group("PNG images")
    src.add_argument("--images", type=Path,
                     help="folder of PNG images, or a dataset root with image/ and annotations/ "
                          "(or test/image and test/annotations)")
    src.add_argument("--masks", type=Path, help="folder of PNG label masks named like the images")
    src.add_argument("--objects", choices=("all", "last"), default="all",
                     help="evaluate every label of a mask (default), or only the last one as the "
                          "reference script's result keeps")
    vol = p.add_argument_group("volume slices")
    vol.add_argument("--volume", type=Path, help="image volume (NIfTI, NRRD, MHA, DICOM folder)")
    vol.add_argument("--labels", type=Path, help="label map on the volume's grid")
    vol.add_argument("--axis", default="k", choices=sorted(AXES),
                     help="slice axis: k (0), j (1) or i (2) of the (k, j, i) array; default k")
    vol.add_argument("--slices",
                     help="indices and ranges such as '40,50,60-70', 'paper' (40,80,120) or 'all'; "
                          "default: every slice with the object (each slice once)")
    vol.add_argument("--window", type=float, nargs=2, metavar=("LOW", "HIGH"),
                     help="intensity window; default: 0.1/99.9 percentiles of the volume")
    p.add_argument("--label", type=int, action="append", dest="label_values", metavar="N",
                   help="object label value to evaluate (repeatable); default: every nonzero label")
    p.add_argument("--max-clicks", type=int, default=20)
    p.add_argument("--stop-iou", type=float, default=0.90,
                   help="stop a sample once its IoU reaches this (default 0.90)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    add_precision_argument(p)
    p.add_argument("--no-zoom-in", action="store_true", help="turn the zoom-in transform off")
    p.add_argument("--no-flip", action="store_true", help="turn flip averaging off")
    p.add_argument("--out", type=Path, help="folder for results.json and noc_curve.png")
    p.set_defaults(func=run)


#: More clicks than any protocol asks for (the paper's NoC uses 20); a bound keeps a typo from running for days.
MAX_CLICKS = 1000


def _load_model(spec: str, device):
    """A checkpoint file as it is, or a registry name through the verified weights cache."""
    from ..click_engine.build import load_click_model
    from ..progress import TqdmProgress
    from ..weights import resolve_model

    path = Path(spec).expanduser()
    if path.is_file():
        return load_click_model(str(path), device=device)
    bar = TqdmProgress(desc=f"download {spec}", unit="B")
    try:
        return load_click_model(str(resolve_model(spec, progress=bar, kind="click_model")), device=device)
    finally:
        bar.close()


def _samples(args):
    from ..errors import InvalidInputError
    from ..evaluation.samples import find_png_folders, png_samples, volume_samples

    if args.images and args.volume:
        raise InvalidInputError("Give either --images (PNG folders) or --volume, not both.")
    if args.images:
        samples = png_samples(*find_png_folders(args.images, args.masks), args.label_values,
                              args.objects)
        return samples, len(samples)
    if args.volume:
        if not args.labels:
            raise InvalidInputError("--volume needs --labels (the label map of the volume).")
        samples = list(volume_samples(args.volume, args.labels, AXES[args.axis], args.slices,
                                      args.label_values, args.window))
        return samples, len(samples)
    raise InvalidInputError("Nothing to evaluate: give --images DIR or --volume FILE --labels FILE.")


def format_table(metrics: dict, max_clicks: int, seconds: float, memory_mb: float) -> str:
    over = f">={max_clicks}"
    head = (f"|{'samples':^9}|{'NoC@80':^13}|{'NoC@85':^13}|{'NoC@90':^13}|"
            f"{over + '@85':^8}|{over + '@90':^8}|{'s/click':^9}|{'time':^9}|{'peak MB':^9}|")
    def noc(key):
        m = metrics[key]
        return "not measured" if m["mean"] is None else f"{m['mean']:.2f}±{m['std']:.2f}"

    def count(key):
        return "-" if metrics[key] is None else metrics[key]
    row = (f"|{metrics['samples']:^9}|{noc('noc@80'):^13}|{noc('noc@85'):^13}|"
           f"{noc('noc@90'):^13}|{count(over + '@85'):^8}|{count(over + '@90'):^8}|"
           f"{metrics['seconds_per_click']:^9.3f}|{seconds:^9.1f}|{memory_mb:^9.0f}|")
    line = "-" * len(head)
    return "\n".join([line, head, line, row, line])


def run(args) -> int:
    import torch

    from .. import __version__
    from ..click_engine.predictor import ClickPredictor, check_click_precision
    from ..errors import InvalidInputError
    from ..evaluation.noc import evaluate
    from ..evaluation.plot import plot_iou_curve
    from ..output.atomic import atomic_write
    from ..progress import TqdmProgress
    from .common import check_outputs, require_number

    if not 1 <= args.max_clicks <= MAX_CLICKS:
        raise InvalidInputError(f"--max-clicks must be 1..{MAX_CLICKS} (the NoC protocol uses 20), got {args.max_clicks}.")
    require_number(args.stop_iou, "--stop-iou", 0.0, 1.0, low_open=True)
    if args.window is not None:
        low, high = args.window
        require_number(low, "--window LOW", -1e30, 1e30)
        require_number(high, "--window HIGH", -1e30, 1e30)
        if not low < high:
            raise InvalidInputError(f"--window LOW HIGH needs LOW < HIGH, got {low:g} {high:g}.")
    if any(v < 1 for v in args.label_values or []):
        raise InvalidInputError(f"--label values are positive label numbers, got {args.label_values}.")
    if args.out and args.out.exists() and not args.out.is_dir():
        raise InvalidInputError(f"--out {args.out} is a file; give a folder for results.json and noc_curve.png.")
    outputs = [("--out", args.out / "results.json"), ("--out", args.out / "noc_curve.png")] if args.out else []
    inputs = [("--model", args.model), ("--images", args.images), ("--masks", args.masks),
              ("--volume", args.volume), ("--labels", args.labels)]
    check_outputs(inputs, outputs, writable=False)
    device = check_click_precision(args.precision, args.device)  # before any sample or weight is read
    if args.out:
        # Now, as evaluate-propagation does: a folder that cannot be made must not cost the
        # whole evaluation and its results.
        try:
            args.out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise InvalidInputError(f"Cannot create the output folder {args.out}: {err.strerror or err}.") from err
        check_outputs(inputs, outputs)
    samples, total = _samples(args)
    model = _load_model(args.model, device)
    predictor = ClickPredictor(model, zoom_in=not args.no_zoom_in, flip=not args.no_flip,
                               device=device, precision=args.precision)
    bar = TqdmProgress(desc="samples", unit="sample")
    try:
        report = evaluate(predictor, samples, max_clicks=args.max_clicks,
                          stop_iou=args.stop_iou, total=total, progress=bar)
    finally:
        bar.close()

    print(format_table(report.metrics, report.max_clicks, report.seconds, report.peak_memory_mb))
    print(f"device {report.device}; peak memory: {report.peak_memory_kind}")
    if args.out:
        result = {
            "isegformer_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "model": str(args.model),
            "device": report.device,
            "precision": predictor.computed_precision,  # what ran, not what was asked
            "torch": torch.__version__,
            "machine": platform.platform(),
            "protocol": {"max_clicks": report.max_clicks, "stop_iou": report.stop_iou,
                         "zoom_in": not args.no_zoom_in, "flip": not args.no_flip,
                         "threshold": predictor.threshold, "objects": args.objects},
            "metrics": report.metrics,
            "seconds": report.seconds,
            "peak_memory_mb": report.peak_memory_mb,
            "peak_memory_kind": report.peak_memory_kind,
            "samples": [{"name": r.name, "clicks": [[c.y, c.x, int(c.positive)] for c in r.clicks],
                         "ious": [float(v) for v in r.ious], "seconds": r.seconds}
                        for r in report.results],
        }
        with atomic_write(args.out / "results.json") as tmp:
            tmp.write_text(json.dumps(result, indent=1), encoding="utf-8")
        plot_iou_curve(report.metrics["mean_iou_per_click"], args.out / "noc_curve.png",
                       title=f"NoC curve, {report.metrics['samples']} samples")
        print(f"wrote {args.out / 'results.json'} and {args.out / 'noc_curve.png'}")
    return 0

