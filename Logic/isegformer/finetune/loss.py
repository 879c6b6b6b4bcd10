"""The normalised focal loss of RITM/iSegFormer training (alpha 0.5, gamma 2 in the paper).

Focal loss down-weights the pixels the model already gets right by ``(1 - p_t)^gamma``. The
*normalised* variant rescales those weights per image so that they sum to the number of valid
pixels: the loss keeps the scale of a plain cross-entropy however easy the image is, which keeps
the learning rate meaningful late in training when almost every pixel is easy. The rescaling
factor is treated as a constant (no gradient flows through it), as in the reference.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import InvalidInputError

IGNORE_LABEL = -1.0


def normalized_focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    alpha: float = 0.5,
    gamma: float = 2.0,
    eps: float = 1e-12,
) -> torch.Tensor:
    """Loss per sample, shape (B,), for logits and targets of shape (B, 1, H, W).

    ``target`` holds 1 (object), 0 (background) or -1 (ignored, e.g. padding).
    """
    if logits.shape != target.shape or logits.ndim != 4:
        raise InvalidInputError(
            f"The loss needs logits and targets of the same (B, 1, H, W) shape, got "
            f"{tuple(logits.shape)} and {tuple(target.shape)}."
        )
    logits = logits.float()
    target = target.float()
    valid = target != IGNORE_LABEL
    valid_f = valid.float()
    positive = target > 0.5

    prob = torch.sigmoid(logits)
    # p_t: the probability the model gives to the true class (1 for ignored pixels: no loss).
    p_true = torch.where(valid, 1.0 - (target - prob).abs(), torch.ones_like(prob))
    class_weight = torch.where(positive, alpha * valid_f, (1.0 - alpha) * valid_f)

    focus = (1.0 - p_true) ** gamma
    valid_count = valid_f.sum(dim=(-2, -1), keepdim=True)
    focus_sum = focus.sum(dim=(-2, -1), keepdim=True)
    scale = (valid_count / (focus_sum + eps)).detach()

    log_p = torch.log(torch.clamp(p_true + eps, max=1.0))
    pixel_loss = -class_weight * focus * scale * log_p * valid_f
    per_sample_valid = valid_f.flatten(1).sum(dim=1)
    return pixel_loss.flatten(1).sum(dim=1) / (per_sample_valid + eps)


class NormalizedFocalLoss(nn.Module):
    """:func:`normalized_focal_loss` as a module, averaged over the batch."""

    def __init__(self, alpha: float = 0.5, gamma: float = 2.0) -> None:
        super().__init__()
        self.alpha = float(alpha)
        self.gamma = float(gamma)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return normalized_focal_loss(logits, target, self.alpha, self.gamma).mean()
