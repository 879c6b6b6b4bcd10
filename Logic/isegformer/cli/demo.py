"""``isegformer demo``: the paper's knee, clicks on 5 slices, STCN through the volume, the scores."""
from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from pathlib import Path

from .common import AXES

DEFAULT_OUT = Path("isegformer-demo")
SUGGESTED_WEIGHTS_DIR = "~/isegformer-weights"


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..demo import DEFAULT_LABEL_VALUE, DEFAULT_MAX_CLICKS, DEFAULT_NUM_SLICES, DEFAULT_TARGET_IOU

    parser = subparsers.add_parser(
        "demo",
        help="download the sample knee and the models, segment femoral cartilage, print the scores",
        description="Segment femoral cartilage in the OAI-ZIB sample knee (case 9092628) as the "
                    "paper does: a simulated user clicks on 5 sagittal slices (NoC protocol: at "
                    "the centre of the largest error, until the slice IoU reaches 0.85 or after "
                    "20 clicks), STCN (+ FusionNet) propagates them through the volume, and the "
                    "result is scored against the label map (Dice, sensitivity, PPV). Writes "
                    "demo.seg.nrrd, demo_clicks.mrk.json, demo_montage.png and demo.json. The "
                    "models and the sample are downloaded once into the verified cache "
                    "(ISEGFORMER_HOME); offline, pass them with --weights-dir.",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="DIR",
                        help=f"folder for the results (default: ./{DEFAULT_OUT})")
    parser.add_argument("--weights-dir", type=Path, metavar="DIR",
                        help="a folder holding files downloaded by hand, under their original names "
                             "(see `isegformer models --paths`); used instead of downloading")
    parser.add_argument("--click-model", metavar="PATH", help="iSegFormer checkpoint (default: the "
                        "official Swin-B, isegformer_swin_base_oaizib)")
    parser.add_argument("--stcn", metavar="PATH", help="STCN weights (default: the official stcn.pth)")
    parser.add_argument("--fusion", metavar="PATH",
                        help="FusionNet weights (default: the official fusion_stcn.pth); 'none' blends "
                             "the two propagation directions by distance instead")
    parser.add_argument("--volume", metavar="PATH", help="another volume (with --label) instead of the sample knee")
    parser.add_argument("--label", metavar="PATH", help="the label map of --volume, on its grid")
    parser.add_argument("--label-value", type=int, default=DEFAULT_LABEL_VALUE,
                        help=f"the object to segment (default {DEFAULT_LABEL_VALUE}: femoral cartilage)")
    parser.add_argument("--axis", type=_parse_axis, default=None, metavar="{sagittal,0,1,2,k,j,i}",
                        help="slice axis (default: sagittal, the axis closest to left-right)")
    parser.add_argument("--num-slices", type=int, default=DEFAULT_NUM_SLICES,
                        help=f"slices to annotate with clicks (default {DEFAULT_NUM_SLICES})")
    parser.add_argument("--max-clicks", type=int, default=DEFAULT_MAX_CLICKS,
                        help=f"most clicks per slice (default {DEFAULT_MAX_CLICKS})")
    parser.add_argument("--target-iou", type=float, default=DEFAULT_TARGET_IOU,
                        help=f"a slice is done at this IoU (default {DEFAULT_TARGET_IOU})")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    parser.set_defaults(func=run)


