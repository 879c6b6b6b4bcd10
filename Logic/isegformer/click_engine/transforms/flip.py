"""Horizontal-flip test-time augmentation: the batch gets a mirrored copy; logits are averaged.

The logits (not the probabilities) are averaged, and only then passed through the sigmoid.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ...clicks import Click


class HorizontalFlip:
    def transform(self, image_nd: torch.Tensor,
                  click_lists: Sequence[Sequence[Click]]) -> tuple[torch.Tensor, list[list[Click]]]:
        """(B, C, H, W) and B click lists -> (2B, C, H, W) and 2B click lists (mirrored last)."""
        width = image_nd.shape[3]
        mirrored = [[c.moved(c.y, width - c.x - 1) for c in clicks] for clicks in click_lists]
        return (torch.cat([image_nd, torch.flip(image_nd, dims=[3])], dim=0),
                [list(c) for c in click_lists] + mirrored)

    def inv_transform(self, logits: torch.Tensor) -> torch.Tensor:
        """(2B, 1, H, W) -> (B, 1, H, W): the mean of each map and its mirrored twin."""
        half = logits.shape[0] // 2
        return 0.5 * (logits[:half] + torch.flip(logits[half:], dims=[3]))
