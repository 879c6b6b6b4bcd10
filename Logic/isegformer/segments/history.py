"""Undo and redo: a stack of actions, each knowing how to undo and redo itself.

Actions keep only what changed: an annotated slice's before/after, or the slices of a
propagated volume that a propagation changed (bit-packed). The stack is bounded in length and
in bytes; the oldest actions are forgotten first.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class Action:
    """One undoable step. ``undo`` and ``redo`` must leave the state exactly as it was."""

    label: str
    undo: Callable[[], None]
    redo: Callable[[], None]
    nbytes: int = 0


class History:
    """Undo/redo stacks. Pushing a new action forgets everything that could be redone."""

    def __init__(self, max_actions: int = 500, max_bytes: int = 1 << 30) -> None:
        self.max_actions = max_actions
        self.max_bytes = max_bytes
        self._done: list[Action] = []
        self._undone: list[Action] = []
        self._open_transactions = 0

    def push(self, action: Action) -> None:
        self._done.append(action)
        self._undone.clear()
        self._trim()

    def undo(self) -> Optional[Action]:
        """Undo the last action; returns it, or None when there is nothing to undo."""
        if not self._done:
            return None
        action = self._done.pop()
        try:
            action.undo()
        except BaseException:
            self._done.append(action)
            raise
        self._undone.append(action)
        return action

    def redo(self) -> Optional[Action]:
        """Redo the last undone action; returns it, or None when there is nothing to redo."""
        if not self._undone:
            return None
        action = self._undone.pop()
        try:
            action.redo()
        except BaseException:
            self._undone.append(action)
            raise
        self._done.append(action)
        return action

    def clear(self) -> None:
        self._done.clear()
        self._undone.clear()

    @contextlib.contextmanager
    def transaction(self, label: str) -> Iterator[None]:
        """Group the actions pushed inside into one; on an exception, undo them all.

        After a failed transaction the state and both stacks are as they were before it.
        """
        start = len(self._done)
        saved_redo = list(self._undone)
        self._open_transactions += 1
        try:
            yield
        except BaseException:
            while len(self._done) > start:
                self._done.pop().undo()
            self._undone = saved_redo
            raise
        finally:
            self._open_transactions -= 1
        inner = self._done[start:]
        if len(inner) > 1:
            del self._done[start:]

            def undo_all() -> None:
                for action in reversed(inner):
                    action.undo()

            def redo_all() -> None:
                for action in inner:
                    action.redo()

            self._done.append(Action(label, undo_all, redo_all, sum(a.nbytes for a in inner)))
        self._trim()

    @property
    def can_undo(self) -> bool:
        return bool(self._done)

    @property
    def can_redo(self) -> bool:
        return bool(self._undone)

    @property
    def undo_labels(self) -> list[str]:
        """Labels of the undoable actions, most recent last."""
        return [a.label for a in self._done]

    @property
    def redo_labels(self) -> list[str]:
        return [a.label for a in reversed(self._undone)]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self._done) + sum(a.nbytes for a in self._undone)

    def _trim(self) -> None:
        if self._open_transactions:
            return  # a transaction needs its actions; trim when it closes
        while len(self._done) > self.max_actions or (
            len(self._done) > 1 and self.nbytes > self.max_bytes
        ):
            forgotten = self._done.pop(0)
            log.info("Undo history full: forgetting %r", forgotten.label)


class VolumeDiff:
    """The slices along one axis where two (k, j, i) bool volumes differ, bit-packed both ways.

    ``None`` stands for "no volume" (e.g. no propagation yet) and is restored as None.
    """

    def __init__(self, before: Optional[np.ndarray], after: Optional[np.ndarray], axis: int) -> None:
        reference = after if after is not None else before
        if reference is None:
            raise ValueError("VolumeDiff needs at least one volume")
        self.shape = reference.shape
        self.axis = axis
        self.before_is_none = before is None
        self.after_is_none = after is None
        old = np.moveaxis(before if before is not None else np.zeros(self.shape, bool), axis, 0)
        new = np.moveaxis(after if after is not None else np.zeros(self.shape, bool), axis, 0)
        changed = np.flatnonzero((old != new).reshape(old.shape[0], -1).any(axis=1))
        self.indices = changed
        self.slice_shape = old.shape[1:]
        # An explicit row length: with no changed slice (an empty first result) -1 is ambiguous.
        row = int(np.prod(self.slice_shape))
        self._old = np.packbits(old[changed].reshape(len(changed), row), axis=1)
        self._new = np.packbits(new[changed].reshape(len(changed), row), axis=1)

    @property
    def nbytes(self) -> int:
        return int(self._old.nbytes + self._new.nbytes + self.indices.nbytes)

    @property
    def empty(self) -> bool:
        return len(self.indices) == 0 and self.before_is_none == self.after_is_none

    def apply(self, volume: Optional[np.ndarray], reverse: bool) -> Optional[np.ndarray]:
        """Return ``volume`` changed to the after state (or, reversed, the before state)."""
        if (self.before_is_none if reverse else self.after_is_none):
            return None
        result = np.zeros(self.shape, bool) if volume is None else volume.copy()
        packed = self._old if reverse else self._new
        count = int(np.prod(self.slice_shape))
        view = np.moveaxis(result, self.axis, 0)
        for row, index in enumerate(self.indices):
            bits = np.unpackbits(packed[row], count=count).astype(bool)
            view[index] = bits.reshape(self.slice_shape)
        return result
