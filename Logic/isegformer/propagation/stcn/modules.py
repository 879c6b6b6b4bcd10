"""The STCN network's parts: key and value encoders, key projection, decoder, CBAM fuser.

Attribute names follow the official ``stcn.pth`` state dict, so that it loads unchanged.
Residual blocks here are pre-activation: ``x' = shortcut(x) + conv2(relu(conv1(relu(x))))``,
with a 3x3 conv as shortcut when the width changes.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .resnet import BasicBlock, Bottleneck, make_stage, stem_forward


class ResBlock(nn.Module):
    """Pre-activation residual block of two 3x3 convs (with biases)."""

    def __init__(self, indim: int, outdim: int | None = None):
        super().__init__()
        outdim = indim if outdim is None else outdim
        self.downsample = None if indim == outdim else nn.Conv2d(indim, outdim, 3, padding=1)
        self.conv1 = nn.Conv2d(indim, outdim, 3, padding=1)
        self.conv2 = nn.Conv2d(outdim, outdim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.conv2(torch.relu(self.conv1(torch.relu(x))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return shortcut + residual


class _ChannelGate(nn.Module):
    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        # index 0 is a flatten, 2 a ReLU: keeps the checkpoint's "mlp.1" / "mlp.3" names
        self.mlp = nn.Sequential(
            nn.Flatten(), nn.Linear(channels, channels // reduction), nn.ReLU(),
            nn.Linear(channels // reduction, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = F.avg_pool2d(x, x.shape[-2:])
        peak = F.max_pool2d(x, x.shape[-2:])
        gate = torch.sigmoid(self.mlp(avg) + self.mlp(peak))
        return x * gate[:, :, None, None]


class _SpatialConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 7, padding=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class _SpatialGate(nn.Module):
    def __init__(self):
        super().__init__()
        self.spatial = _SpatialConv()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.spatial(pooled))


class CBAM(nn.Module):
    """Convolutional block attention: a channel gate, then a spatial gate, both multiplicative."""

    def __init__(self, channels: int):
        super().__init__()
        self.ChannelGate = _ChannelGate(channels)
        self.SpatialGate = _SpatialGate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.SpatialGate(self.ChannelGate(x))


class FeatureFusionBlock(nn.Module):
    """Merges the value trunk's features with the frame's key features (stride 16)."""

    def __init__(self, indim: int, outdim: int):
        super().__init__()
        self.block1 = ResBlock(indim, outdim)
        self.attention = CBAM(outdim)
        self.block2 = ResBlock(outdim, outdim)

    def forward(self, x: torch.Tensor, key_f16: torch.Tensor) -> torch.Tensor:
        x = self.block1(torch.cat([x, key_f16], dim=1))
        return self.block2(x + self.attention(x))


class ValueEncoder(nn.Module):
    """ResNet-18 trunk to layer3 on [image, mask, other objects], fused with the key features."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(5, 64, 7, stride=2, padding=3, bias=True)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = make_stage(BasicBlock, 64, 64, 2, bias=True)
        self.layer2 = make_stage(BasicBlock, 64, 128, 2, stride=2, bias=True)
        self.layer3 = make_stage(BasicBlock, 128, 256, 2, stride=2, bias=True)
        self.fuser = FeatureFusionBlock(1024 + 256, 512)

    def forward(self, image: torch.Tensor, key_f16: torch.Tensor, mask: torch.Tensor,
                others: torch.Tensor) -> torch.Tensor:
        x = stem_forward(self.conv1, self.bn1, torch.cat([image, mask, others], dim=1))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fuser(x, key_f16)


class KeyEncoder(nn.Module):
    """ResNet-50 trunk to layer3; returns the stride 16, 8 and 4 features."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.res2 = make_stage(Bottleneck, 64, 64, 3)
        self.layer2 = make_stage(Bottleneck, 256, 128, 4, stride=2)
        self.layer3 = make_stage(Bottleneck, 512, 256, 6, stride=2)

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f4 = self.res2(stem_forward(self.conv1, self.bn1, image))
        f8 = self.layer2(f4)
        f16 = self.layer3(f8)
        return f16, f8, f4


class KeyProjection(nn.Module):
    """3x3 conv from the stride-16 features to the 64-channel matching key."""

    def __init__(self, indim: int, keydim: int):
        super().__init__()
        self.key_proj = nn.Conv2d(indim, keydim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.key_proj(x)


def upsample2(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


class UpsampleBlock(nn.Module):
    """Doubles the resolution of ``up`` and merges a skip connection projected by a 3x3 conv."""

    def __init__(self, skip_channels: int, up_channels: int, out_channels: int):
        super().__init__()
        self.skip_conv = nn.Conv2d(skip_channels, up_channels, 3, padding=1)
        self.out_conv = ResBlock(up_channels, out_channels)

    def forward(self, skip: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        return self.merge(self.skip_conv(skip), up)

    def merge(self, projected_skip: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        """Same as ``forward`` for a skip already passed through ``skip_conv``.

        The projection depends only on the query frame, so a propagator can compute it once per
        frame and reuse it every time the frame is decoded again.
        """
        return self.out_conv(projected_skip + upsample2(up))


class Decoder(nn.Module):
    """Stride-16 readout + query features -> one logit map at full resolution."""

    def __init__(self):
        super().__init__()
        self.compress = ResBlock(1024, 512)
        self.up_16_8 = UpsampleBlock(512, 512, 256)
        self.up_8_4 = UpsampleBlock(256, 256, 256)
        self.pred = nn.Conv2d(256, 1, 3, padding=1)

    def forward(self, x16: torch.Tensor, f8: torch.Tensor, f4: torch.Tensor) -> torch.Tensor:
        return self.decode(x16, self.up_16_8.skip_conv(f8), self.up_8_4.skip_conv(f4))

    def project_skips(self, f8: torch.Tensor, f4: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The query-only part of the decoder (see ``UpsampleBlock.merge``)."""
        return self.up_16_8.skip_conv(f8), self.up_8_4.skip_conv(f4)

    def decode(self, x16: torch.Tensor, skip8: torch.Tensor, skip4: torch.Tensor) -> torch.Tensor:
        """Logits (N, 1, H, W) from ``x16`` and the projected skips of ``project_skips``."""
        x = self.compress(x16)
        x = self.up_16_8.merge(skip8, x)
        x = self.up_8_4.merge(skip4, x)
        x = self.pred(torch.relu(x))
        return F.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False)
