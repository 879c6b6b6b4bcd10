"""Checks of the public API's arguments: one InvalidInputError per bad value, saying what is expected.

Python converts too eagerly for an API that edits a patient's segmentation: ``bool("no")`` is
True, ``tuple("red")`` is three letters, ``True`` is slice 1 and ``0.7`` in a mask is "inside".
Every public method of :class:`~isegformer.session.Session`, and the click engine, the
propagators and the click files, check their arguments here, before anything changes, so a
wrong type is never silently taken for something else.
"""
from __future__ import annotations

import logging
import math
import numbers
import os
import re
from typing import Any, Optional, Sequence

import numpy as np

from .errors import InvalidInputError

log = logging.getLogger(__name__)

_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d{1,3})?)$", re.IGNORECASE)

#: Voxel kinds a volume may have: real numbers (what SimpleITK's scalar readers produce). The
#: exact types are the ones a session file stores (:data:`.manifest.VOXEL_DTYPES`).
_VOXEL_KINDS = ("u", "i", "f")


def _is_integer(value: Any) -> bool:
    return isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_real(value: Any) -> bool:
    return isinstance(value, (numbers.Real, np.floating, np.integer)) and not isinstance(value, (bool, np.bool_))


def _shown(value: Any) -> str:
    """``value`` as a message shows it: a numpy scalar as the number it holds (numpy 2's repr
    is ``np.float64(nan)``)."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def integer(value: Any, what: str, low: Optional[int] = None, high: Optional[int] = None) -> int:
    """A whole number (not a bool, not a float, not text) in ``low..high``."""
    if not _is_integer(value):
        raise InvalidInputError(f"{what} is a whole number, got {_shown(value)} ({type(value).__name__}).")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        span = f"{low if low is not None else '...'}..{high if high is not None else '...'}"
        raise InvalidInputError(f"{what} must be in {span}, got {value}.")
    return value


def axis(value: Any) -> int:
    """0 (k), 1 (j) or 2 (i)."""
    if not _is_integer(value) or int(value) not in (0, 1, 2):
        raise InvalidInputError(f"An axis is 0 (k), 1 (j) or 2 (i), got {_shown(value)}.")
    return int(value)


def index(shape: Sequence[int], along: int, value: Any) -> int:
    """A slice index along ``along`` of a (k, j, i) volume of ``shape``."""
    count = int(shape[along])
    if not _is_integer(value):
        raise InvalidInputError(
            f"A slice index along axis {along} is a whole number in 0..{count - 1}, got {_shown(value)}."
        )
    if not 0 <= int(value) < count:
        raise InvalidInputError(
            f"Slice index {int(value)} is outside the volume: a slice index along axis {along} is in "
            f"0..{count - 1}."
        )
    return int(value)


def indices(shape: Sequence[int], along: int, values: Any) -> list[int]:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise InvalidInputError(f"Slice indices are a list of whole numbers, got {values!r}.")
    return [index(shape, along, v) for v in values]


def boolean(value: Any, what: str) -> bool:
    """True or False only: ``bool("no")`` would be True."""
    if not isinstance(value, (bool, np.bool_)):
        raise InvalidInputError(f"{what} is True or False, got {value!r}.")
    return bool(value)


def real(value: Any, what: str) -> float:
    if not _is_real(value) or not math.isfinite(float(value)):
        raise InvalidInputError(f"{what} is a finite number, got {_shown(value)}.")
    return float(value)


def window(value: Any) -> Optional[tuple[float, float]]:
    """None, or (low, high) finite numbers with low < high."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise InvalidInputError(f"A window is (low, high): two numbers, got {value!r}.")
    low, high = value
    if not (_is_real(low) and _is_real(high)):
        raise InvalidInputError(f"A window is (low, high): two numbers, got {value!r}.")
    low, high = float(low), float(high)
    if not (math.isfinite(low) and math.isfinite(high) and high > low):
        raise InvalidInputError(f"A window is (low, high) finite numbers with low < high, got ({low:g}, {high:g}).")
    return low, high


