"""Click maps: each click becomes a filled disk of radius 5 pixels in its own channel.

Matches the reference's DistMaps with ``use_disks=True``: the squared distance from pixel
(r, c) to a click (y, x) is ``(r - y)^2 + (c - x)^2`` in float32, with fractional click
coordinates used as they are (never rounded); a pixel is 1 when that is <= radius^2 for any
click of the group. Rows whose ``max(y, x) < 0`` are padding and draw nothing.
"""
from __future__ import annotations

import torch

from ..errors import InvalidInputError

CLICK_RADIUS = 5.0


def click_disks(
    points: torch.Tensor, height: int, width: int, radius: float = CLICK_RADIUS
) -> torch.Tensor:
    """Disk maps (B, 2, height, width) float32, channel 0 positive, channel 1 negative.

    ``points`` is (B, 2N, 3) with rows ``[y, x, index]``: rows 0..N-1 are positive clicks,
    rows N..2N-1 negative, padding rows ``(-1, -1, -1)``. The index column is ignored.
    """
    if points.ndim != 3 or points.shape[2] != 3 or points.shape[1] % 2 != 0:
        raise InvalidInputError(
            f"Clicks must be a (B, 2N, 3) tensor of [y, x, index] rows (N positive rows, then N "
            f"negative rows), got shape {tuple(points.shape)}."
        )
    batch, rows, _ = points.shape
    n = rows // 2
    device = points.device
    if n == 0:
        return torch.zeros(batch, 2, height, width, dtype=torch.float32, device=device)

    # The reference subtracts the clicks from a float32 pixel grid in place: the difference is
    # computed in the promoted type (float64 clicks after zoom-in) and stored as float32, and
    # everything after that is float32. Doing the same keeps the disk edges bit-exact.
    compute = torch.promote_types(torch.float32, points.dtype)
    yx = points[..., :2].to(compute)
    valid = yx.amax(dim=-1) >= 0  # (B, 2N)
    r = torch.arange(height, dtype=torch.float32, device=device).to(compute)
    c = torch.arange(width, dtype=torch.float32, device=device).to(compute)
    dy2 = (r.view(1, 1, -1) - yx[..., 0:1]).to(torch.float32).square()  # (B, 2N, H)
    dx2 = (c.view(1, 1, -1) - yx[..., 1:2]).to(torch.float32).square()  # (B, 2N, W)
    limit = radius * radius
    # A click's disk only reaches rows whose dy^2 <= limit; padding rows reach none.
    dy2 = dy2.masked_fill(~valid.unsqueeze(-1), float("inf"))

    out = torch.empty(batch, 2, height, width, dtype=torch.float32, device=device)
    for group in range(2):
        sl = slice(group * n, (group + 1) * n)
        inside = (dy2[:, sl, :, None] + dx2[:, sl, None, :]) <= limit  # (B, N, H, W)
        out[:, group] = inside.any(dim=1)
    return out
