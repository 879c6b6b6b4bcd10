"""Which volume axis a slice view looks along.

A slice view (Slicer's Red, Yellow, Green) shows a plane whose normal is the third column of its
SliceToRAS matrix. A click in that view belongs to one 2D slice of the volume only if the normal
is parallel to one of the volume's IJK axes (after the volume's parent transforms). The model
works on array slices, so the answer is given as the array axis of a ``(k, j, i)`` array:
0 for k, 1 for j, 2 for i. The sign says whether the view normal points along +axis or -axis.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidInputError

#: Default largest angle between the view normal and a volume axis that still counts as aligned.
#: Slicer's "Rotate to volume plane" gives angles of ~1e-6 degrees; a user-rotated view gives more.
DEFAULT_TOLERANCE_DEGREES = 1.0

#: IJK column (0=i, 1=j, 2=k) -> array axis of a (k, j, i) array.
_ARRAY_AXIS_OF_IJK_COLUMN = (2, 1, 0)
_AXIS_NAMES = ("k", "j", "i")


class ObliqueViewError(InvalidInputError):
    """The slice view is not aligned with any axis of the volume, so a click there has no slice."""


@dataclass(frozen=True)
class ViewAxis:
    """The array axis (0=k, 1=j, 2=i) a view looks along, and the direction of its normal."""

    axis: int
    sign: int
    angle_degrees: float

    @property
    def name(self) -> str:
        return _AXIS_NAMES[self.axis]


def _matrix(value: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != (4, 4) or not np.all(np.isfinite(arr)):
        raise InvalidInputError(f"{what} must be a finite 4x4 matrix, got shape {arr.shape}.")
    return arr


def view_normal(slice_to_ras: np.ndarray) -> np.ndarray:
    """The unit normal (RAS) of a slice view, from its 4x4 SliceToRAS matrix."""
    matrix = _matrix(slice_to_ras, "SliceToRAS")
    normal = matrix[:3, 2]
    length = float(np.linalg.norm(normal))
    if length < 1e-12:
        raise InvalidInputError("The slice view's SliceToRAS matrix has a zero normal column.")
    return normal / length


def axis_for_view(
    slice_to_ras: np.ndarray,
    ijk_to_world: np.ndarray,
    tolerance_degrees: float = DEFAULT_TOLERANCE_DEGREES,
    view_name: str = "slice",
) -> ViewAxis:
    """The volume axis a slice view looks along.

    ``ijk_to_world`` is the volume's IJK-to-RAS matrix with its parent transforms already applied
    (see :func:`isegformer.slicer_support.transforms.ijk_to_world`). Raises
    :class:`ObliqueViewError` when the view normal is more than ``tolerance_degrees`` away from
    every volume axis.
    """
    normal = view_normal(slice_to_ras)
    matrix = _matrix(ijk_to_world, "IJK-to-world")
    columns = matrix[:3, :3]
    lengths = np.linalg.norm(columns, axis=0)
    if np.any(lengths < 1e-12):
        raise InvalidInputError(
            "The volume's IJK-to-RAS matrix has a zero column: the volume has no valid geometry."
        )
    directions = columns / lengths
    cosines = directions.T @ normal  # one per IJK column
    column = int(np.argmax(np.abs(cosines)))
    cosine = float(np.clip(abs(cosines[column]), 0.0, 1.0))
    angle = math.degrees(math.acos(cosine))
    if angle > tolerance_degrees:
        raise ObliqueViewError(
            f"The {view_name} view is oblique to the volume (the nearest volume axis is "
            f"{angle:.1f} degrees away; at most {tolerance_degrees:g} is accepted), so a click there "
            "does not lie in one slice. Align the view with the volume: in the view's controller "
            "(pin icon, then the double arrow) choose 'Rotate to volume plane', or pick Axial, "
            "Sagittal or Coronal if the volume is not tilted; then click again."
        )
    sign = 1 if cosines[column] > 0 else -1
    return ViewAxis(axis=_ARRAY_AXIS_OF_IJK_COLUMN[column], sign=sign, angle_degrees=angle)
