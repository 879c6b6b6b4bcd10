"""Frames for STCN, prepared the way iSegFormer's propagation experiment prepared them.

1. ``volume_to_frames``: intensities -> uint8 gray replicated to RGB. Percentiles 0.1 / 99.9
   over the whole volume, clipping, then ``255 * (v - lo) / hi`` truncated to uint8. Dividing by
   ``hi`` rather than ``hi - lo`` is the reference's quirk, kept because it changes the frames
   whenever ``lo > 0``. Integer volumes go through int32 exactly as the reference did.
2. ``normalize_frames``: uint8 -> float32 in [0, 1] -> ImageNet mean/std.
3. ``pad_to_multiple`` / ``unpad``: zero padding of the *normalised* frames (0 is then the
   mean colour) to multiples of 16, split evenly with the extra pixel on the bottom/right.
"""
from __future__ import annotations

import logging
from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import InvalidInputError

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LOW_PERCENTILE = 0.1
HIGH_PERCENTILE = 99.9
STRIDE = 16

Pad = Tuple[int, int, int, int]  # (left, right, top, bottom)


def intensity_bounds(volume: np.ndarray) -> Tuple[float, float]:
    """(lo, hi) as the reference computed them: percentiles of the volume stacked 3 times.

    The RGB stack has every value three times, which moves numpy's linear-interpolation
    percentile slightly compared with the gray volume, so the stack is reproduced (in one
    temporary that the percentile partitions in place).
    """
    stacked = np.repeat(volume.reshape(-1), 3)
    lo = np.percentile(stacked, LOW_PERCENTILE, overwrite_input=True)
    hi = max(1, np.percentile(stacked, HIGH_PERCENTILE, overwrite_input=True))
    return lo, hi


def volume_to_frames(volume: np.ndarray, chunk: int = 16) -> np.ndarray:
    """(T, H, W) intensities -> (T, H, W, 3) uint8 frames, as the reference's ``load_volume``.

    When the low percentile is negative (CT), dividing by ``hi`` would overflow uint8; the range
    ``hi - lo`` is used instead and a warning is logged.
    """
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise InvalidInputError(f"Expected a (T, H, W) volume, got shape {volume.shape}.")
    if volume.size == 0:
        raise InvalidInputError("The volume is empty: nothing to propagate.")
    if volume.dtype.kind not in "iufb":
        raise InvalidInputError(f"Volume intensities must be numbers, got dtype {volume.dtype}.")
    integer = volume.dtype.kind in "iub"
    if integer:
        work = volume.astype(np.int32)
    else:
        if not np.isfinite(volume).all():
            raise InvalidInputError(
                "The volume contains NaN or infinite values: fix or mask them before propagating."
            )
        work = volume.astype(np.float64)
    lo, hi = intensity_bounds(work)
    scale = hi
    if lo < 0:
        log.warning("Intensities go below 0 (low percentile %s): scaling by hi - lo instead of hi, "
                    "unlike the reference, which would overflow.", lo)
        scale = hi - lo
    frames = np.empty(volume.shape + (3,), dtype=np.uint8)
    for start in range(0, volume.shape[0], chunk):
        block = work[start:start + chunk].copy()
        # assigning the float bounds into an int32 block truncates them, as in the reference
        block[block < lo] = lo
        block[block > hi] = hi
        scaled = 255 * (block - lo) / scale
        np.clip(scaled, 0, 255, out=scaled)  # only the sub-zero sliver of the truncated lo
        frames[start:start + chunk] = scaled.astype(np.uint8)[..., None]
    return frames


def normalize_frames(frames_u8: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32, ImageNet-normalised."""
    x = torch.as_tensor(frames_u8).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - mean) / std


def padding_for(height: int, width: int, multiple: int = STRIDE) -> Pad:
    """(left, right, top, bottom) zero padding that makes both sides multiples of ``multiple``."""
    extra_h = -height % multiple
    extra_w = -width % multiple
    return (extra_w // 2, extra_w - extra_w // 2, extra_h // 2, extra_h - extra_h // 2)


def pad_to_multiple(x: torch.Tensor, pad: Pad) -> torch.Tensor:
    """Zero-pad the last two dimensions."""
    return F.pad(x, pad) if any(pad) else x


def unpad(x, pad: Pad):
    """Crop the padding off the last two dimensions (numpy array or tensor)."""
    left, right, top, bottom = pad
    height, width = x.shape[-2:]
    return x[..., top:height - bottom, left:width - right]
