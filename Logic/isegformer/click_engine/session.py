"""One interactive session: clicks on one 2D slice for one object, with undo and reset.

Usage (also from Slicer's Python console)::

    predictor = ClickPredictor(load_click_model("model.pth"))
    session = ClickSession(predictor, slice_2d, window=(low, high))
    prob, mask = session.add_click(120.0, 88.5, positive=True)
    prob, mask = session.add_click(60, 40, positive=False)
    session.undo()

Each click runs the network once. The mask is ``probability > predictor.threshold`` (0.49).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from ..clicks import Click, ClickList
from ..errors import InvalidInputError
from .. import arguments
from .predictor import ClickPredictor
from .transforms import ZoomInState


def image_to_unit_rgb(image: np.ndarray,
                      window: Optional[Sequence[float]] = None) -> np.ndarray:
    """(3, H, W) float32 in [0, 1] from a gray (H, W) or RGB (H, W, 3) image.

    uint8 images are divided by 255 (exactly as the reference's ToTensor). Other images must
    already lie in [0, 1] unless ``window=(low, high)`` is given, which maps low..high to 0..1
    and clips.
    """
    window = arguments.window(window)
    try:
        array = np.asarray(image)
    except Exception as err:  # ragged lists and the like
        raise InvalidInputError(f"The image could not be read as an array: {err}") from err
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
        raise InvalidInputError(
            f"The image must be one 2D slice, (H, W) gray or (H, W, 3) RGB; got shape "
            f"{array.shape}. Pick a slice of the volume first.")
    if array.size == 0:
        raise InvalidInputError(f"The image is empty (shape {array.shape}).")
    if array.dtype == bool or not np.issubdtype(array.dtype, np.number) \
            or np.issubdtype(array.dtype, np.complexfloating):
        raise InvalidInputError(
            f"The image must hold real numbers, got dtype {array.dtype}.")
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise InvalidInputError(
            "The image contains NaN or infinite values: fill or mask them before segmenting.")
    lo, hi = array.min(), array.max()
    if lo == hi:
        raise InvalidInputError(
            f"The image is constant (every pixel is {lo}): there is nothing to segment. "
            "Check the slice index and the intensity window.")

    if window is not None:
        low, high = window
        unit = np.clip((array.astype(np.float64) - low) / (high - low), 0.0, 1.0)
        unit = unit.astype(np.float32)
    elif array.dtype == np.uint8:
        unit = array.astype(np.float32) / np.float32(255.0)
    elif lo >= 0 and hi <= 1:
        unit = array.astype(np.float32)
    else:
        raise InvalidInputError(
            f"The image's intensities span {lo}..{hi}; the model needs [0, 1]. Give a window, "
            "e.g. ClickSession(predictor, image, window=(low, high)), or pass a uint8 image.")
    if unit.ndim == 2:
        unit = np.repeat(unit[None], 3, axis=0)
    else:
        unit = np.ascontiguousarray(unit.transpose(2, 0, 1))
    return unit


class ClickSession:
    """Clicks on one 2D image for one object; each click gives a new probability and mask."""

    def __init__(self, predictor: ClickPredictor, image: np.ndarray,
                 window: Optional[Sequence[float]] = None) -> None:
        if not isinstance(predictor, ClickPredictor):
            raise InvalidInputError(
                f"A ClickSession runs a ClickPredictor, got a {type(predictor).__name__}: wrap the "
                "model first, e.g. ClickSession(ClickPredictor(load_click_model('model.pth')), image).")
        self.predictor = predictor
        unit = image_to_unit_rgb(image, window)
        self._image = torch.from_numpy(unit)[None].to(predictor.device)
        self._clicks = ClickList()
        self._zoom = predictor.new_zoom_in()
        self._prob = torch.zeros_like(self._image[:, :1])
        self._history: list[tuple[torch.Tensor, Optional[ZoomInState]]] = []

    @property
    def shape(self) -> tuple[int, int]:
        return int(self._image.shape[2]), int(self._image.shape[3])

    @property
    def clicks(self) -> tuple[Click, ...]:
        return tuple(self._clicks)

    @property
    def roi(self) -> Optional[tuple[int, int, int, int]]:
        """The zoom-in crop (rmin, rmax, cmin, cmax), inclusive, or None when not zoomed."""
        if self._zoom is None or self._zoom.roi is None:
            return None
        return self._zoom.roi.as_tuple()

    @property
    def probability(self) -> np.ndarray:
        """(H, W) float32 probability after the last click (zeros before the first)."""
        return self._prob[0, 0].float().cpu().numpy()

    @property
    def mask(self) -> np.ndarray:
        """(H, W) bool: probability > the predictor's threshold."""
        return self.probability > self.predictor.threshold

    def add_click(self, y: float, x: float, positive: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Add a click at row ``y``, column ``x`` (continuous pixel coordinates).

        The image covers -0.5 <= y <= H - 0.5 and -0.5 <= x <= W - 0.5 (pixel centres at
        integers). Returns (probability float32 (H, W), mask bool (H, W)).
        """
        positive = arguments.boolean(positive, "positive")
        y, x = self._checked_position(y, x)
        self._history.append((self._prob, self._zoom.state() if self._zoom else None))
        self._clicks.add(y, x, positive)
        try:
            self._prob = self.predictor.predict(self._image, self._prob, self._clicks, self._zoom)
        except BaseException:
            self._clicks.pop()
            self._restore(self._history.pop())
            raise
        prob = self.probability
        return prob, prob > self.predictor.threshold

    def undo(self) -> tuple[np.ndarray, np.ndarray]:
        """Remove the last click and return to the probability and mask before it.

        Without clicks this does nothing.
        """
        if self._clicks:
            self._clicks.pop()
            self._restore(self._history.pop())
        prob = self.probability
        return prob, prob > self.predictor.threshold

    def reset(self) -> None:
        """Remove every click; the probability goes back to zeros."""
        self._clicks.clear()
        self._history.clear()
        self._prob = torch.zeros_like(self._image[:, :1])
        if self._zoom is not None:
            self._zoom.reset()

    def _restore(self, entry: tuple[torch.Tensor, Optional[ZoomInState]]) -> None:
        self._prob, zoom_state = entry
        if self._zoom is not None and zoom_state is not None:
            self._zoom.restore(zoom_state)

    def _checked_position(self, y: float, x: float) -> tuple[float, float]:
        # A bool or text is refused rather than read as a number (True would be row 1).
        y = arguments.real(y, "A click's row y")
        x = arguments.real(x, "A click's column x")
        height, width = self.shape
        if not (-0.5 <= y <= height - 0.5 and -0.5 <= x <= width - 0.5):
            raise InvalidInputError(
                f"The click (row {y:g}, column {x:g}) lies outside the {height}x{width} image: "
                f"rows go from 0 to {height - 1} and columns from 0 to {width - 1}.")
        # Within the border pixels' outer half, snap to their centre: a point with both
        # coordinates negative would read as an unused (padding) row to the network.
        return min(max(y, 0.0), height - 1.0), min(max(x, 0.0), width - 1.0)
