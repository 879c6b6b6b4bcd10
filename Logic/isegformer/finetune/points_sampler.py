"""Simulated clicks for training, in the spirit of RITM's multi-point sampler.

For each training crop we pick one object (sometimes the union of two), then draw a random
number of positive clicks inside it and negative clicks outside it. Fewer clicks are more likely
(a geometric distribution), so the model sees mostly the first few clicks of a session, as users
make them. Positive clicks come from a slightly eroded object, so that they sit inside it rather
than on its edge; negative clicks come from the background, from other objects, or from a band
just around the object, where a user's corrective clicks usually land.

:func:`next_training_points` adds the "iterative" clicks of the training loop: a click in the
inner part of the largest current error, drawn at random (the NoC evaluation's clicker, by
contrast, is deterministic: see :mod:`isegformer.clicks.simulator`).

Click arrays follow the model's convention: ``(2N, 3)`` rows ``[y, x, index]``, rows ``0..N-1``
positive, ``N..2N-1`` negative, unused rows ``(-1, -1, -1)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional, Sequence

import numpy as np
import torch
from scipy.ndimage import binary_erosion, distance_transform_cdt, distance_transform_edt

from ..errors import InvalidInputError

PADDING_ROW = (-1.0, -1.0, -1.0)
_SQUARE = np.ones((3, 3), dtype=bool)


@lru_cache(maxsize=None)
def geometric_probs(count: int, gamma: float) -> np.ndarray:
    """Probabilities of 0..count-1 proportional to gamma**i (read-only)."""
    probs = gamma ** np.arange(count, dtype=np.float64)
    probs /= probs.sum()
    probs.setflags(write=False)
    return probs


@dataclass(frozen=True)
class SamplerSettings:
    """The knobs of :class:`MultiPointSampler` (defaults: the reference's values)."""

    max_num_points: int = 12
    prob_gamma: float = 0.8
    border_expand_ratio: float = 0.1
    positive_erode_prob: float = 0.9
    positive_erode_iters: int = 3
    negative_background_prob: float = 0.1
    negative_other_prob: float = 0.4
    negative_border_prob: float = 0.5
    merge_objects_prob: float = 0.15
    max_num_merged_objects: int = 2


class MultiPointSampler:
    """Chooses the target object of a crop and simulates the clicks a user gave before it."""

    def __init__(self, settings: SamplerSettings = SamplerSettings()) -> None:
        if settings.max_num_points < 1:
            raise InvalidInputError(f"max_num_points must be >= 1, got {settings.max_num_points}.")
        neg = (settings.negative_background_prob, settings.negative_other_prob,
               settings.negative_border_prob)
        if not math.isclose(sum(neg), 1.0) or min(neg) < 0:
            raise InvalidInputError(f"The negative-click strategy probabilities must sum to 1, got {neg}.")
        self.settings = settings
        self._negative_strategy_probs = np.asarray(neg, dtype=np.float64)

    @property
    def max_num_points(self) -> int:
        return self.settings.max_num_points

    def sample(
        self,
        objects: Sequence[np.ndarray],
        rng: np.random.Generator,
        valid: Optional[np.ndarray] = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(target, points)``: a float32 (H, W) 0/1 mask and its (2N, 3) float32 clicks.

        ``objects`` are the boolean masks of the crop's objects (at least one, non-empty);
        ``valid`` marks the pixels that are real image (not padding): negative clicks stay there.
        """
        objects = [np.asarray(o, dtype=bool) for o in objects]
        if not objects or not all(o.any() for o in objects):
            raise InvalidInputError("The click sampler needs at least one non-empty object mask.")
        s = self.settings
        chosen = self._choose_objects(len(objects), rng)
        target = np.zeros_like(objects[0])
        for i in chosen:
            target |= objects[i]
        positive_regions = [self._maybe_erode(objects[i], rng) for i in chosen]

        background = ~target if valid is None else (~target & np.asarray(valid, dtype=bool))
        others = [objects[i] for i in range(len(objects)) if i not in chosen]
        other = np.logical_and(np.any(others, axis=0), background) if others else background
        if not other.any():
            other = background
        negative_regions = [background, other, self._border_band(target) & background]

        positives = self._positive_points(positive_regions, rng)
        negatives = self._negative_points(negative_regions, rng)
        points = np.full((2 * s.max_num_points, 3), PADDING_ROW, dtype=np.float32)
        for row, (y, x) in enumerate(positives):
            points[row] = (y, x, row)
        for row, (y, x) in enumerate(negatives):
            points[s.max_num_points + row] = (y, x, row)
        return target.astype(np.float32), points

    # --- choosing ------------------------------------------------------------------------------
    def _choose_objects(self, count: int, rng: np.random.Generator) -> list[int]:
        s = self.settings
        if count > 1 and rng.random() < s.merge_objects_prob:
            most = min(count, s.max_num_merged_objects)
            if most >= 2:
                how_many = int(rng.integers(2, most + 1))
                return sorted(rng.choice(count, size=how_many, replace=False).tolist())
        return [int(rng.integers(count))]

    def _maybe_erode(self, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        s = self.settings
        if rng.random() >= s.positive_erode_prob:
            return mask
        # border_value=1: an object touching the image edge is not eroded from the edge.
        eroded = binary_erosion(mask, _SQUARE, iterations=s.positive_erode_iters, border_value=1)
        return eroded if eroded.sum() > 10 else mask

    def _border_band(self, target: np.ndarray) -> np.ndarray:
        """The pixels within a few pixels (chessboard distance) outside the object."""
        width = int(math.ceil(self.settings.border_expand_ratio * math.sqrt(target.sum())))
        distance = distance_transform_cdt(~target, metric="chessboard")
        return (distance > 0) & (distance <= width)

    # --- drawing ---------------------------------------------------------------------------------
    def _positive_points(self, regions: list[np.ndarray], rng: np.random.Generator) -> list[tuple[int, int]]:
        s = self.settings
        pixel_lists = [np.argwhere(r) for r in regions]
        pixel_lists = [p for p in pixel_lists if len(p)]
        if len(pixel_lists) == 1:
            count = 1 + int(rng.choice(s.max_num_points, p=geometric_probs(s.max_num_points, s.prob_gamma)))
            return [_pick(pixel_lists[0], rng) for _ in range(count)]
        # Several merged objects: one click in each, then a few more anywhere in their union.
        points = [_pick(p, rng) for p in pixel_lists][: s.max_num_points]
        union = np.concatenate(pixel_lists)
        extra = int(rng.choice(s.max_num_points + 1, p=geometric_probs(s.max_num_points + 1, s.prob_gamma)))
        extra = min(extra, s.max_num_points - len(points))
        points += [_pick(union, rng) for _ in range(extra)]
        return points

    def _negative_points(self, regions: list[np.ndarray], rng: np.random.Generator) -> list[tuple[int, int]]:
        s = self.settings
        count = int(rng.choice(s.max_num_points + 1, p=geometric_probs(s.max_num_points + 1, s.prob_gamma)))
        pixel_lists = [np.argwhere(r) for r in regions]
        points = []
        for _ in range(count):
            strategy = int(rng.choice(len(regions), p=self._negative_strategy_probs))
            if len(pixel_lists[strategy]):
                points.append(_pick(pixel_lists[strategy], rng))
        return points


def _pick(pixels: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
    y, x = pixels[int(rng.integers(len(pixels)))]
    return int(y), int(x)


def _padded_edt(region: np.ndarray) -> np.ndarray:
    # Padding makes the image border count as the region's boundary.
    return distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]


def random_error_click(
    prob: np.ndarray, target: np.ndarray, rng: np.random.Generator, threshold: float = 0.49
) -> Optional[tuple[int, int, bool]]:
    """A corrective click ``(y, x, positive)`` in the larger error of ``prob``, or None if none.

    The click is drawn uniformly from the inner half of the error region (pixels deeper than
    half the maximum depth), so that training sees varied but sensible corrections.
    """
    valid = target >= 0
    obj = target > 0.5
    false_neg = obj & (prob < threshold) & valid
    false_pos = ~obj & (prob > threshold) & valid
    fn_depth, fp_depth = _padded_edt(false_neg), _padded_edt(false_pos)
    fn_max, fp_max = float(fn_depth.max()), float(fp_depth.max())
    if max(fn_max, fp_max) <= 0:
        return None
    positive = fn_max > fp_max
    depth = fn_depth if positive else fp_depth
    candidates = np.argwhere(depth > max(fn_max, fp_max) / 2.0)
    if len(candidates) == 0:
        return None
    y, x = _pick(candidates, rng)
    return y, x, positive


def next_training_points(
    probs: torch.Tensor,
    targets: torch.Tensor,
    points: torch.Tensor,
    click_number: int,
    rng: np.random.Generator,
) -> torch.Tensor:
    """Add the ``click_number``-th (1-based) iterative click to every sample of a batch.

    ``probs`` and ``targets`` are (B, 1, H, W); ``points`` (B, 2N, 3). The click goes into row
    ``N - click_number`` (positive) or ``2N - click_number`` (negative), the last rows, which the
    sampler fills least often; a new copy of ``points`` is returned.
    """
    num = points.shape[1] // 2
    if not 1 <= click_number <= num:
        raise InvalidInputError(f"click_number must be in 1..{num}, got {click_number}.")
    probs_np = probs.detach().float().cpu().numpy()[:, 0]
    targets_np = targets.detach().float().cpu().numpy()[:, 0]
    new_points = points.clone()
    for b in range(probs_np.shape[0]):
        click = random_error_click(probs_np[b], targets_np[b], rng)
        if click is None:
            continue
        y, x, positive = click
        row = num - click_number if positive else 2 * num - click_number
        new_points[b, row] = torch.tensor([y, x, 100 + click_number], dtype=points.dtype)
    return new_points
