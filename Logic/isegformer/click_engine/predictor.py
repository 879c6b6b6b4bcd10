"""The click predictor: clicks and the previous probability in, a new probability map out.

It follows the inference protocol of RITM that the iSegFormer paper evaluated with (NoBRS):

1. the image (3 channels in [0, 1]) and the previous probability form a 4-channel input;
2. zoom-in crops it around the object from the second click on (see ``transforms/zoom_in.py``);
3. horizontal flip doubles the batch;
4. the network gives logits; flip averages them; the sigmoid makes probabilities;
5. zoom-in pastes the result back into the full image.

One network call per click. The predictor holds no per-image state: a :class:`ClickSession`
owns the clicks, the previous probability and the zoom-in state.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from os import PathLike
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..clicks import Click
from ..device import resolve_device
from ..errors import InvalidInputError
from .. import arguments
from .transforms import HorizontalFlip, ZoomIn

log = logging.getLogger(__name__)

PRECISIONS = {"float32": None, "float16": torch.float16, "bfloat16": torch.bfloat16}
#: The opt-in fast CPU mode: int8 linear layers (see ``fast_cpu.py``); not in PRECISIONS
#: because it replaces layers instead of autocasting.
INT8 = "int8"

# Reference ZoomIn settings of the paper's evaluation (evaluate_model.py, cvpr mode).
ZOOM_IN_DEFAULTS = dict(target_size=400, skip_clicks=1, expansion_ratio=1.4, min_crop_size=200,
                        recompute_thresh_iou=0.5, prob_thresh=0.5)


@dataclass(frozen=True)
class NetCall:
    """What the network was given at the last call (for checks against the reference)."""

    points: np.ndarray          # (B, 2N, 3) float64 rows [y, x, index]
    input_hw: tuple[int, int]   # spatial size of the tensor given to the network


def clicks_to_points(click_lists: Sequence[Sequence[Click]]) -> np.ndarray:
    """(B, 2N, 3) float64 rows ``[y, x, index]``: N positive rows, then N negative rows.

    N is the largest number of positive or negative clicks over the batch (at least 1); the
    unused rows are ``(-1, -1, -1)``.
    """
    n = max([1] + [sum(c.positive == sign for c in clicks)
                   for clicks in click_lists for sign in (True, False)])
    points = np.full((len(click_lists), 2 * n, 3), -1.0, dtype=np.float64)
    for b, clicks in enumerate(click_lists):
        for group, sign in ((0, True), (1, False)):
            rows = [(c.y, c.x, c.index) for c in clicks if c.positive == sign]
            if rows:
                points[b, group * n:group * n + len(rows)] = rows
    return points


def check_click_precision(precision: Any, device: Union[str, torch.device]) -> torch.device:
    """The resolved device, once ``precision`` is known to run there; raises InvalidInputError
    before any weights are read otherwise (a typo, or int8 off the CPU or on a torch without
    an int8 engine, should not cost a 355 MB download or load first)."""
    device = resolve_device(device)
    if device.type == "cpu":
        from . import cpu_blas

        cpu_blas.mode()  # an unknown ISEGFORMER_CPU_BLAS is refused here, before any load
    if not isinstance(precision, str) or (precision not in PRECISIONS and precision != INT8):
        raise InvalidInputError(
            f"Unknown precision {precision!r}: use one of {', '.join([*PRECISIONS, INT8])}.")
    if precision == INT8:
        if device.type != "cpu":
            raise InvalidInputError(
                f"The int8 precision is a CPU mode, but the device is {device}: on a GPU use float16 "
                "or bfloat16, or run on the CPU.")
        from .fast_cpu import quantized_engine

        quantized_engine()
    return device


def _checked_threshold(value: Any) -> float:
    threshold = arguments.real(value, "threshold")
    if not 0.0 < threshold < 1.0:
        raise InvalidInputError(
            f"threshold is a probability strictly between 0 and 1 (the default is 0.49), got {threshold:g}.")
    return threshold


def _as_float_tensor(value: Any, what: str, device: torch.device) -> torch.Tensor:
    try:
        return torch.as_tensor(value, dtype=torch.float32, device=device)
    except (TypeError, ValueError, RuntimeError) as err:
        raise InvalidInputError(f"{what} must be an array of numbers, got a {type(value).__name__}.") from err


def _checked_click_lists(click_lists: Sequence[Sequence[Click]],
                         image_hw: tuple[int, int]) -> list[list[Click]]:
    """Lists of :class:`Click` whose points lie on an image of ``image_hw``; InvalidInputError
    otherwise (a tuple is not a click, and ``positive="no"`` is not a positive click)."""
    height, width = image_hw
    checked = []
    for n, clicks in enumerate(click_lists):
        if isinstance(clicks, (str, bytes, Click)) or not hasattr(clicks, "__iter__"):
            raise InvalidInputError(
                f"The clicks of image {n} must be a list of Click objects, got a {type(clicks).__name__}.")
        clicks = list(clicks)
        for c in clicks:
            if not isinstance(c, Click):
                raise InvalidInputError(
                    f"The clicks of image {n} must be Click objects (isegformer.clicks.Click(y, x, "
                    f"positive, index)), got a {type(c).__name__}: {c!r:.80}.")
            y = arguments.real(c.y, f"A click's row y (image {n})")
            x = arguments.real(c.x, f"A click's column x (image {n})")
            arguments.boolean(c.positive, f"A click's positive (image {n})")
            arguments.integer(c.index, f"A click's index (image {n})", 0)
            if not (-0.5 <= y <= height - 0.5 and -0.5 <= x <= width - 0.5):
                raise InvalidInputError(
                    f"Click (row {y:g}, column {x:g}) of image {n} lies outside the "
                    f"{height}x{width} image.")
        checked.append(clicks)
    return checked


class ClickPredictor:
    """Runs an iSegFormer model on clicks, with the reference's zoom-in and flip.

    ``model`` is a loaded network (``ISegFormer``), a checkpoint path or a state dict.
    ``precision`` ("float32", "float16" or "bfloat16") applies autocast on CUDA only; the CPU
    always computes in float32 with them. ``precision="int8"`` is the opt-in fast CPU mode:
    the linear layers of a copy of the model run in int8 (about 1.4x faster per click than
    float32, not the reference's exact numbers; see ``fast_cpu.py``). It runs on the CPU only.
    """

    def __init__(self, model: Union[nn.Module, str, PathLike, Mapping[str, Any]], *,
                 zoom_in: bool = True, flip: bool = True, threshold: float = 0.49,
                 device: Union[str, torch.device] = "auto", precision: str = "float32") -> None:
        # every argument is checked before any weights are read
        zoom_in = arguments.boolean(zoom_in, "zoom_in")
        flip = arguments.boolean(flip, "flip")
        threshold = _checked_threshold(threshold)
        self.device = check_click_precision(precision, device)
        if not isinstance(model, nn.Module):
            from .build import load_click_model

            model = load_click_model(model, device=self.device)
        if precision == INT8:
            from .fast_cpu import quantize_linear_layers

            model = quantize_linear_layers(model)
        self.model = model.to(self.device).eval()
        if self.device.type == "cpu":
            from .cpu_memory import retain_freed_memory

            retain_freed_memory()
        self.precision = precision
        self.zoom_in = zoom_in
        self.flip = HorizontalFlip() if flip else None
        self.threshold = threshold
        self.last_call: Optional[NetCall] = None

    def new_zoom_in(self) -> Optional[ZoomIn]:
        """A fresh zoom-in state for one image (None when zoom-in is off)."""
        return ZoomIn(**ZOOM_IN_DEFAULTS) if self.zoom_in else None

    # -- the protocol ------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, image: torch.Tensor, prev_prob: torch.Tensor, clicks: Sequence[Click],
                zoom: Optional[ZoomIn]) -> torch.Tensor:
        """Probability (1, 1, H, W) for one image (1, 3, H, W) in [0, 1] after ``clicks``.

        ``prev_prob`` (1, 1, H, W) is the previous probability (zeros before the first click);
        ``zoom`` is this image's zoom-in state, updated in place.
        """
        click_lists: list[list[Click]] = _checked_click_lists([clicks], tuple(image.shape[2:]))
        net_input = torch.cat([image, prev_prob], dim=1)
        if zoom is not None:
            net_input, click_lists[0] = zoom.transform(net_input, click_lists[0])
        prob = torch.sigmoid(self._merged_logits(net_input, click_lists))
        if zoom is not None:
            prob = zoom.inv_transform(prob)
        return prob

    @torch.no_grad()
    def predict_batch(self, images: Union[np.ndarray, torch.Tensor],
                      click_lists: Sequence[Sequence[Click]],
                      prev_probs: Union[np.ndarray, torch.Tensor, None] = None) -> np.ndarray:
        """Probabilities (B, H, W) float32 for a batch of images (B, 3, H, W) in [0, 1].

        One network call for the whole batch, with flip averaging but without zoom-in (zoom-in
        crops each image differently). ``prev_probs`` (B, 1, H, W) defaults to zeros.
        """
        images = _as_float_tensor(images, "predict_batch's images", self.device)
        if images.ndim != 4 or images.shape[1] != 3 or 0 in images.shape:
            raise InvalidInputError(
                f"predict_batch needs images of shape (B, 3, H, W), got {tuple(images.shape)}.")
        if isinstance(click_lists, (str, bytes)) or not hasattr(click_lists, "__len__"):
            raise InvalidInputError(
                "predict_batch takes one list of Click objects per image, e.g. "
                f"[[Click(y, x, True, 0)]], got a {type(click_lists).__name__}.")
        if len(click_lists) != images.shape[0]:
            raise InvalidInputError(
                f"{images.shape[0]} images but {len(click_lists)} click lists: give one list "
                "of clicks per image.")
        if not torch.isfinite(images).all():
            raise InvalidInputError("The images contain NaN or infinite values.")
        click_lists = _checked_click_lists(click_lists, tuple(images.shape[2:]))
        if prev_probs is None:
            prev = torch.zeros_like(images[:, :1])
        else:
            prev = _as_float_tensor(prev_probs, "prev_probs", self.device)
            if prev.shape != images[:, :1].shape:
                raise InvalidInputError(
                    f"prev_probs must have shape {tuple(images[:, :1].shape)}, "
                    f"got {tuple(prev.shape)}.")
        logits = self._merged_logits(torch.cat([images, prev], dim=1), click_lists)
        return torch.sigmoid(logits)[:, 0].float().cpu().numpy()

    # -- one network call --------------------------------------------------------------------
    def _merged_logits(self, net_input: torch.Tensor,
                       click_lists: list[list[Click]]) -> torch.Tensor:
        if self.flip is not None:
            net_input, click_lists = self.flip.transform(net_input, click_lists)
        points_np = clicks_to_points(click_lists)
        self.last_call = NetCall(points_np, (int(net_input.shape[2]), int(net_input.shape[3])))
        # float64 points, as the reference passes them: its disk maps subtract them from a
        # float32 pixel grid, which rounds the difference (not the coordinate) to float32.
        points = torch.from_numpy(points_np).to(self.device)
        with self._autocast():
            logits = self.model(net_input[:, :3], net_input[:, 3:], points)
        logits = logits.float()
        if logits.shape[2:] != net_input.shape[2:]:
            logits = F.interpolate(logits, size=net_input.shape[2:], mode="bilinear",
                                   align_corners=True)
        if self.flip is not None:
            logits = self.flip.inv_transform(logits)
        return logits

    @property
    def computed_precision(self) -> str:
        """The precision the network computes in: ``precision``, except float32 for
        float16/bfloat16 off CUDA (their autocast applies on CUDA only)."""
        if PRECISIONS.get(self.precision) is not None and self.device.type != "cuda":
            return "float32"
        return self.precision

    @contextlib.contextmanager
    def _autocast(self):
        dtype = PRECISIONS.get(self.computed_precision)
        if dtype is None:
            yield
        elif hasattr(self.model, "autocast_dtype"):
            # ISegFormer autocasts its backbone and decoder itself, keeping the click disks in
            # float32; set its dtype for this call only, since the model may be shared.
            saved = self.model.autocast_dtype
            self.model.autocast_dtype = dtype
            try:
                yield
            finally:
                self.model.autocast_dtype = saved
        else:
            with torch.autocast(device_type="cuda", dtype=dtype):
                yield
