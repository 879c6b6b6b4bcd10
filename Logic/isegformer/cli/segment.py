"""``isegformer segment``: a volume and clicks (Slicer ``.mrk.json``) in, a Slicer ``.seg.nrrd`` out."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def add_axis_argument(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument("--axis", default="0", type=parse_axis, metavar="{0,1,2,k,j,i}", help=help_text)


def parse_axis(text: str) -> int:
    value = {"0": 0, "1": 1, "2": 2, "k": 0, "j": 1, "i": 2}.get(str(text).strip().lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"axis must be 0, 1, 2 (or k, j, i), got {text!r}")
    return value


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    parser.add_argument("--stcn", default="stcn", metavar="NAME_OR_PATH",
                        help="STCN weights: a registry name or a stcn.pth file (default: stcn)")
    parser.add_argument("--fusion", default=None, metavar="NAME_OR_PATH",
                        help="FusionNet weights (fusion_stcn.pth or mivos_fusion); default: none, "
                             "the two directions are blended by distance")


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
    parser.add_argument("--overlay", type=Path, metavar="PNG", help="also write a PNG montage of the result")
    parser.add_argument("--session", type=Path, metavar="FILE",
                        help="also save the whole session (to continue in Python with Session.load)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..output.atomic import check_writable
    from ..progress import TqdmProgress
    from ..session import Session

    for path in [args.out, args.overlay, args.session]:
        if path is not None:
            check_writable(path)  # fail before the slow part, not after
    started = time.perf_counter()
    from ..click_engine.predictor import ClickPredictor

    predictor = ClickPredictor(resolve_weights(args.model), device=args.device)
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


def propagate_all(session, method: str) -> None:
    from ..progress import TqdmProgress

    for segment in session.segments:
        if not segment.has_annotations:
            continue
        bar = TqdmProgress(f"propagate {segment.name}", unit="%")
        try:
            session.propagate(segment, method=method, progress=bar)
        finally:
            bar.close()


def report_segments(session) -> None:
    voxel_ml = abs(float(np.linalg.det(session.volume.ijk_to_ras[:3, :3]))) / 1000.0
    for segment in session.segments:
        voxels = int(session.segment_mask(segment).sum())
        print(f"  {segment.name}: {voxels} voxels ({voxels * voxel_ml:.2f} ml)")


def load_propagation_networks(args: argparse.Namespace):
    """(STCN network, FusionNet or None) for ``--method stcn``; (None, None) otherwise."""
    if args.method != "stcn":
        return None, None
    from ..propagation import stcn

    network = stcn.load_stcn(resolve_weights(args.stcn))
    fusion = stcn.load_fusion(resolve_weights(args.fusion)) if args.fusion else None
    return network, fusion


def resolve_weights(name_or_path):
    """A verified local path for a registry name or a weights file (downloads when needed)."""
    if name_or_path is None:
        return None
    from ..progress import TqdmProgress
    from ..weights import resolve_model

    bar = TqdmProgress(f"weights {Path(str(name_or_path)).name}", unit="B")
    try:
        return resolve_model(str(name_or_path), progress=bar)
    finally:
        bar.close()
