"""The zoom-in region of interest: an inclusive box and the reference's arithmetic on it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

from ...clicks import Click


@dataclass(frozen=True)
class Roi:
    """Rows ``rmin..rmax`` and columns ``cmin..cmax`` of the full image, both ends included."""

    rmin: int
    rmax: int
    cmin: int
    cmax: int

    @property
    def height(self) -> int:
        return self.rmax - self.rmin + 1

    @property
    def width(self) -> int:
        return self.cmax - self.cmin + 1

    def as_tuple(self) -> tuple[int, int, int, int]:
        return self.rmin, self.rmax, self.cmin, self.cmax

    def iou(self, other: "Roi") -> float:
        """Box IoU as the product of the row and column overlaps (not the area IoU)."""
        return (_segment_iou(self.rmin, self.rmax, other.rmin, other.rmax)
                * _segment_iou(self.cmin, self.cmax, other.cmin, other.cmax))

    def holds_positive_clicks(self, clicks: Iterable[Click]) -> bool:
        """False when a positive click lies outside.

        The max side is tested with ``>=`` (as the reference does): a click on the last row or
        column counts as outside.
        """
        for click in clicks:
            if not click.positive:
                continue
            if click.y < self.rmin or click.y >= self.rmax:
                return False
            if click.x < self.cmin or click.x >= self.cmax:
                return False
        return True


def _segment_iou(a: int, b: int, c: int, d: int) -> float:
    intersection = max(0, min(b, d) - max(a, c) + 1)
    union = max(1e-6, max(b, d) - min(a, c) + 1)
    return intersection / union


def object_roi(pred_mask: np.ndarray, clicks: Iterable[Click],
               expansion_ratio: float, min_crop_size: int) -> Roi:
    """The box around the predicted object and the positive clicks, expanded and clamped."""
    mask = np.array(pred_mask, dtype=bool, copy=True)
    for click in clicks:
        if click.positive:
            mask[click.pixel] = True
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    rmin, rmax = int(rows[0]), int(rows[-1])
    cmin, cmax = int(cols[0]), int(cols[-1])

    rcenter = 0.5 * (rmin + rmax)
    ccenter = 0.5 * (cmin + cmax)
    height = max(expansion_ratio * (rmax - rmin + 1), min_crop_size)
    width = max(expansion_ratio * (cmax - cmin + 1), min_crop_size)
    # Python's round (half to even) is part of the reference's result; keep it.
    box = (int(round(rcenter - 0.5 * height)), int(round(rcenter + 0.5 * height)),
           int(round(ccenter - 0.5 * width)), int(round(ccenter + 0.5 * width)))
    h, w = mask.shape
    return Roi(max(0, box[0]), min(h - 1, box[1]), max(0, box[2]), min(w - 1, box[3]))
