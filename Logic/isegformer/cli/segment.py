"""``isegformer segment``: a volume and clicks (Slicer ``.mrk.json``) in, a Slicer ``.seg.nrrd`` out."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from . import common
from .common import (add_axis_argument, add_model_arguments, check_outputs, load_propagation_networks,
                     propagate_all, report_segments, require_inputs)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "segment",
        help="segment a volume from clicks saved in Slicer (.mrk.json), optionally propagate",
        description="Replay clicks (Slicer point lists, .mrk.json) on a volume with iSegFormer, "
                    "optionally propagate each segment through the volume, and write a Slicer "
                    ".seg.nrrd. A point whose description is 'negative', or whose list (or file) "
                    "name has a word starting with 'neg', is a negative click.",
    )
    parser.add_argument("volume", help="the volume: NIfTI, NRRD, MHA, or a DICOM series folder")
    parser.add_argument("--clicks", nargs="+", required=True, metavar="CLICKS.mrk.json",
                        help="one or more point-list files, replayed in the order given")
    parser.add_argument("--out", required=True, type=Path, metavar="SEG.seg.nrrd",
                        help="the segmentation to write (Slicer .seg.nrrd)")
    parser.add_argument("--segment", default=None, metavar="NAME",
                        help="the segment for points that name none (default: Segment_1)")
    add_axis_argument(parser, "slice axis of the clicks that do not carry one (0=k, 1=j, 2=i; default 0)")
    parser.add_argument("--propagate", action="store_true", help="propagate every segment through the volume")
    parser.add_argument("--method", default="stcn", choices=("stcn", "interpolation"),
                        help="propagation method (default: stcn)")
    parser.add_argument("--model", default="isegformer_swin_base_oaizib", metavar="NAME_OR_PATH",
                        help="click model: a registry name or a checkpoint file "
                             "(default: isegformer_swin_base_oaizib)")
    add_model_arguments(parser)
    common.add_precision_argument(parser)
    parser.add_argument("--overlay", type=Path, metavar="PNG", help="also write a PNG montage of the result")
    parser.add_argument("--session", type=Path, metavar="FILE",
                        help="also save the whole session (to continue in Python with Session.load)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..progress import TqdmProgress
    from ..session import Session

    check_outputs(
        [("the volume", args.volume), ("--clicks", args.clicks), ("--model", args.model),
         ("--stcn", args.stcn), ("--fusion", args.fusion)],
        [("--out", args.out), ("--overlay", args.overlay), ("--session", args.session)],
    )
    require_inputs([("the volume", args.volume), ("--clicks", args.clicks)])  # before any download
    from ..output.overlay import check_overlay_path
    from ..output.seg_nrrd import check_seg_nrrd_path

    check_seg_nrrd_path(args.out, "--out", "save the session (--session) and use Session.save_label_map")
    if args.overlay is not None:
        check_overlay_path(args.overlay, "--overlay")
    if args.segment is not None:
        from .. import arguments

        arguments.name(args.segment, "--segment")
    started = time.perf_counter()
    from ..click_engine.predictor import ClickPredictor, check_click_precision

    check_click_precision(args.precision, args.device)  # before the model's download
    predictor = ClickPredictor(common.resolve_weights(args.model, "click_model"), device=args.device, precision=args.precision)
    stcn, fusion = load_propagation_networks(args) if args.propagate else (None, None)
    session = Session.open(args.volume, click_model=predictor, stcn_weights=stcn, fusion_weights=fusion,
                           device=args.device, axis=args.axis)
    if args.segment is not None:
        session.add_segment(args.segment)
    bar = TqdmProgress("clicks", unit="click")
    try:
        count = session.load_clicks(args.clicks, progress=bar)
    finally:
        bar.close()
    print(f"{count} click(s) on {len(session.segments)} segment(s): "
          + ", ".join(s.name for s in session.segments))
    if args.propagate:
        propagate_all(session, args.method)
    session.save_segmentation(args.out)
    print(f"wrote {args.out}")
    if args.overlay is not None:
        session.save_overlay(args.overlay)
        print(f"wrote {args.overlay}")
    if args.session is not None:
        session.save(args.session)
        print(f"wrote {args.session}")
    report_segments(session)
    print(f"done in {time.perf_counter() - started:.1f} s")
    return 0
