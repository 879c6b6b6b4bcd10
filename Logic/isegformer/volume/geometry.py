"""Voxel and world coordinates: the one place where IJK, LPS and RAS meet.

Conventions used throughout the package:

- **Array index** ``(k, j, i)``: how a volume's numpy array is indexed, the order that
  ``SimpleITK.GetArrayFromImage`` and ``slicer.util.arrayFromVolume`` both give. ``array[k, j, i]``.
- **Continuous IJK** ``(i, j, k)``: voxel coordinates in the order of the world axes' matrix
  columns; voxel centres sit at integers. ``i`` is the fastest-varying array axis (the last one).
  This is what ITK's ``TransformIndexToPhysicalPoint`` and Slicer's IJKToRAS matrix take.
- **LPS** is ITK/SimpleITK/DICOM's world frame; **RAS** is Slicer's. They differ by a sign on
  the first two axes: ``(x_ras, y_ras, z_ras) = (-x_lps, -y_lps, z_lps)``.

A 4x4 homogeneous matrix maps column vectors ``(i, j, k, 1)`` to ``(x, y, z, 1)``:
``ijk_to_lps = [[D @ diag(spacing), origin], [0, 0, 0, 1]]`` with ITK's direction matrix ``D``
(columns are the world directions of i, j, k), and ``ijk_to_ras = LPS_TO_RAS @ ijk_to_lps``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import InvalidInputError

#: Flips L<->R and P<->A; its own inverse, so it also maps RAS to LPS.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
RAS_TO_LPS = LPS_TO_RAS


def _as_3(values: Sequence[float], what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.shape != (3,) or not np.all(np.isfinite(arr)):
        raise InvalidInputError(f"{what} must be 3 finite numbers, got {values!r}.")
    return arr


def _as_direction(direction: Sequence[float] | np.ndarray) -> np.ndarray:
    arr = np.asarray(direction, dtype=np.float64)
    if arr.size != 9 or not np.all(np.isfinite(arr)):
        raise InvalidInputError(f"A direction must be 9 finite numbers (3x3), got {direction!r}.")
    # SimpleITK gives the 3x3 matrix row-major as a flat tuple.
    return arr.reshape(3, 3)


def ijk_to_lps_matrix(
    origin_lps: Sequence[float], spacing: Sequence[float], direction_lps: Sequence[float]
) -> np.ndarray:
    """The 4x4 IJK->LPS matrix from ITK geometry (origin, spacing in (i, j, k) order, 3x3 direction)."""
    origin = _as_3(origin_lps, "The origin")
    spacing_ = _as_3(spacing, "The spacing")
    if np.any(spacing_ <= 0):
        raise InvalidInputError(f"The spacing must be positive, got {tuple(spacing_)}.")
    direction = _as_direction(direction_lps)
    if abs(np.linalg.det(direction)) < 1e-6:
        raise InvalidInputError(f"The direction matrix is singular: {direction.tolist()}.")
    matrix = np.eye(4)
    matrix[:3, :3] = direction @ np.diag(spacing_)
    matrix[:3, 3] = origin
    return matrix


def ijk_to_ras_matrix(
    origin_lps: Sequence[float], spacing: Sequence[float], direction_lps: Sequence[float]
) -> np.ndarray:
    """The 4x4 IJK->RAS matrix (Slicer's IJKToRAS) from ITK's LPS geometry."""
    return LPS_TO_RAS @ ijk_to_lps_matrix(origin_lps, spacing, direction_lps)


def itk_geometry_from_ijk_to_ras(
    ijk_to_ras: np.ndarray,
) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """Inverse of :func:`ijk_to_ras_matrix`: ``(origin_lps, spacing, direction_lps_flat)``.

    The spacing is the length of each column; the direction is the column divided by it.
    """
    matrix = check_matrix(ijk_to_ras)
    ijk_to_lps = RAS_TO_LPS @ matrix
    columns = ijk_to_lps[:3, :3]
    spacing = np.linalg.norm(columns, axis=0)
    direction = columns / spacing
    return (
        tuple(float(v) for v in ijk_to_lps[:3, 3]),
        tuple(float(v) for v in spacing),
        tuple(float(v) for v in direction.reshape(-1)),
    )


def check_matrix(matrix: np.ndarray) -> np.ndarray:
    """Validate a 4x4 affine voxel-to-world matrix and return it as float64."""
    arr = np.asarray(matrix, dtype=np.float64)
    if arr.shape != (4, 4) or not np.all(np.isfinite(arr)):
        raise InvalidInputError(f"Expected a finite 4x4 matrix, got shape {arr.shape}.")
    if not np.allclose(arr[3], [0.0, 0.0, 0.0, 1.0]):
        raise InvalidInputError(f"The last row of an affine matrix must be 0 0 0 1, got {arr[3]}.")
    if abs(np.linalg.det(arr[:3, :3])) < 1e-12:
        raise InvalidInputError("The voxel-to-world matrix is singular (zero spacing?).")
    return arr


def invert(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a 4x4 affine matrix (e.g. RAS->IJK from IJK->RAS)."""
    return np.linalg.inv(check_matrix(matrix))


def transform_points(matrix: np.ndarray, points: np.ndarray | Sequence[float]) -> np.ndarray:
    """Apply a 4x4 affine to one point (3,) or many (N, 3); returns the same shape, float64."""
    pts = np.asarray(points, dtype=np.float64)
    single = pts.ndim == 1
    pts2 = pts.reshape(1, -1) if single else pts
    if pts2.ndim != 2 or pts2.shape[1] != 3:
        raise InvalidInputError(f"Points must have shape (3,) or (N, 3), got {pts.shape}.")
    mat = np.asarray(matrix, dtype=np.float64)
    out = pts2 @ mat[:3, :3].T + mat[:3, 3]
    return out[0] if single else out


def lps_to_ras(points: np.ndarray | Sequence[float]) -> np.ndarray:
    """Convert world points between LPS and RAS (the same flip both ways)."""
    return transform_points(LPS_TO_RAS, points)


ras_to_lps = lps_to_ras


def ijk_to_array_index(ijk: np.ndarray | Sequence[float]) -> tuple[int, int, int]:
    """Continuous ``(i, j, k)`` -> the nearest voxel's array index ``(k, j, i)``."""
    i, j, k = (int(np.floor(float(v) + 0.5)) for v in _as_3(ijk, "An IJK point"))
    return k, j, i


def array_index_to_ijk(index: Sequence[int]) -> np.ndarray:
    """Array index ``(k, j, i)`` -> continuous ``(i, j, k)`` of the voxel centre."""
    k, j, i = _as_3(index, "An array index")
    return np.array([i, j, k], dtype=np.float64)


def is_inside(ijk: np.ndarray | Sequence[float], array_shape: Sequence[int]) -> bool:
    """Whether continuous ``(i, j, k)`` rounds to a voxel of an array of shape ``(K, J, I)``."""
    k, j, i = ijk_to_array_index(ijk)
    return 0 <= k < array_shape[0] and 0 <= j < array_shape[1] and 0 <= i < array_shape[2]
