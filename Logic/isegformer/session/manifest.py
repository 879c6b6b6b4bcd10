"""The one schema check of a session file's manifest, done before any array is read.

A ``.isegsession`` can come from anywhere (a colleague, a mail, a tampered copy). Its manifest
says what every array entry is; this module checks every field of it (type, range, uniqueness)
and works out the exact shape and dtype each array entry must have, from the volume's shape.
:mod:`isegformer.session.storage` then reads an entry only when its ``.npy`` header matches,
so a hostile manifest can neither allocate memory it did not declare nor load into a session
that fails later (a slice index outside the volume, a mask of the wrong shape, complex voxels).
Every problem is a :class:`~isegformer.errors.SessionFileError` naming the field.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..errors import SessionFileError
from ..segments.segment import MASK_DIGEST_LENGTH, PropagationRecord, is_mask_digest
from ..volume import slicing

FORMAT_NAME = "isegformer-session"
FORMAT_VERSION = 1

#: Voxel types a session volume may have (what the readers produce); never complex, object or bool.
VOXEL_DTYPES = frozenset(np.dtype(t).str for t in (
    np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.uint64, np.int64,
    np.float32, np.float64))
#: Far beyond any scan (a 2048^3 volume is 8.6e9 voxels) and still an exact float.
MAX_VOXELS = 2 ** 34
MAX_SEGMENTS = 255
MAX_CLICKS_PER_SLICE = 10_000
MAX_NAME_LENGTH = 1_000
#: Orders count the annotations of a session; the JSON writer keeps them exact below 2**53.
MAX_ORDER = 2 ** 53
_ARRAY_KEY = re.compile(r"^[A-Za-z0-9_]{1,64}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class ArraySpec:
    """An array entry the manifest refers to, and the shape and dtype it must have."""

    key: str
    shape: tuple[int, ...]
    dtype: np.dtype


@dataclass(frozen=True)
class AnnotationEntry:
    axis: int
    index: int
    order: int
    packed: ArraySpec
    mask_shape: tuple[int, int]
    clicks: tuple[tuple[float, float, bool], ...]


@dataclass(frozen=True)
class SegmentEntry:
    name: str
    color: tuple[float, float, float]
    label_value: int
    annotations: tuple[AnnotationEntry, ...]
    propagated: Optional[ArraySpec]
    propagation_axis: Optional[int]
    #: what ``propagated`` was computed from; None when the file has none (files written
    #: before records existed load as before: the next propagation recomputes everything)
    propagation_record: Optional[PropagationRecord] = None


@dataclass(frozen=True)
class VolumeEntry:
    shape: tuple[int, int, int]
    dtype: np.dtype
    ijk_to_ras: np.ndarray
    sha256: str
    source: Optional[str]
    included: bool

    @property
    def array(self) -> ArraySpec:
        return ArraySpec("volume", self.shape, self.dtype)


@dataclass(frozen=True)
class Manifest:
    """A checked manifest: every value has its type and range, every array its exact spec."""

    version: int
    isegformer_version: str
    volume: VolumeEntry
    default_axis: int
    window: Optional[tuple[float, float]]
    segments: tuple[SegmentEntry, ...]
    current_segment: Optional[str]
    order: int

    def array_specs(self) -> list[ArraySpec]:
        """Every array entry to read (the volume only when it is in the file)."""
        specs = [self.volume.array] if self.volume.included else []
        for segment in self.segments:
            specs += [a.packed for a in segment.annotations]
            if segment.propagated is not None:
                specs.append(segment.propagated)
        return specs


def packed_length(count: int) -> int:
    """Bytes of ``count`` bits packed by ``np.packbits``."""
    return (int(count) + 7) // 8


class _Checker:
    """Field-by-field checks that name where in the manifest a problem is."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, where: str, message: str) -> None:
        raise SessionFileError(
            f"{self.path} is damaged or was not written by isegformer: {where} {message}. "
            "Open a session file saved by Session.save, or ask for a fresh copy."
        )

    def mapping(self, value: Any, where: str) -> dict:
        if not isinstance(value, dict):
            self.fail(where, f"must be an object, got {_kind(value)}")
        return value

    def array(self, value: Any, where: str, *, max_items: int) -> list:
        if not isinstance(value, list):
            self.fail(where, f"must be a list, got {_kind(value)}")
        if len(value) > max_items:
            self.fail(where, f"has {len(value)} items, more than the {max_items} allowed")
        return value

    def integer(self, value: Any, where: str, low: int, high: int) -> int:
        # bool is an int in Python, and 2.0 a float in JSON: neither is what the writer wrote.
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(where, f"must be a whole number, got {_kind(value)}")
        if not low <= value <= high:
            self.fail(where, f"must be in {low}..{high}, got {_short(value)}")
        return value

    def number(self, value: Any, where: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(where, f"must be a number, got {_kind(value)}")
        number = float(value) if abs(value) < 1e300 else math.inf
        if not math.isfinite(number):
            self.fail(where, f"must be a finite number, got {_short(value)}")
        return number

    def text(self, value: Any, where: str, *, optional: bool = False) -> Optional[str]:
        if value is None and optional:
            return None
        if not isinstance(value, str):
            self.fail(where, f"must be text, got {_kind(value)}")
        if len(value) > MAX_NAME_LENGTH or "\x00" in value:
            self.fail(where, "is too long or holds a NUL character")
        return value

    def boolean(self, value: Any, where: str) -> bool:
        if not isinstance(value, bool):
            self.fail(where, f"must be true or false, got {_kind(value)}")
        return value

    def key(self, value: Any, where: str) -> str:
        if not isinstance(value, str) or not _ARRAY_KEY.match(value) or value == "manifest":
            self.fail(where, f"must name an array entry (letters, digits, _), got {_short(value)}")
        return value


def check_manifest(document: Any, path: Path) -> Manifest:
    """Check a decoded manifest (from ``loads_bounded``) completely; return it typed.

    Raises SessionFileError for the first problem found (a newer format version included).
    """
    from .. import __version__

    check = _Checker(path)
    if not isinstance(document, dict) or document.get("format") != FORMAT_NAME:
        raise SessionFileError(f"{path} is not an isegformer session file.")
    version = document.get("version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise SessionFileError(f"{path}: the session format version is missing.")
    if version > FORMAT_VERSION:
        raise SessionFileError(
            f"{path} was saved by a newer isegformer (session format {_short(version)}, isegformer "
            f"{_short(document.get('isegformer_version', '?'))}); this is isegformer {__version__}, which "
            f"reads format {FORMAT_VERSION} and older. Update isegformer to open it."
        )
    check.integer(version, "version", 1, FORMAT_VERSION)
    written_by = document.get("isegformer_version", "?")
    written_by = check.text(written_by, "isegformer_version") if written_by != "?" else "?"

    volume = _volume(check, check.mapping(document.get("volume"), "volume"))
    default_axis = check.integer(document.get("default_axis", 0), "default_axis", 0, 2)
    window = document.get("window")
    if window is not None:
        pair = check.array(window, "window", max_items=2)
        if len(pair) != 2:
            check.fail("window", "must be [low, high]")
        low, high = (check.number(v, f"window[{n}]") for n, v in enumerate(pair))
        if not low < high:
            check.fail("window", f"must have low < high, got [{low:g}, {high:g}]")
        window = (low, high)

    raw_segments = check.array(document.get("segments"), "segments", max_items=MAX_SEGMENTS)
    segments = tuple(_segment(check, raw, n, volume.shape) for n, raw in enumerate(raw_segments))
    for field, values in (("name", [s.name for s in segments]), ("label_value", [s.label_value for s in segments])):
        if len(set(values)) != len(values):
            check.fail(f"segments[].{field}", "must differ from segment to segment")
    orders = [a.order for s in segments for a in s.annotations]
    if len(set(orders)) != len(orders):
        check.fail("segments[].annotations[].order", "must differ from annotation to annotation")
    order = check.integer(document.get("order", 0), "order", 0, MAX_ORDER)
    if orders and order < max(orders):
        check.fail("order", f"must be at least the largest annotation order ({max(orders)}), got {order}")
    keys = [spec.key for s in segments for spec in
            [a.packed for a in s.annotations] + ([s.propagated] if s.propagated else [])]
    if len(set(keys)) != len(keys) or "volume" in keys or "ijk_to_ras" in keys:
        check.fail("segments[]", "name one array entry twice")
    current = check.text(document.get("current_segment"), "current_segment", optional=True)
    if current is not None and current not in {s.name for s in segments}:
        check.fail("current_segment", f"names no segment of the file ({_short(current)})")
    return Manifest(version, written_by, volume, default_axis, window, segments, current, order)


def _volume(check: _Checker, raw: dict) -> VolumeEntry:
    shape_list = check.array(raw.get("shape"), "volume.shape", max_items=3)
    if len(shape_list) != 3:
        check.fail("volume.shape", "must be three sizes (k, j, i)")
    shape = tuple(check.integer(v, f"volume.shape[{n}]", 1, MAX_VOXELS) for n, v in enumerate(shape_list))
    if math.prod(shape) > MAX_VOXELS:
        check.fail("volume.shape", f"has {math.prod(shape)} voxels, more than the {MAX_VOXELS} allowed")
    dtype_text = raw.get("dtype")
    if not isinstance(dtype_text, str) or dtype_text not in VOXEL_DTYPES:
        check.fail("volume.dtype", f"must be one of {', '.join(sorted(VOXEL_DTYPES))}, got {_short(dtype_text)}")
    rows = check.array(raw.get("ijk_to_ras"), "volume.ijk_to_ras", max_items=4)
    if len(rows) != 4:
        check.fail("volume.ijk_to_ras", "must be a 4x4 matrix")
    matrix = np.array([[check.number(v, f"volume.ijk_to_ras[{r}][{c}]")
                        for c, v in enumerate(check.array(row, f"volume.ijk_to_ras[{r}]", max_items=4))]
                       for r, row in enumerate(rows)], dtype=object)
    if matrix.shape != (4, 4):
        check.fail("volume.ijk_to_ras", "must be a 4x4 matrix")
    matrix = matrix.astype(np.float64)
    if not np.allclose(matrix[3], [0, 0, 0, 1]) or abs(np.linalg.det(matrix[:3, :3])) < 1e-12:
        check.fail("volume.ijk_to_ras", "must be an invertible affine matrix (last row 0 0 0 1)")
    sha = raw.get("sha256")
    if not isinstance(sha, str) or not _SHA256.match(sha):
        check.fail("volume.sha256", "must be 64 lower-case hex digits")
    source = check.text(raw.get("source"), "volume.source", optional=True)
    included = check.boolean(raw.get("included", False), "volume.included")
    return VolumeEntry(shape, np.dtype(dtype_text), matrix, sha, source, included)  # type: ignore[arg-type]


def _segment(check: _Checker, raw: Any, n: int, shape: tuple[int, int, int]) -> SegmentEntry:
    where = f"segments[{n}]"
    raw = check.mapping(raw, where)
    name = check.text(raw.get("name"), f"{where}.name")
    if not name.strip():
        check.fail(f"{where}.name", "must not be empty")
    color_list = check.array(raw.get("color"), f"{where}.color", max_items=3)
    if len(color_list) != 3:
        check.fail(f"{where}.color", "must be three numbers (R, G, B)")
    color = tuple(check.number(v, f"{where}.color[{c}]") for c, v in enumerate(color_list))
    if not all(0.0 <= c <= 1.0 for c in color):
        check.fail(f"{where}.color", "must lie in [0, 1]")
    label_value = check.integer(raw.get("label_value"), f"{where}.label_value", 1, 255)

    annotations = []
    seen = set()
    raw_annotations = check.array(raw.get("annotations"), f"{where}.annotations", max_items=sum(shape))
    for m, item in enumerate(raw_annotations):
        at = f"{where}.annotations[{m}]"
        item = check.mapping(item, at)
        axis = check.integer(item.get("axis"), f"{at}.axis", 0, 2)
        index = check.integer(item.get("index"), f"{at}.index", 0, shape[axis] - 1)
        if (axis, index) in seen:
            check.fail(at, f"annotates slice {index} of axis {axis} a second time")
        seen.add((axis, index))
        order = check.integer(item.get("order"), f"{at}.order", 0, MAX_ORDER)
        mask_shape = slicing.slice_shape(shape, axis)
        declared = check.array(item.get("shape"), f"{at}.shape", max_items=2)
        if [v for v in declared] != list(mask_shape) or any(isinstance(v, bool) for v in declared):
            check.fail(f"{at}.shape", f"must be the slice shape {list(mask_shape)} of axis {axis}, "
                                      f"got {_short(declared)}")
        key = check.key(item.get("array"), f"{at}.array")
        rows, cols = mask_shape
        clicks = []
        for c, click in enumerate(check.array(item.get("clicks"), f"{at}.clicks", max_items=MAX_CLICKS_PER_SLICE)):
            triple = check.array(click, f"{at}.clicks[{c}]", max_items=3)
            if len(triple) != 3:
                check.fail(f"{at}.clicks[{c}]", "must be [row, col, positive]")
            row = check.number(triple[0], f"{at}.clicks[{c}] row")
            col = check.number(triple[1], f"{at}.clicks[{c}] col")
            if not (0.0 <= row <= rows - 1 and 0.0 <= col <= cols - 1):
                check.fail(f"{at}.clicks[{c}]", f"lies outside the {rows} x {cols} slice")
            clicks.append((row, col, check.boolean(triple[2], f"{at}.clicks[{c}] positive")))
        packed = ArraySpec(key, (packed_length(rows * cols),), np.dtype(np.uint8))
        annotations.append(AnnotationEntry(axis, index, order, packed, mask_shape, tuple(clicks)))

    propagated_key = raw.get("propagated")
    propagation_axis = raw.get("propagation_axis")
    propagated = None
    if propagated_key is not None:
        propagated = ArraySpec(check.key(propagated_key, f"{where}.propagated"),
                               (packed_length(math.prod(shape)),), np.dtype(np.uint8))
        propagation_axis = check.integer(propagation_axis, f"{where}.propagation_axis", 0, 2)
    elif propagation_axis is not None:
        check.fail(f"{where}.propagation_axis", "is set without a propagated result")
    record = _propagation_record(check, raw.get("propagation_record"), f"{where}.propagation_record",
                                 propagation_axis, shape)
    return SegmentEntry(name, color, label_value, tuple(annotations), propagated, propagation_axis,  # type: ignore[arg-type]
                        record)


def _propagation_record(check: _Checker, raw: Any, where: str, propagation_axis: Optional[int],
                        shape: tuple[int, int, int]) -> Optional[PropagationRecord]:
    """``{"axis": a, "method": "stcn", "annotations": [[index, digest], ...], "overlaid": [index, ...],
    "networks": digest}`` (``overlaid`` and ``networks`` optional) or absent/null."""
    if raw is None:
        return None
    raw = check.mapping(raw, where)
    if propagation_axis is None:
        check.fail(where, "is set without a propagated result")
    axis = check.integer(raw.get("axis"), f"{where}.axis", 0, 2)
    if axis != propagation_axis:
        check.fail(f"{where}.axis", f"must be the propagation axis {propagation_axis}, got {axis}")
    method = check.text(raw.get("method"), f"{where}.method")
    if not method.strip():
        check.fail(f"{where}.method", "must not be empty")
    digests = []
    for n, pair in enumerate(check.array(raw.get("annotations"), f"{where}.annotations", max_items=shape[axis])):
        at = f"{where}.annotations[{n}]"
        pair = check.array(pair, at, max_items=2)
        if len(pair) != 2:
            check.fail(at, "must be [slice index, mask digest]")
        index = check.integer(pair[0], f"{at} index", 0, shape[axis] - 1)
        if not is_mask_digest(pair[1]):
            check.fail(f"{at} digest", f"must be {MASK_DIGEST_LENGTH} lower-case hex digits, got {_short(pair[1])}")
        digests.append((index, pair[1]))
    if len({index for index, _ in digests}) != len(digests):
        check.fail(f"{where}.annotations", "name one slice twice")
    overlaid = [check.integer(index, f"{where}.overlaid[{n}]", 0, shape[axis] - 1)
                for n, index in enumerate(check.array(raw.get("overlaid", []), f"{where}.overlaid",
                                                      max_items=shape[axis]))]
    if len(set(overlaid)) != len(overlaid) or set(overlaid) & {index for index, _ in digests}:
        check.fail(f"{where}.overlaid", "must name each slice once, and none of the record's annotations")
    networks = raw.get("networks", "")
    if networks != "" and not is_mask_digest(networks):
        check.fail(f"{where}.networks", f"must be {MASK_DIGEST_LENGTH} lower-case hex digits, got {_short(networks)}")
    return PropagationRecord(axis, method, tuple(sorted(digests)), tuple(sorted(overlaid)), networks)


def _kind(value: Any) -> str:
    return {bool: "true/false", int: "a whole number", float: "a number", str: "text", list: "a list",
            dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
