"""Label values: the one check every label map read by the package goes through.

A label map is whole numbers, 0 for background. Files hold them as any integer type (uint8 to
int64) or as floats (BraTS stores whole numbers as float32). Casting such an array to a
narrower type wraps silently: int64 ``2**32 + 1`` becomes int32 ``1``, and a background voxel
or another segment takes the label. So the values are checked here, before any cast, and a
value that does not fit is refused with the file's name.
"""
from __future__ import annotations

import numpy as np

from ..errors import InvalidInputError

#: The largest label value the package accepts: the largest a signed 32-bit integer holds
#: (Slicer keeps segment label values as ``int``).
MAX_LABEL_VALUE = 2**31 - 1


def as_label_array(array: np.ndarray, what: str = "The label map") -> np.ndarray:
    """``array`` as integer labels in 0..MAX_LABEL_VALUE, refusing anything else.

    Integer arrays keep their values (cast to int32 when wider, which cannot wrap once
    checked); bool becomes uint8; floats must hold whole finite numbers and become int32.
    """
    array = np.asarray(array)
    if array.dtype == np.bool_:
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        _check_range(array, what)
        if array.dtype.itemsize > 4 or array.dtype == np.uint32:
            return array.astype(np.int32)
        return array
    if not np.issubdtype(array.dtype, np.floating):
        raise InvalidInputError(
            f"{what} holds {array.dtype} values; a label map holds whole numbers 0, 1, 2, ..."
        )
    if array.size and not np.all(np.isfinite(array)):
        raise InvalidInputError(f"{what} holds NaN or infinite values; a label map holds whole numbers.")
    rounded = np.rint(array)
    if not np.array_equal(rounded, array):
        bad = float(array.flat[int(np.argmax(np.abs(array - rounded)))])
        raise InvalidInputError(
            f"{what} holds fractional values (e.g. {bad:g}): it looks like an image, not a label "
            "map. Give the segmentation (label map) file."
        )
    _check_range(rounded, what)
    return rounded.astype(np.int32)


def _check_range(array: np.ndarray, what: str) -> None:
    if not array.size:
        return
    low, high = array.min(), array.max()
    # Compare as Python ints: no numpy cast (uint64 vs int64) can wrap the comparison itself.
    if int(low) < 0 or int(high) > MAX_LABEL_VALUE:
        raise InvalidInputError(
            f"{what} holds label values {int(low)}..{int(high)}; label values must lie in "
            f"0..{MAX_LABEL_VALUE} (0 is background). Relabel it (e.g. in Slicer's Segment Editor) "
            "and save it again."
        )
