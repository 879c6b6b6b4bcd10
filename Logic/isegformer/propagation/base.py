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
from typing import Mapping, Optional

import numpy as np

from ..errors import InvalidInputError
from ..progress import ProgressCallback


def frames_along_axis(volume: np.ndarray, axis: int) -> np.ndarray:
    """View a (k, j, i) volume as frames along ``axis`` (0, 1 or 2): shape (T, H, W)."""
    if volume.ndim != 3:
        raise InvalidInputError(f"Expected a 3D volume, got an array of shape {volume.shape}.")
    if axis not in (0, 1, 2):
        raise InvalidInputError(f"Axis must be 0 (k), 1 (j) or 2 (i), got {axis!r}.")
    return np.moveaxis(volume, axis, 0)


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

    @property
    @abstractmethod
    def probabilities(self) -> np.ndarray:
        """The current (K+1, T, H, W) float32 probabilities; channel 0 is the background."""

    def labels(self) -> np.ndarray:
        """The current label map (T, H, W): argmax over channels, ties to the background."""
        return np.argmax(self.probabilities, axis=0).astype(np.uint8)
