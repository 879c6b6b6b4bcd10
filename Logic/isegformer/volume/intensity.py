"""Mapping volume intensities to [0, 1] for the networks, and gray to 3 channels.

By default the window is the 0.1 and 99.9 percentiles over the whole volume (as the
reference does for its medical volumes), so every slice of a volume is scaled the same way.
"""
from __future__ import annotations

import logging
from typing import Optional, Sequence

import numpy as np

from ..errors import InvalidInputError

log = logging.getLogger(__name__)

DEFAULT_PERCENTILES = (0.1, 99.9)


def check_finite(array: np.ndarray, what: str = "volume") -> None:
    """Raise InvalidInputError for an empty array or one holding NaN/inf."""
    if array.size == 0:
        raise InvalidInputError(f"The {what} is empty (shape {array.shape}).")
    if np.issubdtype(array.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise InvalidInputError(
                f"The {what} holds {bad} NaN or infinite voxel(s) of {array.size}. Replace them "
                "(e.g. with the background value) before segmenting."
            )


def robust_window(
    array: np.ndarray, percentiles: Sequence[float] = DEFAULT_PERCENTILES
) -> tuple[float, float]:
    """(low, high) intensities at the given percentiles of the whole array.

    If the percentiles coincide (mostly-constant volume with a small object), falls back to
    the min and max; a truly constant volume is an error (there is nothing to see).
    """
    lo_p, hi_p = (float(p) for p in percentiles)
    if not (0.0 <= lo_p < hi_p <= 100.0):
        raise InvalidInputError(f"Percentiles must satisfy 0 <= low < high <= 100, got {percentiles!r}.")
    arr = np.asarray(array)
    check_finite(arr)
    low, high = (float(v) for v in np.percentile(arr, [lo_p, hi_p]))
    if high <= low:
        low, high = float(arr.min()), float(arr.max())
        if high <= low:
            raise InvalidInputError(
                f"The volume is constant (every voxel is {low:g}): there is nothing to segment. "
                "Check that the right file was loaded."
            )
        log.info("Percentiles %s coincide; using the full range [%g, %g].", percentiles, low, high)
    return low, high


def normalize(
    array: np.ndarray,
    window: Optional[tuple[float, float]] = None,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
) -> np.ndarray:
    """Clip ``array`` to ``window`` (default: :func:`robust_window`) and scale to [0, 1], float32."""
    arr = np.asarray(array)
    if window is None:
        low, high = robust_window(arr, percentiles)
    else:
        low, high = (float(v) for v in window)
        if not (np.isfinite(low) and np.isfinite(high) and high > low):
            raise InvalidInputError(f"A window needs finite low < high, got {window!r}.")
        check_finite(arr)
    out = (arr.astype(np.float32) - np.float32(low)) / np.float32(high - low)
    return np.clip(out, 0.0, 1.0, out=out)


def gray_to_rgb(image: np.ndarray, channel_axis: int = -1) -> np.ndarray:
    """Replicate a gray image into 3 identical channels at ``channel_axis`` (default last: H, W, 3)."""
    arr = np.asarray(image)
    if arr.ndim != 2:
        raise InvalidInputError(f"Expected a 2D gray slice, got shape {arr.shape}.")
    return np.repeat(np.expand_dims(arr, channel_axis), 3, axis=channel_axis)
