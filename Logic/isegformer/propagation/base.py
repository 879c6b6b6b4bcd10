"""The interface every propagator follows (STCN, the interpolation baseline).

A propagator is bound to one stack of frames: a volume already turned so that axis 0 is the
axis the user annotates along (see ``frames_along_axis``). The user annotates frames one after
another; each ``annotate`` call recomputes only the frames between the new annotation and its
annotated neighbours (or the end of the stack), exactly as MiVOS' ``interact`` does, and keeps
everything else. Annotated frames are never overwritten by propagation.

Objects are numbered 1..K; a frame's annotation is a label map with 0 for background. The
result is a soft probability per object and frame, channel 0 being the background.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..errors import InvalidInputError
from ..progress import ProgressCallback
from .. import arguments


def frames_along_axis(volume: np.ndarray, axis: int) -> np.ndarray:
    """View a (k, j, i) volume as frames along ``axis`` (0, 1 or 2): shape (T, H, W)."""
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise InvalidInputError(f"Expected a 3D volume, got an array of shape {volume.shape}.")
    # The Session's rule for a whole number (True is not axis 1, 1.0 is not truncated).
    axis = arguments.integer(axis, "Axis (0 for k, 1 for j, 2 for i)", 0, 2)
    return np.moveaxis(volume, axis, 0)


def annotation_items(items: Iterable[Tuple[int, np.ndarray]]) -> List[Tuple[Any, Any]]:
    """``items`` as a list of ``(frame index, label map)`` pairs, or InvalidInputError; the
    index and the map themselves are checked by the propagator that takes them."""
    if items is None or isinstance(items, (str, bytes, Mapping)) or not hasattr(items, "__iter__"):
        raise InvalidInputError(
            f"The annotations are a list of (frame index, label map) pairs, e.g. [(3, mask)], got a "
            f"{type(items).__name__}.")
    pairs = []
    for number, item in enumerate(items):
        if isinstance(item, (str, bytes, np.ndarray)) or not hasattr(item, "__len__") or len(item) != 2:
            raise InvalidInputError(
                f"Annotation {number} is not a (frame index, label map) pair: got a {type(item).__name__}"
                f"{f' of length {len(item)}' if hasattr(item, '__len__') else ''}.")
        index, label_map = item
        pairs.append((index, label_map))
    return pairs


def volume_from_frames(frames: np.ndarray, axis: int) -> np.ndarray:
    """Inverse of :func:`frames_along_axis` for a (T, H, W) or (C, T, H, W) array."""
    if frames.ndim == 4:
        return np.moveaxis(frames, 1, axis + 1)
    return np.moveaxis(frames, 0, axis)


class Propagator(ABC):
    """Carries annotated frames through a stack of frames; see the module docstring."""

    #: short name used in the CLI and in reports ("stcn", "interpolation")
    name: str = ""

    @property
    @abstractmethod
    def num_frames(self) -> int: ...

    @property
    @abstractmethod
    def num_objects(self) -> int: ...

    @property
    @abstractmethod
    def annotated(self) -> Mapping[int, np.ndarray]:
        """Annotated frame index -> its label map (H, W), in the order they were annotated."""

    @abstractmethod
    def annotate(
        self, index: int, label_map: np.ndarray, progress: Optional[ProgressCallback] = None
    ) -> np.ndarray:
        """Record ``label_map`` (H, W, ints 0..K) as frame ``index``'s annotation and propagate.

        Returns the probabilities (K+1, T, H, W), float32. If ``progress`` raises
        CancelledError, the previous probabilities and annotations stay as they were.
        """

    def annotate_many(
        self, items: Sequence[Tuple[int, np.ndarray]], progress: Optional[ProgressCallback] = None
    ) -> np.ndarray:
        """The result of ``annotate(index, label_map)`` for each ``(index, label_map)`` of
        ``items``, in that order (a propagator may skip work whose result a later item
        overwrites). One progress run covers the whole batch; a cancel, or any other error
        (a bad item, an exception from ``progress``), leaves the annotations and probabilities
        as they were before the batch.

        This default annotates one by one (progress in percent of the batch) and, on any
        exception, puts back a copy of the attributes taken before the batch."""
        items = annotation_items(items)
        arguments.optional_callable(progress, "progress")
        saved = _snapshot(self.__dict__)
        try:
            for number, (index, label_map) in enumerate(items):
                self.annotate(index, label_map, progress=_part(progress, number, len(items)))
        except BaseException:
            _restore(self.__dict__, saved)
            raise
        return self.probabilities

    def seed(self, labels: np.ndarray, annotated: Sequence[Tuple[int, np.ndarray]]) -> bool:
        """Take up an earlier result instead of recomputing it: ``labels`` (T, H, W), the label
        map an earlier propagation gave on every frame, and ``annotated``, the ``(index,
        label_map)`` annotations that result was computed from, oldest first. Afterwards the
        propagator behaves as if it had annotated those frames itself, so that a later
        ``annotate`` recomputes only around its own frame. Call it on a new propagator only.

        Returns False when this propagator cannot be seeded (this default; the caller then
        annotates everything again). A propagator whose state is more than its labels (STCN's
        soft probabilities) may give results near a new annotation that differ slightly from
        those of the propagator that computed ``labels``."""
        return False

    @property
    @abstractmethod
    def probabilities(self) -> np.ndarray:
        """The current (K+1, T, H, W) float32 probabilities; channel 0 is the background."""

    def labels(self) -> np.ndarray:
        """The current label map (T, H, W): argmax over channels, ties to the background."""
        return np.argmax(self.probabilities, axis=0).astype(np.uint8)


def _part(progress: Optional[ProgressCallback], part: int, parts: int) -> Optional[ProgressCallback]:
    """Report one of ``parts`` equal parts of a batch as percent of the whole."""
    if progress is None:
        return None

    def step(done: int, total: int, message: str = "") -> None:
        progress(int(100 * (part + (done / total if total else 1.0)) / parts), 100, message)

    return step


def _snapshot(attributes: Dict[str, Any]) -> Dict[str, Any]:
    """Attributes with arrays and containers copied one level deep (what ``annotate`` changes)."""
    copies: Dict[str, Any] = {}
    for name, value in attributes.items():
        if isinstance(value, np.ndarray):
            value = value.copy()
        elif isinstance(value, (dict, list, set)):
            value = value.copy()
        copies[name] = value
    return copies


def _restore(attributes: Dict[str, Any], saved: Dict[str, Any]) -> None:
    """Put ``saved`` back, refilling arrays and containers in place (others may hold them)."""
    for name, value in saved.items():
        current = attributes.get(name)
        if isinstance(current, np.ndarray) and isinstance(value, np.ndarray) \
                and current.shape == value.shape and current.dtype == value.dtype:
            current[...] = value
        elif isinstance(current, (dict, set)) and type(current) is type(value):
            current.clear()
            current.update(value)
        elif isinstance(current, list) and isinstance(value, list):
            current[:] = value
        else:
            attributes[name] = value
    for name in [n for n in attributes if n not in saved]:
        del attributes[name]
