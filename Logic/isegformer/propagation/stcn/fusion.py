"""MiVOS FusionNet: blends two propagation directions between two annotated frames.

``FusionNet().state_dict()`` has exactly the 12 keys of the official ``fusion_stcn.pth``.
"""
from __future__ import annotations

import torch
from torch import nn


class FusionNet(nn.Module):
    """Logit of the fused object probability from the image, both estimates, the attention
    map of the annotation change and the relative distances to the two annotated frames."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(9, 32, 3, padding=1), nn.ReLU())
        self.conv2 = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1))
        self.conv3 = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1))
        self.final_conv = nn.Conv2d(32, 1, 3, padding=1)

    def forward(self, image: torch.Tensor, prev: torch.Tensor, curr: torch.Tensor,
                attention: torch.Tensor, distances: torch.Tensor) -> torch.Tensor:
        """image (N, 3, H, W), prev/curr (N, 1, H, W), attention (N, 2, H, W), distances (N, 2)."""
        height, width = image.shape[-2:]
        dist = distances[:, :, None, None].expand(-1, -1, height, width)
        x = self.conv1(torch.cat([image, prev, curr, attention, dist], dim=1))
        x = torch.relu(x + self.conv2(x))
        x = torch.relu(x + self.conv3(x))
        return self.final_conv(x)
