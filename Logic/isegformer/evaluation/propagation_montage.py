"""A PNG of several slices with the ground-truth and the propagated contours, for a quick look."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..propagation.base import frames_along_axis
from ..volume import Volume
from ..volume.intensity import normalize, robust_window
from ..volume.slicing import slice_spacing

GT_COLOUR = "#2ecc40"  # green
PRED_COLOUR = "#ff4136"  # red


def montage_slices(extent: Sequence[int], annotated: Sequence[int], count: int = 8) -> list[int]:
    """Up to ``count`` slices spread over the object's extent, avoiding annotated ones when possible."""
    lo, hi = int(extent[0]), int(extent[1])
    candidates = [s for s in range(lo, hi + 1) if s not in set(annotated)] or list(range(lo, hi + 1))
    picks = np.linspace(0, len(candidates) - 1, min(count, len(candidates)))
    return sorted({candidates[int(round(p))] for p in picks})


def write_propagation_montage(
    path: str | Path,
    volume: Volume,
    gt: np.ndarray,
    pred: np.ndarray,
    axis: int,
    slices: Sequence[int],
    annotated: Sequence[int] = (),
    title: str = "",
    columns: int = 4,
) -> Path:
    """Draw ``slices`` along ``axis``: image, ground truth (green) and prediction (red) contours."""
    # A bare Figure renders with Agg and leaves pyplot's global backend alone (Slicer runs Qt).
    from matplotlib.figure import Figure

    path = Path(path)
    image = np.nan_to_num(np.asarray(volume.array, dtype=np.float32))
    window = robust_window(image) if image.max() > image.min() else (0.0, 1.0)
    frames = frames_along_axis(image, axis)
    gt_frames, pred_frames = frames_along_axis(gt, axis), frames_along_axis(pred, axis)
    row_mm, col_mm = slice_spacing(volume.spacing, axis)
    slices = list(slices)
    columns = max(1, min(columns, len(slices)))
    rows = (len(slices) + columns - 1) // columns
    fig = Figure(figsize=(3.2 * columns, 3.4 * rows + (0.4 if title else 0)), dpi=100)
    for n, index in enumerate(slices):
        ax = fig.add_subplot(rows, columns, n + 1)
        ax.imshow(normalize(frames[index], window=window), cmap="gray", vmin=0, vmax=1,
                  aspect=row_mm / col_mm, interpolation="nearest")
        for mask, colour in ((gt_frames[index], GT_COLOUR), (pred_frames[index], PRED_COLOUR)):
            if mask.any():
                ax.contour(mask.astype(np.float32), levels=[0.5], colors=[colour], linewidths=1.0)
        a, b = gt_frames[index].astype(bool), pred_frames[index].astype(bool)
        denominator = a.sum() + b.sum()
        dice = 1.0 if denominator == 0 else 2.0 * np.sum(a & b) / denominator
        note = " (annotated)" if index in set(annotated) else f"  Dice {dice:.2f}"
        ax.set_title(f"slice {index}{note}", fontsize=9)
        ax.set_axis_off()
    heading = (title + "  " if title else "") + "green: ground truth, red: propagated"
    fig.suptitle(heading, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path
