"""One segment's state: its annotated slices (per axis) and its propagated result.

An *annotated* slice is one the user clicked or drew; it holds the user's mask and the clicks
that made it. The *propagated* result is a whole-volume mask that the last propagation gave.
The segment's mask is the propagated result with every annotated slice written over it, so an
annotated slice is never overwritten by propagation.

With the propagated result the segment keeps a :class:`PropagationRecord`: the axis, the method
and a digest of each annotated slice the result was computed from. A propagation that has no
live propagator any more (a loaded session, a resumed scene) compares the record with the
annotations of now and recomputes only around the ones that are new or changed.
"""
from __future__ import annotations

import hashlib
import numbers
from dataclasses import dataclass, field
from typing import Iterator, Mapping, Optional

import numpy as np

from ..errors import InvalidInputError
from ..volume.slicing import check_axis, insert_slice

#: Distinct default colours (RGB in [0, 1]) for segments created without one.
DEFAULT_COLORS: tuple[tuple[float, float, float], ...] = (
    (0.902, 0.294, 0.208),  # red
    (0.302, 0.686, 0.290),  # green
    (0.216, 0.494, 0.722),  # blue
    (1.000, 0.800, 0.000),  # yellow
    (0.596, 0.306, 0.639),  # purple
    (1.000, 0.498, 0.000),  # orange
    (0.000, 0.749, 0.769),  # cyan
    (0.969, 0.506, 0.749),  # pink
    (0.651, 0.337, 0.157),  # brown
    (0.600, 0.600, 0.600),  # grey
)


@dataclass(frozen=True)
class SliceClick:
    """A click in a slice: continuous (row, col) = (y, x), voxel centres at integers."""

    row: float
    col: float
    positive: bool = True


class SliceAnnotation:
    """The user's mask of one slice and the clicks that produced it (none if it was drawn).

    ``order`` increases with every annotation of the session; where annotated slices of two
    axes cross, the later one wins.

    The mask is kept as the bit-packed crop to its bounding box: a label map with many labels
    annotates every segment on every slice where any label is, and most of those masks are
    empty or small, so storing each as a full bool slice held tens of times the label map's
    size (for the session and again for its undo history). ``mask`` unpacks a read-only copy.
    """

    __slots__ = ("clicks", "order", "shape", "_origin", "_crop_shape", "_bits")

    def __init__(self, mask: np.ndarray, clicks: tuple[SliceClick, ...] = (), order: int = 0) -> None:
        mask = np.asarray(mask)
        if mask.ndim != 2:
            raise InvalidInputError(f"A slice mask is 2D, got shape {mask.shape}.")
        mask = mask.astype(bool, copy=False)
        self.clicks = tuple(clicks)
        self.order = order
        self.shape = (int(mask.shape[0]), int(mask.shape[1]))
        rows = np.flatnonzero(mask.any(axis=1))
        if rows.size == 0:
            self._origin, self._crop_shape, self._bits = (0, 0), (0, 0), np.empty(0, np.uint8)
            return
        cols = np.flatnonzero(mask.any(axis=0))
        crop = mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        self._origin = (int(rows[0]), int(cols[0]))
        self._crop_shape = crop.shape
        self._bits = np.packbits(crop, axis=None)

    def __setattr__(self, name, value) -> None:
        if hasattr(self, name):  # shared with the undo history: never changed once made
            raise AttributeError(f"SliceAnnotation.{name} cannot be changed")
        object.__setattr__(self, name, value)

    @property
    def mask(self) -> np.ndarray:
        """The (rows, cols) bool mask, a new read-only array."""
        mask = np.zeros(self.shape, bool)
        if self._bits.size:
            (row, col), (height, width) = self._origin, self._crop_shape
            crop = np.unpackbits(self._bits, count=height * width).view(bool)
            mask[row:row + height, col:col + width] = crop.reshape(height, width)
        mask.flags.writeable = False
        return mask

    @property
    def empty(self) -> bool:
        return self._bits.size == 0

    @property
    def nbytes(self) -> int:
        """The bytes the mask takes here (what the undo history counts)."""
        return int(self._bits.nbytes)

    @property
    def drawn(self) -> bool:
        """True when the mask came from elsewhere (an editor, a label file), not from clicks."""
        return not self.clicks

    def __repr__(self) -> str:
        return (f"SliceAnnotation(shape={self.shape}, voxels={int(np.unpackbits(self._bits).sum())}, "
                f"clicks={len(self.clicks)}, order={self.order})")


def mask_digest(mask: np.ndarray) -> str:
    """A digest (32 hex digits) of a 2D bool mask: equal masks give equal digests, and a mask of
    another shape or with one voxel more gives another one."""
    mask = np.asarray(mask, dtype=bool)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(repr(tuple(int(n) for n in mask.shape)).encode())
    digest.update(np.packbits(mask.reshape(-1)).tobytes())
    return digest.hexdigest()


#: characters of a :func:`mask_digest`
MASK_DIGEST_LENGTH = 32


def is_mask_digest(value: object) -> bool:
    """Whether ``value`` has the form of a :func:`mask_digest` (32 lower-case hex digits)."""
    return isinstance(value, str) and len(value) == MASK_DIGEST_LENGTH and not value.strip("0123456789abcdef")