def color(value: Any) -> tuple[float, float, float]:
    """(r, g, b), each a number in [0, 1]."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 3 \
            or not all(_is_real(c) and 0.0 <= float(c) <= 1.0 for c in value):
        raise InvalidInputError(
            f"A colour is (red, green, blue), three numbers in [0, 1] (e.g. (1.0, 0.5, 0.0)), got {value!r}."
        )
    return tuple(float(c) for c in value)  # type: ignore[return-value]


def label_value(value: Any) -> int:
    return integer(value, "A label value", 1, 255)


def name(value: Any, what: str = "A segment name") -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInputError(f"{what} is non-empty text, got {value!r}.")
    if len(value) > 1000 or "\x00" in value:
        raise InvalidInputError(f"{what} must be under 1000 characters, without NUL characters.")
    # A name is one header line of the .seg.nrrd: CR, \x1c-\x1e, NEL or U+2028 would end that
    # line for Slicer's reader or for a splitlines() reader. A tab is harmless and kept.
    bad = sorted({c for c in value if c != "\t" and (c < " " or "\x7f" <= c <= "\x9f" or c in "\u2028\u2029")})
    if bad:
        raise InvalidInputError(
            f"{what} {value!r} holds control or line-break characters "
            f"({', '.join(f'U+{ord(c):04X}' for c in bad)}), which a .seg.nrrd header cannot hold. "
            "Use a name of printable characters on one line."
        )
    return value


def path(value: Any, what: str = "A file path") -> os.PathLike | str:
    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value) or "\x00" in os.fspath(value):
        raise InvalidInputError(f"{what} is a file name (text or a pathlib.Path), got {value!r}.")
    return value


def optional_callable(value: Any, what: str) -> Any:
    if value is not None and not callable(value):
        raise InvalidInputError(f"{what} is a function (or None), got {value!r}.")
    return value


def device(value: Any) -> Any:
    """'auto', 'cpu', 'cuda', 'cuda:N' (or 'mps'), or a torch.device; resolved when first used."""
    if type(value).__module__ == "torch" and type(value).__name__ == "device":
        return value
    if not isinstance(value, str) or not _DEVICE.match(value.strip()):
        raise InvalidInputError(f"A device is 'auto', 'cpu', 'cuda' or 'cuda:N', got {value!r}.")
    return value.strip().lower()


def slice_mask(value: Any, expected: tuple[int, int], where: str) -> np.ndarray:
    """A (rows, cols) mask: bool, or numbers that are all 0 or 1 (a 0.7 is not "inside")."""
    try:
        mask = np.asarray(value)
    except Exception:  # noqa: BLE001 - whatever the object does, it is not a mask
        mask = np.empty(0, dtype=object)
    if mask.dtype != np.bool_:
        if mask.dtype.kind not in "uif":
            raise InvalidInputError(f"A mask holds True/False (or 0/1), got dtype {mask.dtype} {where}.")
        if mask.size and not np.isin(mask, (0, 1)).all():
            raise InvalidInputError(
                f"A mask holds only 0 and 1 (or True/False) {where}; threshold it first (e.g. mask > 0.5)."
            )
    if mask.shape != tuple(expected):
        raise InvalidInputError(f"The mask {where} must have shape {tuple(expected)} (rows, cols); it has {mask.shape}.")
    return mask.astype(bool)


def voxels(array: Any) -> np.ndarray:
    """A volume's voxel array: real numbers, finite (complex, bool, text and objects refused),
    of one of the types a session file stores (:data:`.manifest.VOXEL_DTYPES`).

    What a session accepts is exactly what its file loads back: another byte order (pynrrd
    reads a big-endian NRRD as ``>i2``) is converted to the machine's, and a type the file does
    not store is converted to the smallest stored one that holds every value exactly (float16
    to float32), else refused. A converted array is a copy: the caller's array is never changed.
    """
    try:
        array = np.asarray(array)
    except Exception:  # noqa: BLE001
        raise InvalidInputError("The volume is not an array of numbers.") from None
    if array.dtype.kind not in _VOXEL_KINDS:
        raise InvalidInputError(
            f"Volume voxels are real numbers (integers or floats), got dtype {array.dtype}. Convert "
            "the image to a scalar gray-value volume first."
        )
    array = _stored_voxel_type(array)
    if array.dtype.kind == "f" and array.size and not np.isfinite(array).all():
        raise InvalidInputError("The volume holds NaN or infinite voxels; replace them (e.g. with the background value).")
    return array


def _stored_voxel_type(array: np.ndarray) -> np.ndarray:
    from .session.manifest import VOXEL_DTYPES

    if array.dtype.str in VOXEL_DTYPES:
        return array
    stored = sorted((np.dtype(t) for t in VOXEL_DTYPES), key=lambda t: (t.itemsize, t.str))
    native = array.dtype.newbyteorder("=")
    if native.str in VOXEL_DTYPES:
        target: Optional[np.dtype] = native
    else:  # the smallest that holds every value: float16 becomes float32, not float64
        target = next((t for t in stored if np.can_cast(array.dtype, t, casting="safe")), None)
    if target is None:
        names = ", ".join(sorted({t.name for t in stored}))
        raise InvalidInputError(
            f"Volume voxels of type {array.dtype} ({array.dtype.str}) cannot be kept exactly: a session "
            f"stores {names}. Convert the array first, e.g. array.astype(numpy.float64)."
        )
    log.info("The volume's voxels are converted from %s to %s, the type a session file stores.",
             array.dtype.str, target.str)
    return array.astype(target)


def options(given: dict, allowed: Sequence[str], what: str) -> None:
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise InvalidInputError(f"{what} has no option {', '.join(map(repr, unknown))}; options: {', '.join(allowed)}.")


def paths(value: Any, what: str) -> list:
    """One path, or an iterable of paths."""
    if isinstance(value, (str, os.PathLike)):
        return [path(value, what)]
    if not hasattr(value, "__iter__") or isinstance(value, bytes):
        raise InvalidInputError(f"{what} is a file name or a list of file names, got {value!r}.")
    return [path(item, what) for item in value]


def label_names(value: Any) -> dict[int, str]:
    """None, or {label value: segment name}."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInputError(f"names maps label values to segment names ({{1: 'femur'}}), got {value!r}.")
    return {label_value(k): name(v) for k, v in value.items()}


def matrix(value: Any) -> np.ndarray:
    """A finite, invertible 4x4 IJK-to-RAS matrix."""
    from .volume import geometry

    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidInputError(f"ijk_to_ras is a 4x4 matrix of numbers, got {value!r}.") from None
    return geometry.check_matrix(array)
