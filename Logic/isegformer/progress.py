"""Progress reporting and cancellation, one convention for the whole package.

A long operation takes ``progress: ProgressCallback | None`` and calls it as
``progress(done, total, message)``. To cancel, the callback raises
:class:`isegformer.errors.CancelledError`; the operation then stops and leaves its previous
result intact. The CLI passes a tqdm bar, the Slicer widget a progress dialog with a Cancel button.
"""
from __future__ import annotations

from typing import Callable, Optional

ProgressCallback = Callable[[int, int, str], None]


def report(progress: Optional[ProgressCallback], done: int, total: int, message: str = "") -> None:
    """Call ``progress`` if one was given (it may raise CancelledError to stop the work)."""
    if progress is not None:
        progress(done, total, message)


class TqdmProgress:
    """A ProgressCallback that drives one tqdm bar (used by the CLI)."""

    def __init__(self, desc: str = "", unit: str = "it", unit_scale: bool = False):
        self._desc = desc
        self._unit = unit
        self._unit_scale = unit_scale  # True shows bytes as kB/MB
        self._bar = None

    def __call__(self, done: int, total: int, message: str = "") -> None:
        from tqdm import tqdm

        if self._bar is None or self._bar.total != total:
            if self._bar is not None:
                self._bar.close()
            self._bar = tqdm(total=total, desc=self._desc, unit=self._unit,
                             unit_scale=self._unit_scale, leave=True)
        self._bar.n = done
        if message:
            self._bar.set_postfix_str(message, refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
