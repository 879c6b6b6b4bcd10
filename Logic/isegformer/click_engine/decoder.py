"""The SegFormer-style all-MLP decoder: four stage maps -> one logit map at 1/4 resolution."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class ConvReLU(nn.Module):
    """1x1 conv with bias, then ReLU (named ``.conv`` as in the official checkpoints)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x))


class MLPDecoder(nn.Module):
    """Project each stage to ``channels``, resize to the stage-0 grid, concatenate, fuse, classify.

    Stage maps are resized bilinearly with ``align_corners=False`` (as the reference head
    does); the caller upsamples the result to the image size.
    """

    def __init__(self, in_channels: Sequence[int], channels: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.convs = nn.ModuleList(ConvReLU(c, channels) for c in in_channels)
        self.fusion_conv = ConvReLU(channels * len(in_channels), channels)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, 1, kernel_size=1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[2:]
        projected = []
        for conv, feature in zip(self.convs, features):
            y = conv(feature)
            if y.shape[2:] != size:
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            projected.append(y)
        fused = self.fusion_conv(torch.cat(projected, dim=1))
        return self.conv_seg(self.dropout(fused))
