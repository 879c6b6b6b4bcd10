"""``isegformer propagate``: a few slices drawn elsewhere, carried through the whole volume."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .common import (add_axis_argument, add_model_arguments, check_outputs, load_propagation_networks, propagate_all,
                     report_segments, require_inputs)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "propagate",
        help="propagate label slices drawn elsewhere (a label map or .seg.nrrd) through the volume",
        description="Take the slices of LABELS that hold any label along --axis (or only --slices) "
                    "as annotated slices, propagate every label through the volume, and write the "
                    "result. Annotated slices are kept exactly as drawn. LABELS must lie on the "
                    "volume's grid.",
    )
    parser.add_argument("volume", help="the volume: NIfTI, NRRD, MHA, or a DICOM series folder")
    parser.add_argument("--labels", required=True, type=Path, metavar="LABELS",
                        help="label map with a few drawn slices (.nii.gz, .nrrd, .mha) or a Slicer .seg.nrrd")
    parser.add_argument("--out", required=True, type=Path, metavar="OUT",
                        help="result: a Slicer .seg.nrrd, or a label map (.nii.gz, .nrrd, .mha)")
    add_axis_argument(parser, "axis the slices were drawn along (0=k, 1=j, 2=i; default 0)")
    parser.add_argument("--slices", default=None, metavar="I,J,...",
                        help="only these slice indices (default: every slice with a label)")
    parser.add_argument("--method", default="stcn", choices=("stcn", "interpolation"),
                        help="propagation method (default: stcn)")
    add_model_arguments(parser)
    parser.add_argument("--overlay", type=Path, metavar="PNG", help="also write a PNG montage of the result")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import InvalidInputError
    from ..session import Session

    check_outputs(
        [("the volume", args.volume), ("--labels", args.labels), ("--stcn", args.stcn), ("--fusion", args.fusion)],
        [("--out", args.out), ("--overlay", args.overlay)],
    )
    require_inputs([("the volume", args.volume), ("--labels", args.labels)])  # before any download
    from ..output.labelmap import check_label_map_path
    from ..output.overlay import check_overlay_path

    if not args.out.name.lower().endswith(".seg.nrrd"):
        try:
            check_label_map_path(args.out)
        except InvalidInputError:
            # In the command's own words: the library's message names its Python functions.
            raise InvalidInputError(
                f"--out {args.out}: give a Slicer segmentation (.seg.nrrd, which keeps the segments' "
                "names, colours and overlaps) or a label map (.nii.gz, .nii, .nrrd or .mha); the "
                "two-file .nhdr and .mhd are read, not written."
            ) from None
    if args.overlay is not None:
        check_overlay_path(args.overlay, "--overlay")
    indices = None
    if args.slices:
        try:
            indices = [int(v) for v in args.slices.replace(" ", "").split(",") if v]
        except ValueError:
            raise InvalidInputError(f"--slices takes comma-separated integers, got {args.slices!r}.") from None
    started = time.perf_counter()
    stcn, fusion = load_propagation_networks(args)
    session = Session.open(args.volume, stcn_weights=stcn, fusion_weights=fusion, device=args.device, axis=args.axis)
    # A .seg.nrrd's segments are taken one by one, with their names, colours and overlaps.
    annotated = session.annotate_from_label_map(args.labels, axis=args.axis, indices=indices)
    print(f"{len(session.segments)} label(s) on {len(annotated)} annotated slice(s) along axis "
          f"{args.axis}: {', '.join(str(i) for i in annotated)}")
    propagate_all(session, args.method)
    if args.out.name.lower().endswith(".seg.nrrd"):
        session.save_segmentation(args.out)
        print(f"wrote {args.out}")
    else:
        # Found only now, after the propagation: the result is written rather than lost, and
        # the loss in the label map is said, not silent.
        shared = session.overlapping_voxels()
        session.save_label_map(args.out, overlaps="last")
        print(f"wrote {args.out}")
        if shared:
            print(f"warning: {shared} voxel(s) belong to more than one propagated segment; a label map "
                  f"holds one label per voxel, so in {args.out} the segment listed later holds them "
                  "(the counts below are per segment). Use --out NAME.seg.nrrd to keep the overlaps.",
                  file=sys.stderr)
    if args.overlay is not None:
        session.save_overlay(args.overlay)
        print(f"wrote {args.overlay}")
    report_segments(session)
    print(f"done in {time.perf_counter() - started:.1f} s")
    return 0
