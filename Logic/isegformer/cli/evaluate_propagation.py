"""``isegformer evaluate-propagation``: the propagation protocol (paper Table 2) on volumes."""
from __future__ import annotations

import argparse
import json
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

from .common import AXES


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate-propagation",
        help="Dice/sensitivity/PPV/IoU of propagating n ground-truth slices through a volume",
        description=(
            "Give a propagator the ground truth on n slices of a volume, propagate, and score the "
            "whole volume (iSegFormer paper, Table 2). Cases are VOLUME LABEL pairs, or every "
            "sub-folder of --cases holding --image-name and --label-name. Example (BRATS whole "
            "tumour): isegformer evaluate-propagation --cases data/brats --image-name "
            "Flair_subtrMeanDivStd.nii.gz --label-name OTMultiClass.nii.gz --num-slices 5 "
            "--slice-choice extent --method interpolation --out results/"),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pairs", nargs="*", type=Path, metavar="VOLUME LABEL",
                   help="a volume (NIfTI, NRRD, MHA, DICOM folder) and its label map; repeatable")
    p.add_argument("--cases", type=Path, help="folder whose sub-folders are cases")
    p.add_argument("--image-name", nargs="+", default=[], metavar="NAME",
                   help="with --cases: image file name(s) in each case folder (each is one volume)")
    p.add_argument("--label-name", help="with --cases: label map file name in each case folder")
    p.add_argument("--label-value", type=int, action="append", dest="label_values", metavar="V",
                   help="label value of the object (repeat to merge several, e.g. 1 2 3 4 for the "
                        "whole tumour); default: every non-zero label together")
    p.add_argument("--axis", default="k", choices=sorted(AXES),
                   help="slice axis: k (0), j (1) or i (2) of the (k, j, i) array; default k")
    p.add_argument("--num-slices", type=int, nargs="+", default=[5], metavar="N",
                   help="number(s) of annotated slices, e.g. 1 3 5 10; default 5")
    p.add_argument("--slice-choice", default="reference", choices=("reference", "extent", "explicit"),
                   help="reference: min(round(T*i/n), T-1) for i=1..n over the whole axis (default); "
                        "extent: centres of n equal parts of the object's extent; explicit: --slices")
    p.add_argument("--slices", type=int, nargs="+",
                   help="with --slice-choice explicit: the slice indices (their count is n)")
    p.add_argument("--method", default="interpolation", choices=("interpolation", "stcn"))
    p.add_argument("--weights", help="STCN weights: a stcn.pth file or a registry name")
    p.add_argument("--fusion-weights", help="FusionNet weights (fusion_stcn.pth); default: distance blend")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--no-montage", action="store_true", help="skip the PNG montages")
    p.add_argument("--out", type=Path, required=True, help="folder for results.json and the montages")
    p.set_defaults(func=run)


def find_cases(args) -> list[tuple[Path, Path]]:
    """(volume, label) pairs from the positional pairs and from --cases."""
    from ..errors import InvalidInputError

    if len(args.pairs) % 2:
        raise InvalidInputError("Give cases as VOLUME LABEL pairs: an odd number of paths was given.")
    cases = [(args.pairs[n], args.pairs[n + 1]) for n in range(0, len(args.pairs), 2)]
    if args.cases is not None:
        if not args.cases.is_dir():
            raise InvalidInputError(f"--cases {args.cases} is not a folder.")
        if not args.image_name or not args.label_name:
            raise InvalidInputError("--cases needs --image-name and --label-name (file names inside each case).")
        for folder in sorted(d for d in args.cases.iterdir() if d.is_dir()):
            label = folder / args.label_name
            images = [folder / name for name in args.image_name if (folder / name).exists()]
            if label.exists() and images:
                cases += [(image, label) for image in images]
        if not cases:
            raise InvalidInputError(
                f"No sub-folder of {args.cases} holds {args.label_name} and one of {args.image_name}.")
    if not cases:
        raise InvalidInputError("No cases: give VOLUME LABEL pairs or --cases with --image-name and --label-name.")
    return cases


