"""Whether two voxel grids are the same physical lattice, and how one's voxels land on the other.

This is the package's one grid comparison. A label map, a ``.seg.nrrd`` or a DICOM series can
describe the volume's own voxels with another matrix:

- **flipped or permuted axes**: Slicer 5.8 and later reads a left-handed image with its K axis
  reversed (``ForceRightHandedIJKCoordinateSystem``) and saves segmentations on that grid;
  voxel ``k`` of the file is voxel ``K - 1 - k`` of the volume;
- **a sub-box**: Slicer's "crop to minimum extent" saves only the box around the segments,
  with the origin moved to the box's first voxel.

Both are the same voxels in space, so they are placed exactly (no interpolation). Anything else
(another spacing, a rotation, a shift by a fraction of a voxel, voxels outside the volume) is
refused with :class:`~isegformer.errors.InvalidInputError` naming what differs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import InvalidInputError
from . import geometry

#: Tolerances for "same lattice". Files saved by other writers (float32 headers, 17-digit
#: decimal text) differ in the last digits; anything above these is another grid.
SPACING_RTOL = 1e-4
DIRECTION_ATOL = 1e-4
ORIGIN_TOL_VOXELS = 1e-3  # a fraction of the smallest spacing

_AXIS_NAMES = "ijk"


@dataclass(frozen=True)
class GridPlacement:
    """Where each voxel of a source grid is on a reference grid.

    For reference axis ``r`` (0 = i, 1 = j, 2 = k): ``reference_index[r] = offset[r] +
    sign[r] * source_index[source_axis[r]]``.
    """

    source_axis: tuple[int, int, int]
    sign: tuple[int, int, int]
    offset: tuple[int, int, int]
    source_shape: tuple[int, int, int]  # (k, j, i)
    reference_shape: tuple[int, int, int]  # (k, j, i)

    @property
    def is_identity(self) -> bool:
        """The source is the reference grid itself (same axes, same origin, same size)."""
        return (self.source_axis == (0, 1, 2) and self.sign == (1, 1, 1) and self.offset == (0, 0, 0)
                and self.source_shape == self.reference_shape)

    def describe(self) -> str:
        """What differs from the reference grid, in words ("K axis reversed; a 10x80x110 sub-box")."""
        parts = []
        for r in range(3):
            if self.source_axis[r] != r:
                parts.append(f"its {_AXIS_NAMES[self.source_axis[r]].upper()} axis runs along the "
                             f"volume's {_AXIS_NAMES[r].upper()}")
            if self.sign[r] < 0:
                parts.append(f"the volume's {_AXIS_NAMES[r].upper()} axis reversed")
        source_ijk_size = tuple(reversed(self.source_shape))
        placed_size = tuple(source_ijk_size[self.source_axis[r]] for r in range(3))
        if placed_size != tuple(reversed(self.reference_shape)):
            parts.append(f"a sub-box of shape {self.source_shape} (k, j, i) of the volume's "
                         f"{self.reference_shape}")
        return "; ".join(parts) or "the same grid"

    def place(self, array: np.ndarray, fill=0) -> np.ndarray:
        """The source's (k, j, i) ``array`` on the reference grid; voxels it does not cover get ``fill``."""
        array = np.asarray(array)
        if tuple(array.shape) != self.source_shape:
            raise InvalidInputError(
                f"An array of shape {array.shape} does not fit a grid of shape {self.source_shape}."
            )
        if self.is_identity:
            return array
        source_ijk = np.transpose(array, (2, 1, 0))
        moved = np.transpose(source_ijk, self.source_axis)
        flips = tuple(r for r in range(3) if self.sign[r] < 0)
        if flips:
            moved = np.flip(moved, axis=flips)
        reference_ijk_shape = tuple(reversed(self.reference_shape))
        out = np.full(reference_ijk_shape, fill, dtype=array.dtype)
        region = []
        for r in range(3):
            count = moved.shape[r]
            first = self.offset[r] if self.sign[r] > 0 else self.offset[r] - count + 1
            region.append(slice(first, first + count))
        out[tuple(region)] = moved
        return np.ascontiguousarray(np.transpose(out, (2, 1, 0)))


