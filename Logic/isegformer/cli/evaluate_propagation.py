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
    p.add_argument("--skip-incomplete", action="store_true",
                   help="with --cases: evaluate the other folders when some lack the label or every "
                        "image (they are listed, and recorded in results.json); by default that is an error")
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


def find_cases(args) -> tuple[list[tuple[Path, Path]], list[dict]]:
    """(volume, label) pairs from the positional pairs and from --cases, and the case folders
    left out (each with what it lacks). A folder that lacks its label or all of its images is
    an error unless --skip-incomplete: a benchmark over fewer cases than the folder holds must
    never pass for the whole set."""
    from ..errors import InvalidInputError

    if len(args.pairs) % 2:
        raise InvalidInputError("Give cases as VOLUME LABEL pairs: an odd number of paths was given.")
    cases = [(args.pairs[n], args.pairs[n + 1]) for n in range(0, len(args.pairs), 2)]
    skipped: list[dict] = []
    if args.cases is not None:
        if not args.cases.is_dir():
            raise InvalidInputError(f"--cases {args.cases} is not a folder.")
        if not args.image_name or not args.label_name:
            raise InvalidInputError("--cases needs --image-name and --label-name (file names inside each case).")
        for folder in sorted(d for d in args.cases.iterdir() if d.is_dir()):
            label = folder / args.label_name
            images = [folder / name for name in args.image_name if (folder / name).is_file()]
            lacking = ([] if label.is_file() else [args.label_name]) + ([] if images else list(args.image_name))
            if lacking:
                near = sorted(f.name for f in folder.iterdir()
                              if f.name.lower() in {n.lower() for n in lacking} and f.name not in lacking)
                skipped.append({"folder": str(folder), "lacks": lacking,
                                **({"names_differing_in_case": near} if near else {})})
                continue
            cases += [(image, label) for image in images]
        if skipped and not args.skip_incomplete:
            listed = "; ".join(
                f"{item['folder']} lacks {', '.join(item['lacks'])}"
                + (f" (it has {', '.join(item['names_differing_in_case'])}: names differ in case)"
                   if "names_differing_in_case" in item else "") for item in skipped[:10])
            more = f" and {len(skipped) - 10} more" if len(skipped) > 10 else ""
            raise InvalidInputError(
                f"{len(skipped)} case folder(s) of {args.cases} cannot be evaluated: {listed}{more}. "
                "Nothing was evaluated. Fix or remove them, or pass --skip-incomplete to evaluate "
                "the others (the left-out folders are then recorded in results.json).")
        if not cases:
            raise InvalidInputError(
                f"No sub-folder of {args.cases} holds {args.label_name} and one of {args.image_name}.")
    if not cases:
        raise InvalidInputError("No cases: give VOLUME LABEL pairs or --cases with --image-name and --label-name.")
    return cases, skipped


def case_names(cases: list[tuple[Path, Path]]) -> list[str]:
    """One distinct name per case: ``folder/stem``, with more of the path where two cases would
    share a name (``A/x/vol`` and ``B/x/vol``), and a number as the last resort (one volume
    given twice)."""
    from ..evaluation.propagation import volume_stem

    def name(volume: Path, depth: int) -> str:
        parts = volume.resolve().parent.parts[-depth:] if depth else ()
        return "/".join([*parts, volume_stem(volume)])

    names = [name(v, 1) for v, _ in cases]
    depth = 1
    while len(set(names)) < len(names) and depth < 8:
        depth += 1
        counts = {n: names.count(n) for n in names}
        names = [name(v, depth) if counts[n] > 1 else n for n, (v, _) in zip(names, cases)]
    return numbered_duplicates(names, "#")


