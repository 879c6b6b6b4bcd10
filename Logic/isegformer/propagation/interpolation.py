"""The weight-free baseline: shape-based interpolation between annotated frames.

For each object, every annotated frame gets a signed distance map (negative inside, positive
outside, in pixels or in the given pixel spacing). A frame between two annotated frames ``a < t < b``
gets the linear blend ``(1 - w) * sdf_a + w * sdf_b`` with ``w = (t - a) / (b - a)``, and the
object is where that blend is negative. This is the idea behind Slicer's "Fill between slices"
(morphological contour interpolation): a shape that grows from one annotated frame to the next
grows steadily in between. It looks at no image intensity at all.

Choices that a reader of the results should know:

- Frames before the first and after the last annotated frame are background: nothing is
  extrapolated.
- An object is interpolated only between two annotated frames that both hold it. Where one of
  them lacks it, the object stops at the annotated frame that has it: an annotated frame without
  an object says "not here", as a slice left empty does in Slicer's "Fill between slices". (Its
  distance map is +inf, and any blend with +inf stays outside.)
- Probabilities: object ``k`` gets ``p_k = sigmoid(-sdf_k / softness)`` (``softness`` one pixel by
  default, in the units of ``pixel_spacing``), the background ``1 - max_k p_k``, and the channels are normalised to sum to one.
  So the argmax is the interpolated shape: an object wins where its blended distance is negative
  (and, where objects overlap, the one it is deepest inside); a tie at exactly zero goes to the
  background. Annotated frames are their label maps exactly (one-hot).
- Incremental: an annotation recomputes only the frames between it and its annotated
  neighbours (or nothing beyond, where it is the first or last). A cancel through ``progress``
  leaves the annotations and probabilities as they were.
"""
from __future__ import annotations

import logging
from types import MappingProxyType
from typing import Mapping, Optional, Sequence

import numpy as np
from scipy import ndimage

from ..errors import InvalidInputError
from ..progress import ProgressCallback, report
from .. import arguments
from .base import Propagator, frames_along_axis

log = logging.getLogger(__name__)