def run(args) -> int:
    from ..errors import InvalidInputError
    from ..evaluation.propagation import METRICS, evaluate_files, summarize
    from ..evaluation.propagation_montage import montage_slices, write_propagation_montage
    from ..progress import TqdmProgress
    from .common import check_outputs

    if args.slice_choice == "explicit" and not args.slices:
        raise InvalidInputError("--slice-choice explicit needs --slices.")
    if args.slices and args.slice_choice != "explicit":
        raise InvalidInputError("--slices only goes with --slice-choice explicit.")
    if any(n < 1 for n in args.num_slices):
        raise InvalidInputError(f"--num-slices are counts of at least 1, got {args.num_slices}.")
    if any(v < 1 for v in args.label_values or []):
        raise InvalidInputError(f"--label-value takes positive label numbers, got {args.label_values}.")
    axis = AXES[args.axis]
    cases = find_cases(args)
    inputs = [("--cases", args.cases), ("--weights", args.weights), ("--fusion-weights", args.fusion_weights)]
    inputs += [("a case", path) for case in cases for path in case]
    check_outputs(inputs, [("--out", args.out / "results.json")], writable=False)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InvalidInputError(f"Cannot create the output folder {args.out}: {err}") from err

    counts = [len(set(args.slices))] if args.slice_choice == "explicit" else args.num_slices
    results = []
    montages: list = []  # each its own file: two cases of one name must not share a montage
    for volume_path, label_path in cases:
        for n in counts:
            progress = TqdmProgress(desc=f"{volume_path.parent.name} n={n}", unit="frame") \
                if args.method == "stcn" else None
            result, volume, label, pred = evaluate_files(
                volume_path, label_path, label_values=args.label_values, axis=axis, num_slices=n,
                method=args.method, slice_choice=args.slice_choice, slices=args.slices,
                device=args.device, weights=args.weights, fusion_weights=args.fusion_weights,
                progress=progress)
            if progress is not None:
                progress.close()
            if not args.no_montage:
                from ..evaluation.propagation import object_mask

                safe = result.name.replace("/", "_")
                png = args.out / f"montage_{safe}_n{n}.png"
                montages.append(("a montage", png))
                check_outputs(inputs, [("--out", args.out / "results.json")] + montages)
                write_propagation_montage(
                    png, volume, object_mask(label.array, args.label_values), pred, axis,
                    montage_slices(result.object_extent, result.slices), result.slices,
                    title=f"{result.name}, {args.method}, n={n}, Dice {result.scores.dice:.3f}")
                result.montage = str(png)
            result.extra = {"volume": str(volume_path), "label": str(label_path)}
            if not results:
                print(f"{'case':<36} {'n':>3} {'dice':>7} {'sens':>7} {'ppv':>7} {'iou':>7} {'sec':>6}  slices")
            results.append(result)
            _print_row(result)

    summary = summarize(results)
    _print_summary(summary, METRICS)
    report = {
        "command": "evaluate-propagation",
        "argv": sys.argv[1:],
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.platform(),
        "method": args.method,
        "axis": axis,
        "slice_choice": args.slice_choice,
        "label_values": args.label_values or "non-zero",
        "cases": [r.to_json() for r in results],
        "summary": summary,
    }
    out_json = args.out / "results.json"
    from ..output.atomic import atomic_write

    with atomic_write(out_json) as tmp:
        tmp.write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(f"wrote {out_json}")
    return 0


def _print_row(result) -> None:
    s = result.scores
    print(f"{result.name:<36} {result.num_slices:>3} {s.dice:7.4f} {s.sensitivity:7.4f} "
          f"{s.ppv:7.4f} {s.iou:7.4f} {result.seconds:6.2f}  {result.slices}")


def _print_summary(summary: dict, metrics) -> None:
    for n, group in summary.items():
        parts = [f"{m} {group[m]['mean']:.4f} [{group[m]['min']:.4f}, {group[m]['max']:.4f}]" for m in metrics]
        print(f"n={n} over {group['cases']} case(s), mean [min, max]: " + "; ".join(parts))
