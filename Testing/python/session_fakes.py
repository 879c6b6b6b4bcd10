"""A stand-in for isegformer.session.Session (the torch side) for tests about the Slicer plumbing.

It implements the part of the session API that ``isegformer.slicer_support.session_bridge``
uses, with a click that sets a 3x3 square, so that the module's MRML work can be checked
exactly and fast. ``test_slicer_support.py`` checks the same bridge calls against the real
Session with the tiny golden checkpoint. Nothing here fakes Slicer: the tests using it run on
Slicer's own MRML (slicer-core).
"""
from __future__ import annotations

from contextlib import contextmanager
from types import SimpleNamespace

import numpy as np

from isegformer.slicer_support.transforms import take_slice


class FakeSession:
    """The part of isegformer.session.Session the bridge uses; a click sets a 3x3 square."""

    def __init__(self, shape=(6, 8, 10)):
        self.volume = SimpleNamespace(shape=shape, array=np.zeros(shape, np.float32))
        self.segments = []
        self.annotations = {}  # (name, axis, index) -> (mask, clicks)
        self.labels = []
        self.calls = []
        self.history = SimpleNamespace(undo_labels=self.labels, transaction=self._transaction)

    @contextmanager
    def _transaction(self, label):
        start = len(self.labels)
        yield
        del self.labels[start:]
        self.labels.append(label)

    def add_segment(self, name):
        self.segments.append(SimpleNamespace(name=name, propagation_axis=None))
        self.labels.append(f"add segment {name!r}")

    def segment(self, name):
        return next(s for s in self.segments if s.name == name)

    def click_slice(self, axis, index, row, col, positive=True, segment=None):
        self.calls.append(("click", axis, index, row, col, positive))
        key = (segment, axis, index)
        mask, clicks = self.annotations.get(key, (None, ()))
        rows, cols = [n for a, n in enumerate(self.volume.shape) if a != axis]
        mask = np.zeros((rows, cols), bool) if mask is None else mask.copy()
        r, c = int(round(row)), int(round(col))
        mask[max(r - 1, 0):r + 2, max(c - 1, 0):c + 2] = positive
        self.annotations[key] = (mask, clicks + ((row, col, positive),))
        self.labels.append(f"{'positive' if positive else 'negative'} click on slice {index} (axis {axis}) of {segment!r}")
        return mask

    def clear_slice(self, axis, index, segment=None):
        self.calls.append(("clear", axis, index))
        self.annotations.pop((segment, axis, index), None)

    def set_slice_mask(self, axis, index, mask, segment=None):
        self.calls.append(("set", axis, index))
        self.annotations[(segment, axis, index)] = (np.asarray(mask, bool), ())

    def undo(self):
        self.calls.append(("undo",))
        label = self.labels.pop()
        # the fake only undoes the last click of a slice
        for key, (mask, clicks) in list(self.annotations.items()):
            if label.endswith(f" click on slice {key[2]} (axis {key[1]}) of {key[0]!r}"):
                remaining = clicks[:-1]
                self.annotations.pop(key)
                for row, col, positive in remaining:
                    self.click_slice(key[1], key[2], row, col, positive, key[0])
                    self.labels.pop()

    def segment_mask(self, segment=None):
        mask = np.zeros(self.volume.shape, bool)
        for (name, axis, index), (slice_mask, _) in self.annotations.items():
            if name == segment:
                take_slice(mask, axis, index)[...] |= slice_mask
        return mask

    def annotated_slices(self, segment=None, axis=None):
        return sorted(i for (n, a, i) in self.annotations if n == segment and a == axis)

    def propagate(self, segment=None, method="stcn", axis=None, progress=None):
        self.calls.append(("propagate", method, axis))
        if progress:
            progress(1, 1, "done")
        self.segment(segment).propagation_axis = axis
        mask = self.segment_mask(segment)
        return np.repeat(mask.any(axis=axis, keepdims=True), mask.shape[axis], axis=axis)