def place_grid(
    source_ijk_to_ras: np.ndarray,
    source_shape: Sequence[int],
    reference_ijk_to_ras: np.ndarray,
    reference_shape: Sequence[int],
    what: str = "label map",
    *,
    allow_sub_box: bool = False,
) -> GridPlacement:
    """How a source grid (IJK-to-RAS matrix, (k, j, i) shape) lies on a reference grid.

    Raises InvalidInputError, naming the first difference, unless every source voxel is a
    reference voxel (same spacing and axes up to order and sign, an origin on a voxel centre,
    and no voxel outside the reference) and, unless ``allow_sub_box``, every reference voxel is
    a source voxel. Segmentations may be sub-boxes (Slicer's crop to minimum extent); a label
    map file that covers only part of the volume was made for another image.
    """
    source = geometry.check_matrix(source_ijk_to_ras)
    reference = geometry.check_matrix(reference_ijk_to_ras)
    source_shape = tuple(int(v) for v in source_shape)
    reference_shape = tuple(int(v) for v in reference_shape)
    src_spacing = np.linalg.norm(source[:3, :3], axis=0)
    ref_spacing = np.linalg.norm(reference[:3, :3], axis=0)
    src_dirs = source[:3, :3] / src_spacing
    ref_dirs = reference[:3, :3] / ref_spacing

    source_axis = [0, 0, 0]
    sign = [1, 1, 1]
    for r in range(3):
        dots = ref_dirs[:, r] @ src_dirs  # cosine with each source axis
        best = int(np.argmax(np.abs(dots)))
        axis_sign = 1 if dots[best] > 0 else -1
        if np.max(np.abs(ref_dirs[:, r] - axis_sign * src_dirs[:, best])) > DIRECTION_ATOL:
            raise InvalidInputError(
                f"The {what}'s axes (directions {_rounded(src_dirs.T)} in RAS) are rotated against "
                f"the volume's ({_rounded(ref_dirs.T)}): it is oriented differently. Resample it "
                "onto the volume (e.g. Slicer's 'Resample Image (BRAINS)' with the volume as "
                "reference) and try again."
            )
        source_axis[r] = best
        sign[r] = axis_sign
    if len(set(source_axis)) != 3:
        raise InvalidInputError(
            f"The {what}'s axes (directions {_rounded(src_dirs.T)}) do not match the volume's "
            f"({_rounded(ref_dirs.T)}) one to one: it is oriented differently. Resample it onto "
            "the volume."
        )
    matched_spacing = src_spacing[source_axis]
    if not np.allclose(matched_spacing, ref_spacing, rtol=SPACING_RTOL, atol=0.0):
        raise InvalidInputError(
            f"The {what}'s voxel spacing {_numbers(src_spacing, 6)} mm differs from the "
            f"volume's {_numbers(ref_spacing, 6)} mm: it belongs to another grid. Resample "
            "it onto the volume."
        )
    # The reference's continuous IJK of the source's first voxel: whole numbers on one lattice.
    start = geometry.invert(reference)[:3, :] @ np.append(source[:3, 3], 1.0)
    offset = np.rint(start)
    off_mm = float(np.max(np.abs(start - offset) * ref_spacing))
    if off_mm > ORIGIN_TOL_VOXELS * float(ref_spacing.min()):
        raise InvalidInputError(
            f"The {what}'s origin (RAS {_numbers(source[:3, 3], 4)}) is not on a voxel "
            f"centre of the volume (origin RAS {_numbers(reference[:3, 3], 4)}): it is "
            f"shifted by {off_mm:.4g} mm, a fraction of a voxel. Resample it onto the volume."
        )
    source_ijk_size = tuple(reversed(source_shape))
    reference_ijk_size = tuple(reversed(reference_shape))
    outside = []
    for r in range(3):
        count = source_ijk_size[source_axis[r]]
        ends = sorted((int(offset[r]), int(offset[r]) + sign[r] * (count - 1)))
        if ends[0] < 0 or ends[1] > reference_ijk_size[r] - 1:
            outside.append(f"{_AXIS_NAMES[r]} {ends[0]}..{ends[1]} (the volume has 0.."
                           f"{reference_ijk_size[r] - 1})")
    if outside:
        raise InvalidInputError(
            f"The {what} (shape {source_shape} (k, j, i)) covers voxels outside the volume "
            f"(shape {reference_shape}): on the volume's grid it spans {', '.join(outside)}. "
            "It was drawn on another image, or its origin is shifted; resample it onto the volume."
        )
    covered = tuple(source_ijk_size[source_axis[r]] for r in range(3))
    if not allow_sub_box and covered != reference_ijk_size:
        raise InvalidInputError(
            f"The {what} (shape {source_shape} (k, j, i)) covers only part of the volume (shape "
            f"{reference_shape}): it was drawn on another grid. Resample it onto the volume (e.g. "
            "Slicer's 'Resample Image (BRAINS)' with the volume as reference) and try again."
        )
    return GridPlacement(
        source_axis=tuple(source_axis),  # type: ignore[arg-type]
        sign=tuple(sign),  # type: ignore[arg-type]
        offset=tuple(int(v) for v in offset),  # type: ignore[arg-type]
        source_shape=source_shape,  # type: ignore[arg-type]
        reference_shape=reference_shape,  # type: ignore[arg-type]
    )


def _numbers(values: np.ndarray, digits: int) -> tuple[float, ...]:
    return tuple(round(float(v), digits) for v in values)


def _rounded(matrix: np.ndarray) -> list:
    return np.round(matrix, 4).tolist()
