"""A world (RAS) point to continuous IJK, through the volume's parent transforms, and to a slice pixel.

In Slicer a volume's IJKToRAS matrix maps voxel coordinates into the volume's *local* frame; the
chain of (linear) parent transforms then maps that frame into the world, where slice views and
markups live. Each transform in the chain is given as the 4x4 matrix that maps its child's
coordinates into its parent's ("to parent"), nearest parent first. Voxel centres are at integer
IJK, so the slice index and the pixel are found by rounding half up.

Array convention: a volume array is indexed ``[k, j, i]``. The slice along array axis 0 is
``array[k]`` with rows j and columns i; along axis 1 it is ``array[:, j, :]`` with rows k and
columns i; along axis 2 it is ``array[:, :, i]`` with rows k and columns j.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from ..errors import InvalidInputError

#: array axis -> (IJK component of the slice index, of the row, of the column); IJK order is (i, j, k)
_IJK_COMPONENTS = {0: (2, 1, 0), 1: (1, 2, 0), 2: (0, 2, 1)}


def _matrix(value, what: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != (4, 4) or not np.all(np.isfinite(arr)):
        raise InvalidInputError(f"{what} must be a finite 4x4 matrix, got shape {arr.shape}.")
    if not np.allclose(arr[3], (0.0, 0.0, 0.0, 1.0)):
        raise InvalidInputError(f"{what} must be an affine matrix (last row 0 0 0 1), got {arr[3]}.")
    if abs(np.linalg.det(arr[:3, :3])) < 1e-12:
        raise InvalidInputError(f"{what} is singular: it cannot be inverted.")
    return arr


def ijk_to_world(ijk_to_ras: np.ndarray, parents_to_world: Iterable[np.ndarray] = ()) -> np.ndarray:
    """The 4x4 IJK-to-world matrix: ``T_n @ ... @ T_1 @ ijk_to_ras``.

    ``parents_to_world`` lists the "to parent" matrices of the parent transforms, nearest first
    (Slicer: ``GetMatrixTransformToParent`` of each transform up the tree). An empty chain means the
    volume is not transformed.
    """
    result = _matrix(ijk_to_ras, "IJK-to-RAS")
    for depth, to_parent in enumerate(parents_to_world):
        result = _matrix(to_parent, f"Parent transform {depth + 1}") @ result
    return result


def world_to_ijk(point_world: Sequence[float], ijk_to_world_matrix: np.ndarray) -> np.ndarray:
    """Continuous (i, j, k) of a world point (voxel centres at integers)."""
    point = np.asarray(point_world, dtype=np.float64).reshape(-1)
    if point.shape != (3,) or not np.all(np.isfinite(point)):
        raise InvalidInputError(f"A point must be 3 finite coordinates, got {point_world!r}.")
    inverse = np.linalg.inv(_matrix(ijk_to_world_matrix, "IJK-to-world"))
    return (inverse @ np.append(point, 1.0))[:3]


def _round_half_up(value: float) -> int:
    return int(math.floor(value + 0.5))


@dataclass(frozen=True)
class SlicePoint:
    """Where a world point falls for the model: array axis, slice index, and (row, col) = (y, x)."""

    axis: int
    index: int
    row: float
    col: float

    @property
    def pixel(self) -> tuple[int, int]:
        """The (row, col) of the pixel whose centre is nearest."""
        return _round_half_up(self.row), _round_half_up(self.col)


def slice_shape(volume_shape: Sequence[int], axis: int) -> tuple[int, int]:
    """(rows, cols) of a slice along ``axis`` of a (k, j, i) array."""
    shape = tuple(int(n) for n in volume_shape)
    if len(shape) != 3:
        raise InvalidInputError(f"Expected a 3D volume shape, got {shape}.")
    if axis not in (0, 1, 2):
        raise InvalidInputError(f"Axis must be 0 (k), 1 (j) or 2 (i), got {axis!r}.")
    return tuple(n for a, n in enumerate(shape) if a != axis)  # type: ignore[return-value]


def slice_point(
    point_world: Sequence[float],
    ijk_to_world_matrix: np.ndarray,
    axis: int,
    volume_shape: Sequence[int],
) -> SlicePoint:
    """The slice (along array ``axis``) and the (row, col) in it of a world point.

    Raises InvalidInputError when the point lies outside the volume.
    """
    rows, cols = slice_shape(volume_shape, axis)
    ijk = world_to_ijk(point_world, ijk_to_world_matrix)
    index_c, row_c, col_c = _IJK_COMPONENTS[axis]
    index = _round_half_up(float(ijk[index_c]))
    row, col = float(ijk[row_c]), float(ijk[col_c])
    depth = int(volume_shape[axis])
    if not (0 <= index < depth and -0.5 <= row < rows - 0.5 and -0.5 <= col < cols - 0.5):
        raise InvalidInputError(
            f"The point {tuple(round(float(v), 2) for v in point_world)} (RAS) lies outside the "
            f"volume (voxel i, j, k = {tuple(round(float(v), 1) for v in ijk)}, volume size "
            f"{tuple(int(n) for n in reversed(tuple(volume_shape)))}). Place the point on the image."
        )
    return SlicePoint(axis=axis, index=index, row=row, col=col)


def slice_point_ijk(point: SlicePoint) -> np.ndarray:
    """The continuous (i, j, k) voxel position of a SlicePoint (the inverse of ``slice_point``
    on the slice's centre plane)."""
    ijk = np.zeros(3)
    index_c, row_c, col_c = _IJK_COMPONENTS[point.axis]
    ijk[index_c], ijk[row_c], ijk[col_c] = point.index, point.row, point.col
    return ijk


def take_slice(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """The 2D view ``volume[index]``, ``volume[:, index]`` or ``volume[:, :, index]`` (no copy)."""
    if volume.ndim != 3:
        raise InvalidInputError(f"Expected a 3D array, got shape {volume.shape}.")
    if axis not in (0, 1, 2) or not 0 <= index < volume.shape[axis]:
        raise InvalidInputError(
            f"Slice {index} along axis {axis} does not exist in a volume of shape {volume.shape}."
        )
    return volume[(slice(None),) * axis + (index,)]