@dataclass(frozen=True)
class PropagationRecord:
    """What a propagated result was computed from: the ``axis`` and ``method`` of the
    propagation and, for every slice annotated along that axis then, the digest of its mask
    (``digests``: (index, digest) pairs sorted by index).

    ``networks``: the digest of the weights the propagation ran with (STCN and FusionNet; see
    ``propagation.network_digest``; empty for a method without weights, such as
    interpolation). Other weights give other results, so a session whose networks have another
    digest does not take the result up: its next propagation recomputes every slice.

    ``overlaid``: slices along ``axis`` whose voxels in the result are not the propagation's
    but an annotation's that the record does not count (a result restored from what Slicer
    shows, taken while an annotation made after the propagation was on it). While they stay
    annotated that does not matter (annotations are written over the result); once one is
    cleared, what the propagation gave there is unknown, so the result is not taken up."""

    axis: int
    method: str
    digests: tuple[tuple[int, str], ...]
    overlaid: tuple[int, ...] = ()
    networks: str = ""

    @classmethod
    def of(cls, axis: int, method: str, annotated: Mapping[int, SliceAnnotation],
           networks: str = "") -> "PropagationRecord":
        """The record of a propagation along ``axis`` from the annotations ``annotated``
        (slice index -> annotation), run with the networks whose digest is ``networks``."""
        return cls(int(axis), str(method), tuple(sorted((int(i), mask_digest(a.mask)) for i, a in annotated.items())),
                   networks=str(networks))

    @property
    def by_index(self) -> dict[int, str]:
        return dict(self.digests)


@dataclass(eq=False)
class Segment:
    """A named, coloured object being segmented in one volume."""

    name: str
    color: tuple[float, float, float]
    label_value: int
    #: axis -> slice index -> annotation
    annotations: dict[int, dict[int, SliceAnnotation]] = field(
        default_factory=lambda: {0: {}, 1: {}, 2: {}}
    )
    #: the last propagation's (k, j, i) bool mask, or None before any propagation
    propagated: Optional[np.ndarray] = None
    #: the axis the last propagation ran along
    propagation_axis: Optional[int] = None
    #: the annotations ``propagated`` was computed from (None: unknown, e.g. a session file
    #: saved before records existed, or a result that no propagator computed)
    propagation_record: Optional[PropagationRecord] = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise InvalidInputError("A segment needs a non-empty name.")
        # No eager conversions: tuple("red") is three letters, int("7") a number, True a 1.
        color = self.color
        if isinstance(color, (str, bytes)) or not hasattr(color, "__len__") or len(color) != 3 or not all(
                isinstance(c, (numbers.Real, np.number)) and not isinstance(c, (bool, np.bool_))
                and 0.0 <= float(c) <= 1.0 for c in color):
            raise InvalidInputError(
                f"Segment {self.name!r}: a colour is three numbers in [0, 1], got {self.color!r}."
            )
        self.color = tuple(float(c) for c in color)  # type: ignore[assignment]
        value = self.label_value
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Integral, np.integer)) \
                or not 1 <= int(value) <= 255:
            raise InvalidInputError(
                f"Segment {self.name!r}: the label value is a whole number 1..255, got {self.label_value!r}."
            )
        self.label_value = int(value)

    def __repr__(self) -> str:
        counts = ", ".join(f"axis {a}: {len(s)}" for a, s in self.annotations.items() if s) or "none"
        propagated = "no" if self.propagated is None else f"along axis {self.propagation_axis}"
        return (f"Segment({self.name!r}, color={self.color}, label_value={self.label_value}, "
                f"annotated slices: {counts}, propagated: {propagated})")

    # --- annotated slices -------------------------------------------------------------------
    def annotation(self, axis: int, index: int) -> Optional[SliceAnnotation]:
        return self.annotations[check_axis(axis)].get(int(index))

    def set_annotation(self, axis: int, index: int, annotation: Optional[SliceAnnotation]) -> None:
        """Store (or, with None, remove) the annotation of one slice."""
        slices = self.annotations[check_axis(axis)]
        if annotation is None:
            slices.pop(int(index), None)
        else:
            slices[int(index)] = annotation

    def annotated_indices(self, axis: int) -> list[int]:
        return sorted(self.annotations[check_axis(axis)])

    def iter_annotations(self) -> Iterator[tuple[int, int, SliceAnnotation]]:
        """(axis, index, annotation) for every annotated slice, oldest first."""
        items = [
            (axis, index, annotation)
            for axis, slices in self.annotations.items()
            for index, annotation in slices.items()
        ]
        return iter(sorted(items, key=lambda item: item[2].order))

    @property
    def has_annotations(self) -> bool:
        return any(self.annotations[axis] for axis in (0, 1, 2))

    # --- the whole mask -----------------------------------------------------------------------
    def mask(self, shape: tuple[int, int, int]) -> np.ndarray:
        """The segment's (k, j, i) bool mask: propagated result, then annotated slices over it."""
        if self.propagated is not None:
            result = self.propagated.copy()
        else:
            result = np.zeros(shape, dtype=bool)
        for axis, index, annotation in self.iter_annotations():
            insert_slice(result, axis, index, annotation.mask)
        return result