def _parse_axis(text: str):
    value = {"sagittal": None, "auto": None, **AXES}.get(str(text).strip().lower(), "bad")
    if value == "bad":
        raise argparse.ArgumentTypeError(f"axis must be sagittal, 0, 1, 2 (or k, j, i), got {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    from ..demo import MissingFilesError, check_demo_options, resolve_demo_files, run_demo
    from ..progress import TqdmProgress

    started = time.perf_counter()
    check_demo_options(args.out, args.num_slices, args.max_clicks, args.target_iou)
    fusion = False if args.fusion is not None and args.fusion.strip().lower() == "none" else args.fusion
    print("isegformer demo: getting the models and the sample knee (downloaded once, then verified)")
    # The message below says everything about failed downloads; the weights manager's own
    # warnings would repeat it line by line (they stay visible with --verbose).
    weights_log = logging.getLogger("isegformer.weights")
    previous_level = weights_log.level
    if not getattr(args, "verbose", False):
        weights_log.setLevel(logging.ERROR)
    try:
        files = resolve_demo_files(
            click_model=args.click_model, stcn=args.stcn, fusion=fusion, volume=args.volume,
            label=args.label, weights_dir=args.weights_dir, messages=print,
            download_progress=lambda name: TqdmProgress(desc=name, unit="B", unit_scale=True),
        )
    except MissingFilesError as err:
        print(offline_message(err, args), file=sys.stderr)
        return 1
    finally:
        weights_log.setLevel(previous_level)
    resolve_seconds = time.perf_counter() - started
    bar = TqdmProgress("propagation", unit="%")
    try:
        result = run_demo(
            files, args.out, label_value=args.label_value, axis=args.axis, num_slices=args.num_slices,
            max_clicks=args.max_clicks, target_iou=args.target_iou, device=args.device,
            messages=print, progress=bar,
        )
    finally:
        bar.close()
    scores, rest, seconds = result.scores, result.scores_propagated_only, result.seconds
    print()
    print(f"{result.segment_name}, {len(result.slices)} annotated slice(s), {result.total_clicks} simulated "
          f"click(s) (at most {result.max_clicks} per slice, until IoU >= {result.target_iou:g}):")
    print(f"  Dice {scores['dice']:.4f}   sensitivity {scores['sensitivity']:.4f}   PPV {scores['ppv']:.4f}"
          f"   (whole volume, against {Path(result.label).name})")
    print(f"  Dice {rest['dice']:.4f}   sensitivity {rest['sensitivity']:.4f}   PPV {rest['ppv']:.4f}"
          "   (propagated slices only)")
    print(f"time: files {resolve_seconds:.1f} s, read {seconds['read']:.1f} s, models {seconds['load_models']:.1f} s, "
          f"clicks {seconds['clicks']:.1f} s, propagation {seconds['propagation']:.1f} s, "
          f"saving {seconds['save']:.1f} s; total {time.perf_counter() - started:.1f} s on {result.device}")
    for kind in ("segmentation", "clicks", "montage", "report"):
        print(f"wrote {result.files[kind]}")
    return 0


def offline_message(err, args: argparse.Namespace) -> str:
    """What is missing, where to get it, where to put it, and the command to run then."""
    folder = str(args.weights_dir) if args.weights_dir is not None else SUGGESTED_WEIGHTS_DIR
    lines = [
        "error: the demo cannot start: "
        + (f"{len(err.missing)} file(s) are missing and could not be downloaded"
           + (" (this computer seems to be offline, or a firewall or proxy blocks the "
              "connection; a proxy is set with HTTPS_PROXY)" if err.offline else "") + ".")
        + " Nothing was computed or written.",
        "",
        "Missing:",
    ]
    for item in err.missing:
        size = f", {item.size}" if item.size else ""
        lines.append(f"  {item.title} [{item.name}{size}]: {item.reason}")
        lines.append(f"      download: {item.urls[0]}")
        for mirror in item.urls[1:]:
            lines.append(f"            or: {mirror}")
        lines.append(f"      save as:  {item.filename}")
    if any("drive.google.com" in url for item in err.missing for url in item.urls):
        lines.append("  (Google Drive links: open them in a browser and confirm the download.)")
    lines += [
        "",
        f"Put the downloaded files in one folder, e.g. {folder}, and run:",
        f"  {rerun_command(args, folder)}",
        "or put each file in the cache, where the demo looks for it:",
    ]
    lines += [f"  {item.cache_path}" for item in err.missing]
    lines += [f"and run the same command again:", f"  {rerun_command(args, None)}"]
    if any(item.role in ("volume", "label") for item in err.missing):
        lines.append("Instead of the sample knee you can use your own volume: --volume IMAGE --label LABELS.")
    return "\n".join(lines)


def rerun_command(args: argparse.Namespace, weights_dir) -> str:
    """The command line of this run, with ``--weights-dir`` set (or kept) to ``weights_dir``."""
    words = ["isegformer", "demo"]
    options = [
        ("--out", args.out, DEFAULT_OUT), ("--click-model", args.click_model, None),
        ("--stcn", args.stcn, None), ("--fusion", args.fusion, None), ("--volume", args.volume, None),
        ("--label", args.label, None), ("--label-value", args.label_value, _default("label_value")),
        ("--axis", args.axis, None), ("--num-slices", args.num_slices, _default("num_slices")),
        ("--max-clicks", args.max_clicks, _default("max_clicks")),
        ("--target-iou", args.target_iou, _default("target_iou")), ("--device", args.device, "auto"),
    ]
    for flag, value, default in options:
        if value is not None and value != default:
            words += [flag, shlex.quote(str(value))]
    folder = weights_dir if weights_dir is not None else args.weights_dir
    if folder is not None:
        # A ~ left unquoted, so that the shell expands it.
        text = str(folder)
        words += ["--weights-dir", text if text.startswith("~/") and " " not in text else shlex.quote(text)]
    return " ".join(words)


def _default(name: str):
    from .. import demo

    return {"label_value": demo.DEFAULT_LABEL_VALUE, "num_slices": demo.DEFAULT_NUM_SLICES,
            "max_clicks": demo.DEFAULT_MAX_CLICKS, "target_iou": demo.DEFAULT_TARGET_IOU}[name]
