"""PNG montages: slices with each segment's contour and the clicks drawn, for the CLI and bug reports.

Rows and columns are shown as stored (row 0 at the top), one square pixel per voxel: a quick
look, not a radiological display. Positive clicks are green dots, negative ones red, both
ringed in their segment's colour.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..errors import InvalidInputError
from ..volume.slicing import extract_slice
from .atomic import atomic_write, check_writable

log = logging.getLogger(__name__)

MAX_TILES = 12
#: The montage is always PNG bytes; a ``.jpg`` name would mislabel them.
OVERLAY_SUFFIXES = (".png",)


def check_overlay_path(path: str | os.PathLike, writer: str = "save_overlay") -> Path:
    """Refuse, before any work, an output path that cannot be written (:func:`check_writable`:
    a folder, a missing folder) or does not end in ``.png``."""
    path = check_writable(path)
    if not path.name.lower().endswith(OVERLAY_SUFFIXES):
        raise InvalidInputError(
            f"Cannot write an overlay to {path.name or path}: {writer} writes a PNG image; give a name "
            "ending in .png."
        )
    return path


@dataclass(frozen=True)
class OverlayClick:
    """A click to draw: on slice ``index`` at (row, col)."""

    index: int
    row: float
    col: float
    positive: bool
    color: tuple[float, float, float] = (1.0, 1.0, 1.0)


def pick_slices(masks: Sequence[np.ndarray], axis: int, count: int = 8) -> list[int]:
    """Up to ``count`` evenly spaced slices along ``axis`` where some mask is present
    (evenly spaced over the whole volume when every mask is empty)."""
    if not masks:
        raise InvalidInputError("No masks given.")
    size = masks[0].shape[axis]
    other = tuple(a for a in range(3) if a != axis)
    present = np.zeros(size, bool)
    for mask in masks:
        present |= np.asarray(mask, bool).any(axis=other)
    candidates = np.flatnonzero(present) if present.any() else np.arange(size)
    if len(candidates) <= count:
        return [int(i) for i in candidates]
    picks = np.linspace(0, len(candidates) - 1, count).round().astype(int)
    return [int(candidates[p]) for p in picks]


def write_overlay(
    path: str | os.PathLike,
    volume: np.ndarray,
    axis: int,
    masks: Sequence[np.ndarray],
    colors: Sequence[Sequence[float]],
    *,
    indices: Optional[Sequence[int]] = None,
    clicks: Sequence[OverlayClick] = (),
    window: Optional[tuple[float, float]] = None,
    columns: int = 4,
    names: Optional[Sequence[str]] = None,
    dpi: int = 100,
) -> Path:
    """Write a PNG montage of slices of ``volume`` (k, j, i) along ``axis`` with the contours
    of ``masks`` (one colour each) and ``clicks``. ``indices`` default: :func:`pick_slices`."""
    from matplotlib.figure import Figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from skimage import measure

    from .. import arguments

    check_overlay_path(path, "write_overlay")
    axis = arguments.axis(axis)
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise InvalidInputError(f"Expected a 3D volume, got shape {volume.shape}.")
    if len(masks) != len(colors):
        raise InvalidInputError("Give one colour per mask.")
    colors = [arguments.color(c) for c in colors]
    window = arguments.window(window)
    columns = arguments.integer(columns, "columns", 1, 64)
    dpi = arguments.integer(dpi, "dpi", 10, 1200)
    if names is not None:
        names = [arguments.name(n, "A legend name") for n in names]
    if indices is not None:
        indices = arguments.indices(volume.shape, axis, indices)
    for mask in masks:
        if np.shape(mask) != volume.shape:
            raise InvalidInputError(f"A mask of shape {np.shape(mask)} does not fit the volume {volume.shape}.")
    if indices is None or len(indices) == 0:
        indices = pick_slices(masks, axis) if masks else [volume.shape[axis] // 2]
    indices = [int(i) for i in indices]
    if len(indices) > MAX_TILES:
        log.info("Showing %d of %d slices in the overlay", MAX_TILES, len(indices))
        indices = [indices[int(p)] for p in np.linspace(0, len(indices) - 1, MAX_TILES).round()]
    if window is None:
        low, high = (float(v) for v in np.percentile(volume, [0.1, 99.9]))
    else:
        low, high = (float(v) for v in window)
    high = high if high > low else low + 1.0

    columns = max(1, min(int(columns), len(indices)))
    rows = int(np.ceil(len(indices) / columns))
    rows_px, cols_px = extract_slice(volume, axis, indices[0]).shape
    scale = 3.0 / max(rows_px, cols_px)  # about 3 inches per tile
    figure = Figure(figsize=(columns * cols_px * scale, rows * rows_px * scale + 0.4), dpi=dpi)
    FigureCanvasAgg(figure)
    for tile, index in enumerate(indices):
        ax = figure.add_subplot(rows, columns, tile + 1)
        image = np.clip((extract_slice(volume, axis, index).astype(np.float32) - low) / (high - low), 0, 1)
        ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        for mask, color in zip(masks, colors):
            slice_mask = extract_slice(np.asarray(mask), axis, index)
            if not slice_mask.any():
                continue
            padded = np.pad(slice_mask.astype(np.float32), 1)  # closes contours at the border
            for contour in measure.find_contours(padded, 0.5):
                ax.plot(contour[:, 1] - 1, contour[:, 0] - 1, color=tuple(color), linewidth=1.2)
        for click in clicks:
            if click.index == index:
                ax.plot(click.col, click.row, "o", markersize=6,
                        markerfacecolor=(0.1, 0.9, 0.1) if click.positive else (0.95, 0.1, 0.1),
                        markeredgecolor=tuple(click.color), markeredgewidth=1.5)
        ax.set_title(f"axis {axis}, slice {index}", fontsize=8, color="white")
        ax.set_axis_off()
    if names:
        from matplotlib.lines import Line2D

        handles = [Line2D([0], [0], color=tuple(c), label=n) for n, c in zip(names, colors)]
        figure.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False,
                      labelcolor="white")
    figure.tight_layout(rect=(0, 0.05 if names else 0, 1, 1))
    with atomic_write(path) as tmp:
        figure.savefig(tmp, format="png", facecolor="black")
    log.info("Wrote an overlay of %d slice(s) to %s", len(indices), path)
    return Path(path)
