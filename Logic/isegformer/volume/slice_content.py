"""Refusing chosen slices that hold nothing a model can use, before any of them is used.

A command that works through many slices (an evaluation, a fine-tune) checks every chosen slice
first, so that one bad slice is reported by its index before hours of work, not in the middle:

- a slice with NaN or infinite voxels (they have no intensity to show or learn; a NIfTI's are
  in the array too, see :mod:`isegformer.volume.nifti_nonfinite`);
- a slice that is constant once the intensity window is applied (nothing to segment).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import InvalidInputError
from .slicing import extract_slice


def _listed(indices: Sequence[int]) -> str:
    shown = ", ".join(str(i) for i in indices[:20])
    return shown + (f", ... ({len(indices)} slices)" if len(indices) > 20 else "")


def refuse_nonfinite_slices(array: np.ndarray, axis: int, indices: Sequence[int], where: str) -> None:
    """InvalidInputError naming the chosen slices that hold NaN or infinite voxels."""
    if not np.issubdtype(array.dtype, np.floating):
        return
    bad = [i for i in indices if not np.isfinite(extract_slice(array, axis, i)).all()]
    if bad:
        raise InvalidInputError(
            f"{where}: the chosen slice(s) {_listed(bad)} along axis {axis} hold NaN or infinite "
            "voxels (a NIfTI viewer shows them as 0). Replace them in the volume (e.g. with the "
            "background value): the intensity window is computed over the whole volume, so "
            "every voxel must be finite, also in the slices left out."
        )


def refuse_constant_slices(array: np.ndarray, axis: int, indices: Sequence[int], where: str,
                           window: tuple[float, float]) -> None:
    """InvalidInputError naming the chosen slices that are one gray value inside ``window``."""
    low, high = window
    bad = []
    for index in indices:
        plane = extract_slice(array, axis, index)
        first, last = float(plane.min()), float(plane.max())
        if first == last or last <= low or first >= high:
            bad.append(index)
    if bad:
        raise InvalidInputError(
            f"{where}: the chosen slice(s) {_listed(bad)} along axis {axis} are constant within the "
            f"intensity window [{low:g}, {high:g}]: there is nothing to see in them. Check the "
            "slices, the window and the file, or leave those slices out with --slices."
        )
