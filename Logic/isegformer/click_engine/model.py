"""iSegFormer (MICCAI 2022): an image, the previous mask and the clicks in, mask logits out.

Where a click goes, step by step (one call of :meth:`ISegFormer.forward`):

1. The clicks arrive as rows ``[y, x, index]`` (row, column, click number) of ``points``:
   the first half of the rows are positive clicks, the second half negative, unused rows are
   ``(-1, -1, -1)``. ``disks.click_disks`` draws each click as a filled disk of radius 5
   pixels around its exact (fractional) position: one channel for positive, one for negative.
2. The previous probability map (the model's own last answer, zeros before the first click)
   is put in front of them: the click maps are ``[prev, positive disks, negative disks]``.
3. The image (RGB in [0, 1]) is normalised with the ImageNet mean and std.
4. The backbone (``swin.SwinBackbone``) embeds the image and the click maps with the SAME
   4x4 patch embedding and adds the two: from here on the click is part of every token of its
   4x4 patch, and attention carries it to the rest of the image through four Swin stages.
5. The decoder (``decoder.MLPDecoder``) merges the four stage outputs into one logit map at
   1/4 resolution, which is upsampled to the image size (bilinear, corners aligned).

The result is a logit per pixel; the predictor applies the sigmoid, the zoom-in and the
flip averaging (see ``predictor.py``), and thresholds at 0.49.
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidInputError
from .cpu_blas import products_here, single_thread_blas
from .decoder import MLPDecoder
from .disks import CLICK_RADIUS, click_disks
from .sample_streams import run_in_streams, stream_plan
from .swin import SwinBackbone

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ClickModelConfig:
    """The shape of an iSegFormer network (what a checkpoint's tensors determine)."""

    embed_dim: int = 128
    depths: tuple[int, ...] = (2, 2, 18, 2)
    num_heads: tuple[int, ...] = (4, 8, 16, 32)
    window: int = 12
    patch_size: int = 4
    mlp_ratio: float = 4.0
    head_channels: int = 256
    click_radius: float = CLICK_RADIUS
    drop_path_rate: float = 0.3
    dropout: float = 0.1
    name: str = field(default="custom", compare=False)

    @property
    def stage_channels(self) -> list[int]:
        return [self.embed_dim * 2 ** i for i in range(len(self.depths))]

    def to_plain(self) -> dict[str, Any]:
        """Plain data for a checkpoint's config (see isegformer.checkpoint)."""
        plain = asdict(self)
        plain["depths"], plain["num_heads"] = list(self.depths), list(self.num_heads)
        return {"class": "isegformer.click_engine.model.ISegFormer", "params": plain}


class ISegFormer(nn.Module):
    """The iSegFormer click model; see the module docstring for the data path.

    ``autocast_dtype`` (None by default) runs the backbone and decoder under CUDA autocast with
    that dtype (torch.float16 or torch.bfloat16) when the input is on a CUDA device; the disks
    and the final upsampling stay float32 and the output is float32. It is ignored on CPU,
    where the model always computes in float32.

    ``sample_streams`` (True by default): in eval mode on the CPU with two or more torch
    threads, the samples of a batch (a click's image and its flip) run side by side, each on
    its share of the threads; same result, faster (``sample_streams.py``). In training the
    batch always runs as one, since batch norms see the whole batch there.
    """

    def __init__(self, config: ClickModelConfig | None = None) -> None:
        super().__init__()
        self.config = config or ClickModelConfig()
        c = self.config
        self.backbone = SwinBackbone(c.embed_dim, c.depths, c.num_heads, c.window, c.patch_size,
                                     c.mlp_ratio, c.drop_path_rate)
        self.head = MLPDecoder(c.stage_channels, c.head_channels, c.dropout)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.autocast_dtype: torch.dtype | None = None
        self.sample_streams = True
        #: set by the int8 fast CPU mode: its layers quantize each call's input with one scale,
        #: so every sample runs on its own whatever the thread count (``sample_streams.py``)
        self.split_samples = False

    @property
    def variant(self) -> str:
        return self.config.name

    def forward(self, image: torch.Tensor, prev_mask: torch.Tensor,
                points: torch.Tensor) -> torch.Tensor:
        """Logits (B, 1, H, W) float32 for images (B, 3, H, W) in [0, 1], previous probability
        maps (B, 1, H, W) and clicks (B, 2N, 3) ``[y, x, index]``, first N rows positive."""
        return self.forward_intermediates(image, prev_mask, points)["logits"]

    def forward_intermediates(self, image: torch.Tensor, prev_mask: torch.Tensor,
                              points: torch.Tensor) -> dict[str, Any]:
        """Like :meth:`forward`, also returning ``disks`` (B, 2, H, W), the stage ``features``
        (list of 4) and ``head_logits_quarter`` (B, 1, ceil(H/4), ceil(W/4)); for tests and
        debugging."""
        self._check_inputs(image, prev_mask, points)
        height, width = image.shape[2:]
        disks = click_disks(points, height, width, self.config.click_radius)
        click_maps = torch.cat([prev_mask.to(torch.float32), disks], dim=1)
        normalised = (image.to(torch.float32) - self.mean) / self.std

        use_autocast = self.autocast_dtype is not None and image.device.type == "cuda"
        # The int8 mode keeps PyTorch's BLAS for its float layers: OpenBLAS serves one-thread
        # calls only (cpu_blas.py), and an int8 click must not depend on the thread count.
        streams = not self.training and (self.sample_streams or self.split_samples)
        if image.device.type == "cpu" and not self.training and not self.split_samples:
            blas = single_thread_blas(stream_plan(image.shape[0])[1] if self.sample_streams
                                      else torch.get_num_threads())
        else:
            blas = contextlib.nullcontext()
        with torch.autocast("cuda", dtype=self.autocast_dtype or torch.float16,
                            enabled=use_autocast), blas:
            if streams:
                features, quarter = run_in_streams(self._features, normalised, click_maps,
                                                   split_always=self.split_samples,
                                                   parallel=self.sample_streams)
            else:
                features, quarter = self._features(normalised, click_maps)
        quarter = quarter.float()
        logits = F.interpolate(quarter, size=(height, width), mode="bilinear", align_corners=True)
        return {"logits": logits, "disks": disks, "features": features,
                "head_logits_quarter": quarter}

    def _features(self, normalised: torch.Tensor, click_maps: torch.Tensor):
        with products_here():  # in each sample stream's thread
            features = self.backbone(normalised, click_maps)
            return features, self.head(features)

    @staticmethod
    def _check_inputs(image: torch.Tensor, prev_mask: torch.Tensor, points: torch.Tensor) -> None:
        if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[1] != 3:
            raise InvalidInputError(
                "The image must be a (B, 3, H, W) tensor in [0, 1] (gray images replicated to 3 "
                f"channels), got {getattr(image, 'shape', type(image))}."
            )
        b, _, h, w = image.shape
        if h < 1 or w < 1 or b < 1:
            raise InvalidInputError(f"The image is empty: shape {tuple(image.shape)}.")
        if not isinstance(prev_mask, torch.Tensor) or tuple(prev_mask.shape) != (b, 1, h, w):
            raise InvalidInputError(
                f"The previous mask must be a ({b}, 1, {h}, {w}) tensor matching the image, got "
                f"{getattr(prev_mask, 'shape', type(prev_mask))}."
            )
        if not isinstance(points, torch.Tensor) or points.ndim != 3 or points.shape[0] != b:
            raise InvalidInputError(
                f"The clicks must be a ({b}, 2N, 3) tensor of [y, x, index] rows, got "
                f"{getattr(points, 'shape', type(points))}."
            )
        if not image.is_floating_point():
            raise InvalidInputError(
                f"The image must be a floating-point tensor in [0, 1], got {image.dtype} "
                "(divide uint8 images by 255)."
            )