def numbered_duplicates(names: list[str], mark: str) -> list[str]:
    """``names`` with a number (after ``mark``) on each that occurs more than once."""
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if names.count(name) == 1 else f"{name}{mark}{seen[name]}")
    return unique


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
    cases, skipped = find_cases(args)
    for item in skipped:
        print(f"warning: left out {item['folder']}: it lacks {', '.join(item['lacks'])}", file=sys.stderr)
    names = case_names(cases)
    counts = [len(set(args.slices))] if args.slice_choice == "explicit" else args.num_slices
    # Every output is named and checked before any work: a clash found after hours of STCN
    # propagation would lose them.
    files = file_names(names)
    montage_of = {} if args.no_montage else {
        (index, n): args.out / f"montage_{files[index]}_n{n}.png"
        for index in range(len(cases)) for n in counts}
    inputs = [("--cases", args.cases), ("--weights", args.weights), ("--fusion-weights", args.fusion_weights)]
    inputs += [("a case", path) for case in cases for path in case]
    outputs = [("--out", args.out / "results.json"), ("--out", args.out / PARTIAL_REPORT)]
    outputs += [("a montage", png) for png in montage_of.values()]
    check_outputs(inputs, outputs, writable=False)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InvalidInputError(f"Cannot create the output folder {args.out}: {err}") from err
    check_outputs(inputs, outputs)

    results = []
    for index, (volume_path, label_path) in enumerate(cases):
        for n in counts:
            progress = TqdmProgress(desc=f"{names[index]} n={n}", unit="frame") \
                if args.method == "stcn" else None
            result, volume, label, pred = evaluate_files(
                volume_path, label_path, label_values=args.label_values, axis=axis, num_slices=n,
                method=args.method, slice_choice=args.slice_choice, slices=args.slices,
                device=args.device, weights=args.weights, fusion_weights=args.fusion_weights,
                progress=progress, name=names[index])
            if progress is not None:
                progress.close()
            if not args.no_montage:
                from ..evaluation.propagation import object_mask

                png = montage_of[(index, n)]
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
            # Written after every case, so that an error in a later one keeps the earlier ones;
            # under its own name, so that a failed re-run leaves the last complete report alone.
            _write_report(args, axis, results, skipped, complete=False)

    _print_summary(summarize(results), METRICS)
    out_json = _write_report(args, axis, results, skipped, complete=True)
    partial = args.out / PARTIAL_REPORT
    if partial.exists():
        partial.unlink()
    print(f"wrote {out_json}")
    return 0


#: The report of a run in progress (or one that failed), beside the last complete results.json.
PARTIAL_REPORT = "results.partial.json"


def file_names(names: list[str]) -> list[str]:
    """File-name forms of distinct case names, distinct too: '/' and '#' become '_', and where
    that makes two alike (``a_b/vol`` and ``a/b_vol``) a number follows."""
    return numbered_duplicates([name.replace("/", "_").replace("#", "_") for name in names], "-")


def _write_report(args, axis: int, results: list, skipped: list[dict], *, complete: bool) -> Path:
    from ..evaluation.propagation import summarize
    from ..output.atomic import atomic_write

    report = {
        "command": "evaluate-propagation",
        "argv": sys.argv[1:],
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.platform(),
        "method": args.method,
        "axis": axis,
        "slice_choice": args.slice_choice,
        "label_values": args.label_values or "non-zero",
        "complete": complete,
        "cases": [r.to_json() for r in results],
        "skipped": skipped,
        "summary": summarize(results),
    }
    out_json = args.out / ("results.json" if complete else PARTIAL_REPORT)
    with atomic_write(out_json) as tmp:
        tmp.write_text(json.dumps(report, indent=2), encoding="utf-8")
    return out_json


def _print_row(result) -> None:
    s = result.scores
    print(f"{result.name:<36} {result.num_slices:>3} {s.dice:7.4f} {s.sensitivity:7.4f} "
          f"{s.ppv:7.4f} {s.iou:7.4f} {result.seconds:6.2f}  {result.slices}")


def _print_summary(summary: dict, metrics) -> None:
    for n, group in summary.items():
        parts = [f"{m} {group[m]['mean']:.4f} [{group[m]['min']:.4f}, {group[m]['max']:.4f}]" for m in metrics]
        print(f"n={n} over {group['cases']} case(s), mean [min, max]: " + "; ".join(parts))
