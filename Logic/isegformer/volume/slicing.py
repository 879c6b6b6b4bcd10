"""Picking a 2D slice out of a (k, j, i) volume, and writing a 2D mask back.

A slice along ``axis`` (0 = k, 1 = j, 2 = i) at ``index`` is ``np.moveaxis(array, axis, 0)[index]``,
the same view :func:`isegformer.propagation.base.frames_along_axis` uses, so its rows and columns are:

====  ==============  ====  =====
axis  array slice      row   col
====  ==============  ====  =====
0     ``a[index]``     j     i
1     ``a[:, index]``  k     i
2     ``a[:, :, index]`` k   j
====  ==============  ====  =====

Rows and columns are the models' (y, x).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import InvalidInputError

#: For each axis, which continuous-IJK component ((i, j, k) = 0, 1, 2) the slice index, row and col are.
_IJK_COMPONENT = {  # axis: (index, row, col)
    0: (2, 1, 0),
    1: (1, 2, 0),
    2: (0, 2, 1),
}


def check_axis(axis: int) -> int:
    if axis not in (0, 1, 2):
        raise InvalidInputError(f"Axis must be 0 (k), 1 (j) or 2 (i), got {axis!r}.")
    return int(axis)


def check_index(array_shape: Sequence[int], axis: int, index: int) -> int:
    check_axis(axis)
    count = int(array_shape[axis])
    if not (isinstance(index, (int, np.integer)) and 0 <= index < count):
        raise InvalidInputError(
            f"Slice index {index!r} is outside the volume: axis {axis} has slices 0..{count - 1}."
        )
    return int(index)


def slice_shape(array_shape: Sequence[int], axis: int) -> tuple[int, int]:
    """(rows, cols) of a slice along ``axis``."""
    check_axis(axis)
    rest = [int(s) for n, s in enumerate(array_shape) if n != axis]
    return rest[0], rest[1]


def slice_spacing(spacing_ijk: Sequence[float], axis: int) -> tuple[float, float]:
    """Pixel spacing (row, col) of a slice along ``axis``, from a volume's spacing in (i, j, k) order."""
    comp = _IJK_COMPONENT[check_axis(axis)]
    return float(spacing_ijk[comp[1]]), float(spacing_ijk[comp[2]])


def extract_slice(array: np.ndarray, axis: int, index: int) -> np.ndarray:
    """The 2D slice (a view, not a copy) of a 3D ``array`` along ``axis`` at ``index``."""
    if array.ndim != 3:
        raise InvalidInputError(f"Expected a 3D array, got shape {array.shape}.")
    check_index(array.shape, axis, index)
    return np.moveaxis(array, axis, 0)[index]


def insert_slice(array: np.ndarray, axis: int, index: int, mask: np.ndarray) -> None:
    """Write the 2D ``mask`` into the 3D ``array`` (in place) along ``axis`` at ``index``."""
    target = extract_slice(array, axis, index)
    mask = np.asarray(mask)
    if mask.shape != target.shape:
        raise InvalidInputError(
            f"A slice along axis {axis} of a volume {array.shape} has shape {target.shape}, "
            f"but the mask has shape {mask.shape}."
        )
    target[...] = mask


def slice_point_to_ijk(axis: int, index: float, row: float, col: float) -> np.ndarray:
    """(slice index, row, col) along ``axis`` -> continuous ``(i, j, k)``."""
    comp = _IJK_COMPONENT[check_axis(axis)]
    ijk = np.zeros(3, dtype=np.float64)
    ijk[comp[0]], ijk[comp[1]], ijk[comp[2]] = index, row, col
    return ijk


def ijk_to_slice_point(axis: int, ijk: Sequence[float]) -> tuple[float, float, float]:
    """Continuous ``(i, j, k)`` -> (slice index, row, col) along ``axis``."""
    comp = _IJK_COMPONENT[check_axis(axis)]
    values = np.asarray(ijk, dtype=np.float64).reshape(3)
    return float(values[comp[0]]), float(values[comp[1]]), float(values[comp[2]])
