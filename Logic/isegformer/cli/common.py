"""What several subcommands share: slice-axis names, the propagation model options, loading
the weights with a progress bar, propagating every segment and the closing volume report."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence

import numpy as np

# The (k, j, i) array axes by index or by letter: one table for every command's --axis.
AXES = {"k": 0, "j": 1, "i": 2, "0": 0, "1": 1, "2": 2}


def add_axis_argument(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument("--axis", default="0", type=parse_axis, metavar="{0,1,2,k,j,i}", help=help_text)


def add_precision_argument(parser: argparse.ArgumentParser) -> None:
    """``--precision`` of the click model (``ClickPredictor``'s precisions; listed here so that
    building the parser imports no torch)."""
    parser.add_argument("--precision", default="float32", choices=("float32", "float16", "bfloat16", "int8"),
                        help="click model arithmetic: float32 (default, the reference's numbers); "
                             "float16/bfloat16: autocast on CUDA (the CPU ignores them); int8: the "
                             "opt-in fast CPU mode (int8 linear layers: faster clicks whose masks "
                             "are close to, but not, the reference's; see the README)")


def parse_axis(text: str) -> int:
    value = AXES.get(str(text).strip().lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"axis must be 0, 1, 2 (or k, j, i), got {text!r}")
    return value


def check_outputs(inputs: Sequence[tuple[str, Any]], outputs: Sequence[tuple[str, Any]], *,
                  writable: bool = True) -> None:
    """Fail before the slow part: no output (option name, path) may be an input (option name,
    path or list of paths), lie inside an input folder, or be another output; with
    ``writable``, each output's folder must exist and be writable now. Options not given are None."""
    from ..output.atomic import check_writable
    from ..output.paths import guard_outputs
    from ..volume.sitk_path import check_sitk_name

    def flat(pairs):
        for name, value in pairs:
            for item in (value if isinstance(value, (list, tuple)) else [value]):
                if item is not None:
                    yield name, item

    ins, outs = list(flat(inputs)), list(flat(outputs))
    guard_outputs([p for _, p in ins], [p for _, p in outs],
                  input_names=[n for n, _ in ins], output_names=[n for n, _ in outs])
    for name, path in outs:
        check_sitk_name(path, name)  # now, not after the work: SimpleITK would abort on it
    for _, path in outs if writable else ():
        check_writable(path)


def require_inputs(inputs: Sequence[tuple[str, Any]]) -> None:
    """Fail before any download when an input file (option name, path or list) is missing, or
    has a name the image library cannot open."""
    from ..errors import InvalidInputError
    from ..volume.sitk_path import check_sitk_name

    for name, value in inputs:
        for path in (value if isinstance(value, (list, tuple)) else [value]):
            if path is not None and not Path(path).expanduser().exists():
                raise InvalidInputError(f"{name} {path}: no such file or folder. Check the path.")
            if path is not None:
                check_sitk_name(path, name)


def require_number(value: Any, option: str, low: float, high: float, *, low_open: bool = False) -> None:
    """An option's number must be finite and in [low, high] ((low, high] with ``low_open``)."""
    import math

    from ..errors import InvalidInputError

    if value is None:
        return
    inside = math.isfinite(value) and (low < value if low_open else low <= value) and value <= high
    if not inside:
        bracket = "(" if low_open else "["
        raise InvalidInputError(f"{option} must be a number in {bracket}{low:g}, {high:g}], got {value!r}.")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    parser.add_argument("--stcn", default="stcn", metavar="NAME_OR_PATH",
                        help="STCN weights: a registry name or a stcn.pth file (default: stcn)")
    parser.add_argument("--fusion", default=None, metavar="NAME_OR_PATH",
                        help="FusionNet weights (fusion_stcn.pth or mivos_fusion); default: none, "
                             "the two directions are blended by distance")


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

    network = stcn.load_stcn(resolve_weights(args.stcn, "propagation"))
    fusion = stcn.load_fusion(resolve_weights(args.fusion, "fusion")) if args.fusion else None
    return network, fusion


def resolve_weights(name_or_path, kind: str):
    """A verified local path for a registry name of ``kind`` or a weights file (downloads when
    needed)."""
    if name_or_path is None:
        return None
    from ..progress import TqdmProgress
    from ..weights import resolve_model

    bar = TqdmProgress(f"weights {Path(str(name_or_path)).name}", unit="B")
    try:
        return resolve_model(str(name_or_path), progress=bar, kind=kind)
    finally:
        bar.close()
