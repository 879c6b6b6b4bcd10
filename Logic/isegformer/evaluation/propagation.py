"""The propagation protocol (paper Table 2): n ground-truth slices in, a scored volume out.

For one volume, its label map and one object (a label value, or several values taken together,
e.g. BRATS' whole tumour = every non-zero label):

1. choose n slices along the axis (:func:`choose_slices`);
2. give the propagator the ground truth at those slices, one after another in ascending order;
3. take its label map, set the annotated slices to the ground truth;
4. score Dice, sensitivity, PPV and IoU over the whole volume.

Both propagators (STCN and the interpolation baseline) run through the same code, so their
figures are comparable.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..errors import InvalidInputError
from ..progress import ProgressCallback
from ..propagation.base import frames_along_axis, volume_from_frames
from ..propagation.factory import create_propagator
from ..volume import Volume, read_label_map, read_volume
from ..volume.slicing import check_axis, slice_spacing

log = logging.getLogger(__name__)

SLICE_CHOICES = ("reference", "extent", "explicit")
METRICS = ("dice", "sensitivity", "ppv", "iou")


@dataclass
class Scores:
    """Overlap of a predicted and a ground-truth mask, each in [0, 1].

    Two empty masks score 1 everywhere; an empty prediction of a present object has PPV 0.
    """

    dice: float
    sensitivity: float
    ppv: float
    iou: float


@dataclass
class CaseResult:
    name: str
    method: str
    axis: int
    label_values: list[int]
    slice_choice: str
    num_slices: int
    slices: list[int]
    num_frames: int
    object_extent: list[int]  # first and last slice holding the object along the axis
    scores: Scores
    seconds: float
    montage: Optional[str] = None
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


def score(gt: np.ndarray, pred: np.ndarray) -> Scores:
    """Dice, sensitivity (recall), PPV (precision) and IoU of two boolean masks of one shape."""
    gt, pred = np.asarray(gt, bool), np.asarray(pred, bool)
    if gt.shape != pred.shape:
        raise InvalidInputError(f"Prediction {pred.shape} and ground truth {gt.shape} differ in shape.")
    tp = float(np.count_nonzero(gt & pred))
    n_gt, n_pred = float(np.count_nonzero(gt)), float(np.count_nonzero(pred))

    def ratio(num: float, den: float) -> float:
        # 0/0: perfect when both masks are empty, else nothing was found (or nothing was there).
        if den == 0:
            return 1.0 if n_gt == n_pred == 0 else 0.0
        return num / den

    return Scores(
        dice=ratio(2 * tp, n_gt + n_pred),
        sensitivity=ratio(tp, n_gt),
        ppv=ratio(tp, n_pred),
        iou=ratio(tp, n_gt + n_pred - tp),
    )


def reference_slices(num_frames: int, n: int) -> list[int]:
    """The reference scheme: ``min(round(T * i / n), T - 1)`` for i = 1..n (duplicates dropped).

    ``round`` halves to even, as Python and numpy do.
    """
    _check_count(n)
    return sorted({min(round(num_frames * i / n), num_frames - 1) for i in range(1, n + 1)})


def extent_slices(object_frames: np.ndarray, n: int) -> list[int]:
    """n slices spread evenly over the object's extent: the centres of n equal parts of it.

    With the extent ``lo..hi``, slice ``round(lo + (hi - lo) * (i + 0.5) / n)`` for i = 0..n-1
    (n = 1 gives the middle slice). The object's first and last slices, often a few voxels of
    partial volume, are not spent as annotations.
    """
    _check_count(n)
    lo, hi = object_extent(object_frames)
    return sorted({int(round(lo + (hi - lo) * (i + 0.5) / n)) for i in range(n)})


def object_extent(object_frames: np.ndarray) -> tuple[int, int]:
    """First and last frame (axis 0) where the boolean ``object_frames`` (T, H, W) is set."""
    present = np.flatnonzero(np.asarray(object_frames).reshape(object_frames.shape[0], -1).any(axis=1))
    if present.size == 0:
        raise InvalidInputError("The object is absent from the label map: nothing to evaluate.")
    return int(present[0]), int(present[-1])


def choose_slices(object_frames: np.ndarray, n: int, choice: str = "reference",
                  explicit: Optional[Sequence[int]] = None) -> list[int]:
    """The annotated slices for a (T, H, W) ground-truth mask, by ``choice`` (see SLICE_CHOICES)."""
    num_frames = object_frames.shape[0]
    if choice == "reference":
        return reference_slices(num_frames, n)
    if choice == "extent":
        return extent_slices(object_frames, n)
    if choice == "explicit":
        if not explicit:
            raise InvalidInputError("--slice-choice explicit needs the slices (--slices 10 20 30).")
        bad = [s for s in explicit if not 0 <= int(s) < num_frames]
        if bad:
            raise InvalidInputError(f"Slices {bad} are outside 0..{num_frames - 1} along this axis.")
        return sorted({int(s) for s in explicit})
    raise InvalidInputError(f"Unknown slice choice {choice!r}: use one of {', '.join(SLICE_CHOICES)}.")


def _check_count(n: int) -> None:
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise InvalidInputError(f"The number of annotated slices must be at least 1, got {n!r}.")


def object_mask(label: np.ndarray, label_values: Sequence[int] | None) -> np.ndarray:
    """The boolean mask of ``label_values`` (None: every non-zero label) in ``label``."""
    label = np.asarray(label)
    if label_values is None:
        mask = label != 0
    else:
        mask = np.isin(label, np.asarray(list(label_values)))
    if not mask.any():
        present = np.unique(label)
        shown = ", ".join(f"{v:g}" for v in present[:20]) + (" ..." if present.size > 20 else "")
        raise InvalidInputError(
            f"Label value(s) {list(label_values) if label_values is not None else 'non-zero'} do not occur in "
            f"the label map; it holds: {shown}. Pick one of those with --label-value."
        )
    return mask


def evaluate_case(
    volume: Volume,
    label: Volume,
    *,
    label_values: Sequence[int] | None,
    axis: int,
    num_slices: int,
    method: str = "interpolation",
    slice_choice: str = "reference",
    slices: Optional[Sequence[int]] = None,
    name: str = "",
    device: str = "auto",
    weights=None,
    fusion_weights=None,
    progress: Optional[ProgressCallback] = None,
) -> tuple[CaseResult, np.ndarray]:
    """Run the protocol on one volume; returns the result and the predicted mask (k, j, i).

    With ``slice_choice="explicit"``, ``slices`` are the annotated slices and ``num_slices`` is
    taken from them.
    """
    check_axis(axis)
    volume.check_label_map(label)
    gt = object_mask(label.array, label_values)
    gt_frames = frames_along_axis(gt, axis)
    chosen = choose_slices(gt_frames, num_slices, slice_choice, slices)
    if slice_choice == "explicit":
        num_slices = len(chosen)  # the list is the count
    elif len(chosen) < num_slices:
        log.warning("%s: only %d distinct slices for n=%d (the object or the axis is short).",
                    name, len(chosen), num_slices)
    start = time.perf_counter()
    propagator = create_propagator(
        method, volume.array, axis, 1, device=device, weights=weights, fusion_weights=fusion_weights,
        pixel_spacing=slice_spacing(volume.spacing, axis),
    )
    # one after another, as a user would (annotate_many gives that result with less work)
    propagator.annotate_many([(index, gt_frames[index].astype(np.uint8)) for index in chosen],
                             progress=progress)
    pred_frames = propagator.labels() == 1
    pred_frames[chosen] = gt_frames[chosen]
    seconds = time.perf_counter() - start
    result = CaseResult(
        name=name,
        method=method,
        axis=axis,
        label_values=[int(v) for v in label_values] if label_values is not None else [],
        slice_choice=slice_choice,
        num_slices=num_slices,
        slices=chosen,
        num_frames=int(gt_frames.shape[0]),
        object_extent=list(object_extent(gt_frames)),
        scores=score(gt_frames, pred_frames),
        seconds=seconds,
    )
    return result, volume_from_frames(pred_frames, axis)


def evaluate_files(volume_path: str | Path, label_path: str | Path, **kwargs) -> tuple[CaseResult, Volume, Volume, np.ndarray]:
    """:func:`evaluate_case` on files; also returns the volume, label and prediction (for montages)."""
    volume = read_volume(volume_path)
    try:
        label = read_label_map(label_path, volume)  # values checked, Slicer's flipped/cropped grids placed
    except InvalidInputError as err:
        raise InvalidInputError(f"{Path(label_path).name} vs {Path(volume_path).name}: {err}") from err
    kwargs.setdefault("name", Path(volume_path).parent.name + "/" + volume_stem(Path(volume_path)))
    result, pred = evaluate_case(volume, label, **kwargs)
    return result, volume, label, pred


def summarize(results: Sequence[CaseResult]) -> dict:
    """Mean, min and max of each metric over cases, per number of annotated slices."""
    summary: dict = {}
    for n in sorted({r.num_slices for r in results}):
        group = [r for r in results if r.num_slices == n]
        summary[str(n)] = {"cases": len(group)}
        for metric in METRICS:
            values = np.array([getattr(r.scores, metric) for r in group])
            summary[str(n)][metric] = {"mean": float(values.mean()), "min": float(values.min()),
                                       "max": float(values.max())}
    return summary


def volume_stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".seg.nrrd", ".nrrd", ".nii", ".mha", ".mhd"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem
