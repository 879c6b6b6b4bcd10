"""The one place where the Slicer module meets :class:`isegformer.session.Session`.

The module's Logic calls this bridge only from the worker thread (or, in scripts, from the
thread that owns the Logic). The bridge speaks in slices of a ``(k, j, i)`` volume: what a click
changed (:class:`SliceUpdate`) and what a propagation changed (:class:`VolumeUpdate`). A Slicer
segment is known to the session by its segment ID (the session's segment *name*). Nothing here
imports slicer, qt or vtk; torch comes in only through the session's models, on first use.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ..errors import InvalidInputError
from ..progress import ProgressCallback
from .transforms import SlicePoint, slice_shape, take_slice

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SliceUpdate:
    """The mask one slice of one segment should now show (after a click, an undo or a replay)."""

    segment: str
    axis: int
    index: int
    mask: np.ndarray  # 2D bool


@dataclass(frozen=True)
class VolumeUpdate:
    """The whole (k, j, i) mask of one segment after a propagation along ``axis``."""

    segment: str
    axis: int
    mask: np.ndarray  # 3D bool
    annotated: tuple[int, ...] = ()
    #: the propagation method, (slice index, mask digest) of each annotated slice the result
    #: came from and the digest of the networks it ran with (the session's propagation record;
    #: empty when the session keeps none)
    method: str = ""
    digests: tuple[tuple[int, str], ...] = ()
    networks: str = ""


@dataclass(frozen=True)
class ClickSpec:
    """A click to replay: (row, col) in the slice, and its sign."""

    row: float
    col: float
    positive: bool


class SessionBridge:
    """Wraps one session (one volume, one click model, one device)."""

    def __init__(self, session: Any, has_stcn_weights: bool = False) -> None:
        self._session = session
        #: whether STCN weights were given at opening (else only interpolation can propagate)
        self.has_stcn_weights = has_stcn_weights

    @classmethod
    def open(
        cls,
        volume: np.ndarray,
        ijk_to_ras: np.ndarray,
        click_model: Any,
        device: str = "auto",
        stcn_weights: Any = None,
        session_factory: Optional[Callable[..., Any]] = None,
        click_precision: str = "float32",
    ) -> "SessionBridge":
        """Open a session on ``volume`` (k, j, i) with its 4x4 IJK-to-world matrix.

        ``click_model`` is a checkpoint path (or anything ``Session.open`` takes). The model is
        loaded on the first click (or :meth:`warm_up`), not here. ``click_precision`` "int8"
        (the fast CPU mode) applies where the clicks run on the CPU; on a GPU it falls back to
        float32, which is fast there, instead of refusing the session.
        """
        if np.ndim(volume) != 3:
            raise InvalidInputError(f"Expected a 3D volume, got an array of shape {np.shape(volume)}.")
        if session_factory is None:
            from ..session.session import Session

            session_factory = Session.open
        options = {"click_model": click_model, "device": device}
        if click_precision == "int8":
            from ..device import resolve_device

            if resolve_device(device).type != "cpu":
                click_precision = "float32"  # int8 is a CPU mode; a GPU is fast in float32
        if click_precision != "float32":
            options["click_precision"] = click_precision
        if stcn_weights is not None:
            options["stcn_weights"] = stcn_weights
        session = session_factory((np.asarray(volume), np.asarray(ijk_to_ras, dtype=float)), **options)
        return cls(session, has_stcn_weights=stcn_weights is not None)

    @property
    def session(self) -> Any:
        return self._session

    @property
    def volume_shape(self) -> tuple[int, int, int]:
        return tuple(self._session.volume.shape)  # type: ignore[return-value]

    def warm_up(self) -> None:
        """Load the click model and run it once on a middle slice, without touching the state.

        The first network call pays for the model load and (on CUDA) kernel selection; doing it
        right after opening makes the user's first click as fast as the later ones. The session's
        own warm-up (``Session.warm_up_click_model``) is used where the session has one.
        """
        warm_up_click_model = getattr(self._session, "warm_up_click_model", None)
        if callable(warm_up_click_model):
            warm_up_click_model(background=False)  # already on the worker thread: block, report errors here
            return
        from ..click_engine.session import ClickSession

        volume = self._session.volume.array
        middle = volume.shape[0] // 2
        trial = ClickSession(self._session.predictor, volume[middle], window=self._session.window)
        rows, cols = volume.shape[1:]
        trial.add_click(rows / 2.0, cols / 2.0, True)

    # -- clicks ------------------------------------------------------------------------------
    def click(self, segment: str, point: SlicePoint, positive: bool) -> SliceUpdate:
        self._ensure_segment(segment)
        mask = self._session.click_slice(
            point.axis, point.index, point.row, point.col, positive=positive, segment=segment
        )
        return self._slice_update(segment, point.axis, point.index, mask)

    def undo_click(
        self, segment: str, axis: int, index: int, remaining: Sequence[ClickSpec]
    ) -> SliceUpdate:
        """Take back the last click of a slice; ``remaining`` are its clicks without that one.

        Uses the session's undo when the click is its last action (instant); otherwise replays
        the remaining clicks.
        """
        labels = self._session.history.undo_labels
        expected_tail = f" click on slice {index} (axis {axis}) of {segment!r}"
        if labels and labels[-1].endswith(expected_tail):
            self._session.undo()
            return self.slice_of(segment, axis, index)
        return self.replay(segment, axis, index, remaining)

    def replay(self, segment: str, axis: int, index: int, clicks: Sequence[ClickSpec]) -> SliceUpdate:
        """Forget a slice's clicks and make ``clicks`` again, in order (after a move or a delete).

        One undoable action in the session; with no click left, the slice shows its propagated
        result again (or nothing).
        """
        self._ensure_segment(segment)
        with self._session.history.transaction(f"replay clicks on slice {index} (axis {axis}) of {segment!r}"):
            self._session.clear_slice(axis, index, segment=segment)
            for click in clicks:
                self._session.click_slice(axis, index, click.row, click.col, positive=click.positive, segment=segment)
        return self.slice_of(segment, axis, index)

    # -- edits made in Slicer, and propagation -----------------------------------------------
    def adopt_edits(self, segment: str, axis: int, current: np.ndarray, written: Optional[np.ndarray]) -> list[int]:
        """Make slices that the user edited in Slicer annotated slices of the session.

        ``current`` is the segment's (k, j, i) mask in Slicer now, ``written`` what the module
        last wrote there (None: nothing yet). A slice along ``axis`` where they differ was edited
        by hand; it becomes an annotation that propagation never overwrites. Returns the indices.
        """
        self._ensure_segment(segment)
        current = np.asarray(current, dtype=bool)
        if written is None:
            written = self._session.segment_mask(segment)
        written = np.asarray(written, dtype=bool)
        if current.shape != written.shape:
            raise InvalidInputError(
                f"The segment's mask has shape {current.shape}, the session's volume {written.shape}."
            )
        other = tuple(a for a in range(3) if a != axis)
        edited = np.flatnonzero(np.any(current != written, axis=other))
        for index in edited:
            self._session.set_slice_mask(axis, int(index), take_slice(current, axis, int(index)), segment=segment)
        return [int(i) for i in edited]

    def propagate(
        self,
        segment: str,
        axis: Optional[int] = None,
        method: str = "stcn",
        progress: Optional[ProgressCallback] = None,
    ) -> VolumeUpdate:
        self._ensure_segment(segment)
        mask = np.asarray(self._session.propagate(segment, method=method, axis=axis, progress=progress), dtype=bool)
        if axis is None:
            axis = int(getattr(self._session.segment(segment), "propagation_axis", 0) or 0)
        annotated = tuple(int(i) for i in self._session.annotated_slices(segment, axis=axis))
        record = getattr(self._session.segment(segment), "propagation_record", None)
        if record is None:
            return VolumeUpdate(segment, int(axis), mask, annotated)
        return VolumeUpdate(segment, int(axis), mask, annotated, record.method, tuple(record.digests),
                            record.networks)

    def restore_propagation(self, segment: str, axis: int, method: str, mask: np.ndarray,
                            digests: Sequence[tuple[int, str]], networks: str = "") -> bool:
        """Give a reopened session a segment's propagated result back: ``mask`` (k, j, i), what
        the segment shows now, computed along ``axis`` by ``method`` from the annotated slices
        whose mask digests are ``digests`` ((index, digest) pairs, as a :class:`VolumeUpdate`
        carried them), with the networks whose digest is ``networks`` (a session with other
        networks recomputes everything at its next propagation). The next propagation then
        recomputes only around the annotations that are new or changed since (slices edited by
        hand become such annotations); every other slice stays as it is. Returns whether the
        session took it up: a session without this ability, or one that cannot tell the result
        from the segment's annotations (see ``Session.restore_propagated``), propagates
        everything again."""
        restore = getattr(self._session, "restore_propagated", None)
        if not callable(restore):
            return False
        from ..segments.segment import PropagationRecord
        from .. import arguments

        self._ensure_segment(segment)
        axis = arguments.axis(axis)
        if not isinstance(method, str):
            raise InvalidInputError(f"A propagation method is a name, got {type(method).__name__}.")
        try:
            pairs = tuple((int(index), str(digest)) for index, digest in digests)
        except (TypeError, ValueError) as err:
            raise InvalidInputError(f"A propagation record's digests are (slice index, digest) pairs: {err}.") from err
        if not isinstance(networks, str):
            raise InvalidInputError(f"A propagation record's networks digest is text, got {type(networks).__name__}.")
        try:
            mask = np.asarray(mask)
        except (TypeError, ValueError) as err:
            raise InvalidInputError(f"The propagated result is not a (k, j, i) mask array: {err}.") from err
        return bool(restore(segment, mask, PropagationRecord(axis, method, pairs, networks=networks)))

    def segment_mask(self, segment: str) -> np.ndarray:
        self._ensure_segment(segment)
        return np.asarray(self._session.segment_mask(segment), dtype=bool)

    def slice_of(self, segment: str, axis: int, index: int) -> SliceUpdate:
        """What a slice of a segment shows now: its annotation, else its propagated result."""
        return self._slice_update(segment, axis, index, take_slice(self.segment_mask(segment), axis, index))

    # -- helpers -----------------------------------------------------------------------------
    def _ensure_segment(self, segment: str) -> None:
        if not any(s.name == segment for s in self._session.segments):
            self._session.add_segment(segment)

    def _slice_update(self, segment: str, axis: int, index: int, mask: Any) -> SliceUpdate:
        arr = np.asarray(mask)
        expected = slice_shape(self.volume_shape, axis)
        if arr.shape != expected:
            raise InvalidInputError(
                f"The session returned a mask of shape {arr.shape} for slice {index} along axis "
                f"{axis}; expected {expected}."
            )
        return SliceUpdate(segment, axis, index, arr.astype(bool))
