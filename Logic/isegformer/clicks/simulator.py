"""The simulated user of the NoC protocol (RITM's clicker, as iSegFormer's evaluation uses it).

Each next click goes to the point deepest inside the largest error: the pixel farthest from the
boundary of the false-negative or false-positive region. The rules below are the reference's,
kept exactly because the NoC numbers depend on them:

- both error regions are zero-padded by one pixel first, so the image border counts as boundary;
- distances are exact Euclidean distances;
- pixels already clicked are excluded;
- the click is positive only when the false-negative maximum is strictly larger (a tie gives a
  negative click);
- it goes to the first pixel, in row-major order, that attains the maximum.
"""
from __future__ import annotations

import numpy as np
# scipy is not a direct dependency of the project; scikit-image (which is) depends on it, so it
# is always installed. Its EDT is exact, like OpenCV's DIST_L2 with the precise mask the
# reference used.
from scipy.ndimage import distance_transform_edt

from ..errors import InvalidInputError
from .click import Click, ClickList

IGNORE_LABEL = -1


def _padded_edt(region: np.ndarray) -> np.ndarray:
    padded = np.pad(region, 1, mode="constant", constant_values=False)
    return distance_transform_edt(padded)[1:-1, 1:-1]


class ClickSimulator:
    """Makes the next click for one ground-truth mask, remembering the pixels already clicked.

    ``gt`` holds 1 for the object, 0 for background and -1 for pixels to ignore.
    """

    def __init__(self, gt: np.ndarray) -> None:
        gt = np.asarray(gt)
        if gt.ndim != 2 or gt.size == 0:
            raise InvalidInputError(
                f"The ground-truth mask must be a non-empty 2D array, got shape {gt.shape}."
            )
        self._object = gt == 1
        self._valid = gt != IGNORE_LABEL
        self._not_clicked = np.ones(gt.shape, dtype=bool)
        self.clicks = ClickList()

    @property
    def shape(self) -> tuple[int, int]:
        return self._object.shape  # type: ignore[return-value]

    def mark_clicked(self, y: int, x: int) -> None:
        self._not_clicked[int(y), int(x)] = False

    def next_click(self, pred: np.ndarray) -> Click:
        """Make, record and return the click a user would make on the prediction ``pred``."""
        pred = np.asarray(pred).astype(bool)
        if pred.shape != self._object.shape:
            raise InvalidInputError(
                f"Prediction shape {pred.shape} differs from the ground truth {self._object.shape}."
            )
        false_neg = self._object & ~pred & self._valid
        false_pos = ~self._object & pred & self._valid
        fn_dist = _padded_edt(false_neg) * self._not_clicked
        fp_dist = _padded_edt(false_pos) * self._not_clicked
        fn_max = fn_dist.max()
        fp_max = fp_dist.max()
        positive = bool(fn_max > fp_max)
        dist = fn_dist if positive else fp_dist
        # argmax of the flattened map is the first maximum in row-major order
        y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
        click = self.clicks.add(int(y), int(x), positive)
        self.mark_clicked(click.y, click.x)
        return click


def next_click(gt: np.ndarray, pred: np.ndarray, clicked: "list[Click] | ClickList" = ()) -> Click:
    """The next simulated click for ``gt`` and ``pred``, given the clicks already made."""
    simulator = ClickSimulator(gt)
    for click in clicked:
        simulator.clicks.add(click.y, click.x, click.positive)
        simulator.mark_clicked(*click.pixel)
    return simulator.next_click(pred)
