"""A tiny stand-in for the iSegFormer network, for fast tests of the predictor's plumbing.

It has the real network's call signature: ``forward(image, prev_mask, points) -> logits``.
Its logits are high near positive clicks and low near negative ones, so predictions are
object-shaped blobs and the zoom-in path is exercised. It records every call.
"""
from __future__ import annotations

import torch
from torch import nn


class FakeClickNet(nn.Module):
    def __init__(self, reach: float = 30.0) -> None:
        super().__init__()
        self.reach = reach
        self.scale = nn.Parameter(torch.tensor(1.0))
        self.calls: list[dict] = []

    def forward(self, image: torch.Tensor, prev_mask: torch.Tensor,
                points: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = image.shape
        self.calls.append({"hw": (height, width), "points": points.detach().cpu().clone(),
                           "batch": batch, "dtype": points.dtype})
        rows = torch.arange(height, dtype=torch.float64).view(1, height, 1)
        cols = torch.arange(width, dtype=torch.float64).view(1, 1, width)
        n = points.shape[1] // 2
        logits = torch.full((batch, height, width), -4.0, dtype=torch.float64)
        for b in range(batch):
            for row, p in enumerate(points[b].double()):
                y, x = float(p[0]), float(p[1])
                if max(y, x) < 0:
                    continue
                dist = torch.sqrt((rows[0] - y) ** 2 + (cols[0] - x) ** 2)
                bump = 8.0 * torch.clamp(1 - dist / self.reach, min=0)
                logits[b] += bump if row < n else -bump
        # a small, asymmetric dependence on the image, so that flip averaging is visible
        logits = logits + 0.1 * image[:, 0].double() * cols / width
        return (self.scale * logits.float()).unsqueeze(1)
