"""Zoom-in: after the first click, run the network on a crop around the object (RITM's ZoomIn).

The crop is taken from the previous prediction, grown by ``expansion_ratio`` (at least
``min_crop_size`` pixels a side) and resized so that its longer side is ``target_size``. The
stored crop is kept from click to click unless a positive click falls outside it or the new
candidate overlaps it too little. The reference's arithmetic is reproduced on purpose, including
its oddities (the NoC numbers depend on them):

- a positive click on the crop's last row or column counts as outside (``>=``);
- crops are cut and resized with bilinear ``align_corners=True``, but clicks are mapped with
  ``new_h * (y - rmin) / (rmax - rmin + 1)``, which is not the same mapping;
- when the previous prediction is empty, the un-zoomed image and the untouched clicks go to the
  network, yet the stored (stale) crop is still used to paste the result back;
- outside the crop the pasted probability is exactly 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ...clicks import Click
from .roi import Roi, object_roi


@dataclass(frozen=True)
class ZoomInState:
    """What ZoomIn remembers between clicks (kept by a session to undo a click)."""

    roi: Optional[Roi]
    prev_probs: Optional[torch.Tensor]


class ZoomIn:
    def __init__(self, target_size: int = 400, skip_clicks: int = 1, expansion_ratio: float = 1.4,
                 min_crop_size: int = 200, recompute_thresh_iou: float = 0.5,
                 prob_thresh: float = 0.5) -> None:
        self.target_size = target_size
        self.skip_clicks = skip_clicks
        self.expansion_ratio = expansion_ratio
        self.min_crop_size = min_crop_size
        self.recompute_thresh_iou = recompute_thresh_iou
        self.prob_thresh = prob_thresh
        self.roi: Optional[Roi] = None
        self._prev_probs: Optional[torch.Tensor] = None

    # -- state ---------------------------------------------------------------------------------
    def reset(self) -> None:
        self.roi = None
        self._prev_probs = None

    def state(self) -> ZoomInState:
        return ZoomInState(self.roi, self._prev_probs)

    def restore(self, state: ZoomInState) -> None:
        self.roi = state.roi
        self._prev_probs = state.prev_probs

    # -- forward and back ----------------------------------------------------------------------
    def transform(self, image_nd: torch.Tensor,
                  clicks: Sequence[Click]) -> tuple[torch.Tensor, list[Click]]:
        """Crop and resize ``image_nd`` (1, C, H, W) and map ``clicks`` into the crop."""
        if image_nd.shape[0] != 1:
            raise ValueError("ZoomIn works on one image at a time")
        clicks = list(clicks)
        if len(clicks) <= self.skip_clicks:
            return image_nd, clicks

        candidate = None
        if self._prev_probs is not None:
            pred_mask = (self._prev_probs > self.prob_thresh)[0, 0].cpu().numpy()
            if pred_mask.any():
                candidate = object_roi(pred_mask, clicks, self.expansion_ratio, self.min_crop_size)
        if candidate is None:
            # Nothing predicted yet: full image, clicks untouched; the stored ROI stays (stale).
            return image_nd, clicks

        if (self.roi is None or not self.roi.holds_positive_clicks(clicks)
                or candidate.iou(self.roi) < self.recompute_thresh_iou):
            self.roi = candidate

        roi = self.roi
        scale = self.target_size / max(roi.height, roi.width)
        new_h = int(round(roi.height * scale))
        new_w = int(round(roi.width * scale))
        crop = image_nd[:, :, roi.rmin:roi.rmax + 1, roi.cmin:roi.cmax + 1]
        crop = F.interpolate(crop, size=(new_h, new_w), mode="bilinear", align_corners=True)
        mapped = [c.moved(new_h * (c.y - roi.rmin) / roi.height,
                          new_w * (c.x - roi.cmin) / roi.width) for c in clicks]
        return crop, mapped

    def inv_transform(self, prob_map: torch.Tensor) -> torch.Tensor:
        """Paste the network's probability (1, 1, h, w) back into a full-size map of zeros."""
        if self.roi is None:
            self._prev_probs = prob_map
            return prob_map
        roi = self.roi
        resized = F.interpolate(prob_map, size=(roi.height, roi.width), mode="bilinear",
                                align_corners=True)
        if self._prev_probs is not None:
            full = torch.zeros_like(self._prev_probs, dtype=prob_map.dtype, device=prob_map.device)
            full[:, :, roi.rmin:roi.rmax + 1, roi.cmin:roi.cmax + 1] = resized
        else:
            full = resized
        self._prev_probs = full
        return full