class InterpolationPropagator(Propagator):
    """Shape-based interpolation between annotated frames; see the module docstring."""

    name = "interpolation"

    def __init__(
        self,
        num_frames: int,
        frame_shape: Sequence[int],
        num_objects: int,
        *,
        pixel_spacing: Sequence[float] = (1.0, 1.0),
        softness: Optional[float] = None,
    ) -> None:
        num_frames = arguments.integer(num_frames, "The number of frames (num_frames)", 1)
        shape = tuple(arguments.integer(v, "A frame's size (rows, cols)", 1)
                      for v in _pair(frame_shape, "A frame shape is (rows, cols)"))
        num_objects = arguments.integer(num_objects, "The number of objects (num_objects)", 1, 65535)
        spacing = tuple(arguments.real(v, "A pixel spacing (row, col) in mm")
                        for v in _pair(pixel_spacing, "pixel_spacing is (row, col) in mm"))
        if min(spacing) <= 0:
            raise InvalidInputError(f"pixel_spacing must be two positive numbers, got {spacing}.")
        if softness is None:
            softness = min(spacing)  # one pixel
        # An infinite softness makes every blend 0.5 against 0.5, so every frame between two
        # annotations would be background: refused like NaN, not taken.
        softness = arguments.real(softness, "softness (in the units of pixel_spacing)")
        if not softness > 0:
            raise InvalidInputError(f"softness must be a positive finite number, got {softness:g}.")
        self._num_frames = int(num_frames)
        self._frame_shape: tuple[int, int] = shape  # type: ignore[assignment]
        self._num_objects = int(num_objects)
        self._spacing = spacing
        self._softness = float(softness)
        self._annotated: dict[int, np.ndarray] = {}
        self._sdf: dict[int, np.ndarray] = {}  # frame -> (K, H, W) float32, +inf where absent
        self._probs = np.zeros((self._num_objects + 1, self._num_frames) + shape, np.float32)
        self._probs[0] = 1.0

    @classmethod
    def from_volume(cls, volume: np.ndarray, axis: int, num_objects: int, **kwargs) -> "InterpolationPropagator":
        """A propagator over ``volume`` (k, j, i) seen along ``axis``; only its shape is used."""
        frames = frames_along_axis(np.asarray(volume), axis)
        return cls(frames.shape[0], frames.shape[1:], num_objects, **kwargs)

    # --- Propagator ---------------------------------------------------------------------
    @property
    def num_frames(self) -> int:
        return self._num_frames

    @property
    def num_objects(self) -> int:
        return self._num_objects

    @property
    def annotated(self) -> Mapping[int, np.ndarray]:
        return MappingProxyType(self._annotated)

    @property
    def probabilities(self) -> np.ndarray:
        """(K+1, T, H, W) float32, a read-only view of the current state (copy it to keep it)."""
        view = self._probs.view()
        view.flags.writeable = False
        return view

    def annotate(
        self, index: int, label_map: np.ndarray, progress: Optional[ProgressCallback] = None
    ) -> np.ndarray:
        arguments.optional_callable(progress, "progress")
        index = self._check_index(index)
        labels = self._check_label_map(label_map)
        lower = max((a for a in self._annotated if a < index), default=None)
        upper = min((a for a in self._annotated if a > index), default=None)
        spans = [(lower, index)] if lower is not None else []
        spans += [(index, upper)] if upper is not None else []
        total = 1 + sum(b - a - 1 for a, b in spans)
        report(progress, 0, total, "distance maps")
        sdf = self._signed_distances(labels)
        sdfs = {**self._sdf, index: sdf}

        # Everything new is computed aside first, so that a cancel changes nothing.
        new_frames: dict[int, np.ndarray] = {}
        done = 1
        for a, b in spans:
            start, stop = sdfs[a], sdfs[b]
            for t in range(a + 1, b):
                w = np.float32((t - a) / (b - a))  # strictly inside (0, 1): inf never meets 0
                new_frames[t] = self._probabilities_from_sdf((1 - w) * start + w * stop)
                report(progress, done, total, f"frame {t}")
                done += 1
        report(progress, total, total, "done")

        for t, probs in new_frames.items():
            self._probs[:, t] = probs
        self._probs[:, index] = self._one_hot(labels)
        self._annotated.pop(index, None)
        self._annotated[index] = labels
        self._sdf[index] = sdf
        log.debug("interpolation: annotated frame %d, recomputed %d frames", index, len(new_frames))
        return self.probabilities

    # --- internals ------------------------------------------------------------------------
    def _check_index(self, index: int) -> int:
        if not isinstance(index, (int, np.integer)) or isinstance(index, bool) or not 0 <= index < self._num_frames:
            raise InvalidInputError(
                f"Frame index {index!r} is outside the stack: it has frames 0..{self._num_frames - 1}."
            )
        return int(index)

    def _check_label_map(self, label_map: np.ndarray) -> np.ndarray:
        arr = np.asarray(label_map)
        if arr.shape != self._frame_shape:
            raise InvalidInputError(
                f"The annotation has shape {arr.shape}, but frames here are {self._frame_shape}. "
                "Give a label map of the slice's shape (rows, cols)."
            )
        if arr.dtype == np.bool_:
            arr = arr.astype(np.uint8)
        if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
            raise InvalidInputError(f"The annotation must hold integer labels, got dtype {arr.dtype}.")
        if np.issubdtype(arr.dtype, np.floating):
            if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
                raise InvalidInputError("The annotation must hold whole-number labels 0..K (no NaN, no fractions).")
        low, high = (arr.min(), arr.max()) if arr.size else (0, 0)
        if low < 0 or high > self._num_objects:
            raise InvalidInputError(
                f"The annotation holds labels {int(low)}..{int(high)}, but this propagator tracks objects "
                f"1..{self._num_objects} (0 is background)."
            )
        dtype = np.uint8 if self._num_objects < 256 else np.uint16
        return arr.astype(dtype, copy=True)

    def _signed_distances(self, labels: np.ndarray) -> np.ndarray:
        sdf = np.full((self._num_objects,) + self._frame_shape, np.inf, np.float32)
        for k in range(1, self._num_objects + 1):
            mask = labels == k
            if not mask.any():
                continue
            if mask.all():
                # No outside to measure from: deep inside everywhere, as far as the frame reaches.
                sdf[k - 1] = -float(np.hypot(*np.multiply(self._frame_shape, self._spacing)))
                continue
            outside = ndimage.distance_transform_edt(~mask, sampling=self._spacing)
            inside = ndimage.distance_transform_edt(mask, sampling=self._spacing)
            sdf[k - 1] = outside - inside
        return sdf

    def _probabilities_from_sdf(self, sdf: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            fg = 1.0 / (1.0 + np.exp(sdf / np.float32(self._softness)))  # exp(+inf) -> p = 0
        fg = fg.astype(np.float32)
        out = np.empty((self._num_objects + 1,) + self._frame_shape, np.float32)
        out[1:] = fg
        out[0] = 1.0 - fg.max(axis=0)
        out /= out.sum(axis=0, keepdims=True)
        return out

    def _one_hot(self, labels: np.ndarray) -> np.ndarray:
        out = np.zeros((self._num_objects + 1,) + self._frame_shape, np.float32)
        np.put_along_axis(out, labels[None].astype(np.intp), 1.0, axis=0)
        return out


def _pair(value, what: str) -> tuple:
    """``value`` as a 2-tuple, or InvalidInputError (``what`` starts the message)."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise InvalidInputError(f"{what}: two numbers, got {value!r}.")
    return tuple(value)
