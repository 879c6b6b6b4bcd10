"""Loading and warming up the click model before the first click, in a background thread.

A cold first click pays for importing torch, reading and checking the checkpoint, building the
network and the first forward pass (which allocates its buffers, initialises the BLAS and
builds the window index and position-bias caches). :class:`ClickModelWarmUp` does all of that
as soon as a volume and a model are chosen, with one untimed prediction at the size of the
volume's slices, so that the user's first click costs one click.

A failure is kept, not lost: :meth:`ClickModelWarmUp.result` raises it, with its original type
and message, to whoever asks next (the first click).
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable, Optional

import numpy as np


class ClickModelWarmUp:
    """A handle on one warm-up: ``build()`` makes the predictor, then one prediction runs.

    ``slice_shape`` (rows, cols) is the size of the images the first click will see (``None``:
    load only). Nothing runs until :meth:`start` (a daemon thread) or :meth:`run` (this
    thread); either way an error is kept and raised by :meth:`result`.
    """

    def __init__(self, build: Callable[[], Any], slice_shape: Optional[tuple[int, int]]) -> None:
        self._build = build
        self._slice_shape = slice_shape
        self._started = False
        self._done = threading.Event()
        self._predictor: Any = None
        self._error: Optional[BaseException] = None
        self.error_reported = False                  # result() has raised the error once
        self.load_seconds: Optional[float] = None    # build() (import, read, check, to device)
        self.warm_seconds: Optional[float] = None    # the untimed first prediction

    @classmethod
    def finished(cls, predictor: Any) -> "ClickModelWarmUp":
        """A handle on a predictor that is already loaded."""
        handle = cls(lambda: predictor, None)
        handle.run()
        return handle

    def start(self) -> "ClickModelWarmUp":
        """Run the warm-up in a daemon thread; returns at once."""
        if not self._started:
            self._started = True
            threading.Thread(target=self._run, name="isegformer-click-warm-up",
                             daemon=True).start()
        return self

    def run(self) -> "ClickModelWarmUp":
        """Run the warm-up in this thread (its error, if any, is kept for :meth:`result`)."""
        if not self._started:
            self._started = True
            self._run()
        return self

    def _run(self) -> None:
        try:
            start = time.perf_counter()
            predictor = self._build()
            self.load_seconds = time.perf_counter() - start
            if self._slice_shape is not None:
                start = time.perf_counter()
                warm_up_predictor(predictor, self._slice_shape)
                self.warm_seconds = time.perf_counter() - start
            self._predictor = predictor
        except BaseException as error:  # kept for result(): a thread must not swallow it
            self._error = error
        finally:
            self._done.set()

    def done(self) -> bool:
        """True once the warm-up has finished, successfully or not."""
        return self._done.is_set()

    def failed(self) -> bool:
        return self._done.is_set() and self._error is not None

    def result(self, timeout: Optional[float] = None) -> Any:
        """The warmed-up predictor; waits for it. Raises the warm-up's own error if it failed,
        or TimeoutError when ``timeout`` seconds pass first."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"The click model is still loading after {timeout} s.")
        if self._error is not None:
            self.error_reported = True
            raise self._error
        return self._predictor


def warm_up_predictor(predictor: Any, slice_shape: tuple[int, int]) -> None:
    """One untimed prediction on a blank image of ``slice_shape`` with a click in its centre:
    the first click's network call (image and its mirror) at the first click's size."""
    from ..clicks import Click

    rows, cols = (max(1, int(n)) for n in slice_shape)
    image = np.zeros((1, 3, rows, cols), dtype=np.float32)
    image[:, :, rows // 4:(3 * rows) // 4, cols // 4:(3 * cols) // 4] = 0.5
    predictor.predict_batch(image, [[Click((rows - 1) / 2, (cols - 1) / 2, True)]])
