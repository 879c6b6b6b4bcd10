"""The Swin Transformer backbone of iSegFormer, in the order of operations of the reference.

The reference uses the segmentation variant of Swin (mmseg style), which differs from timm's
classification Swin in ways that change the numbers at most image sizes:

- each block normalises first, then zero-pads the token grid to a multiple of the window,
  then (odd blocks) rolls by half a window; the shifted-window mask is built on the padded
  grid; after attention it rolls back and crops the padding;
- windows are never shrunk and the shift is never switched off for small grids;
- a stage's output is taken before its patch merging, through that stage's own LayerNorm;
- patch merging zero-pads odd grids to even.

Module and parameter names follow the official checkpoints (``layers.i.blocks.j.attn.qkv``,
``layers.i.downsample``, ``norm{i}``...) so that they load without renaming.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

MASKED = -100.0  # the reference's additive mask between shifted regions


def relative_position_index(window: int) -> torch.Tensor:
    """(window², window²) int64: index into the bias table for each pair of window positions."""
    rows, cols = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    rows, cols = rows.flatten(), cols.flatten()
    dy = rows[:, None] - rows[None, :] + (window - 1)
    dx = cols[:, None] - cols[None, :] + (window - 1)
    return dy * (2 * window - 1) + dx


def shifted_window_mask(padded_h: int, padded_w: int, window: int, shift: int,
                        device: torch.device) -> torch.Tensor:
    """(num_windows, window², window²) additive mask: -100 between tokens of different regions.

    After the roll, the last ``window`` rows (and columns) of the padded grid hold tokens that
    came from two far-apart places; they are split at ``shift`` from the end into regions that
    must not attend to each other.
    """
    def region(size: int) -> torch.Tensor:
        idx = torch.arange(size, device=device)
        return (idx >= size - window).long() + (idx >= size - shift).long()

    labels = region(padded_h)[:, None] * 3 + region(padded_w)[None, :]  # (Hp, Wp)
    windows = (
        labels.view(padded_h // window, window, padded_w // window, window)
        .permute(0, 2, 1, 3)
        .reshape(-1, window * window)
    )
    different = windows[:, None, :] != windows[:, :, None]
    return torch.zeros(different.shape, device=device).masked_fill_(different, MASKED)


def partition_windows(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * num_windows, window², C), windows in row-major order."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, c)


def merge_windows(windows: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`partition_windows`: -> (B, H, W, C)."""
    c = windows.shape[-1]
    x = windows.view(-1, h // window, w // window, window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, h, w, c)


class DropPath(nn.Module):
    """Stochastic depth: drops a sample's residual branch in training (identity in eval)."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        return x * x.new_empty(shape).bernoulli_(keep) / keep


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside each window, with a learned relative position bias."""

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.window = window
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window - 1) ** 2, num_heads)
        )
        # Not saved: it is a fixed function of the window size, computed here, never trusted
        # from a file (the loader checks a file's copy against it).
        self.register_buffer(
            "relative_position_index", relative_position_index(window), persistent=False
        )
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def position_bias(self) -> torch.Tensor:
        """(heads, window², window²)."""
        n = self.window * self.window
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(n, n, self.num_heads).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, batch: int, mask: torch.Tensor | None) -> torch.Tensor:
        """x: (batch * num_windows, window², C); mask: (num_windows, window², window²) or None."""
        bw, n, c = x.shape
        heads, head_dim = self.num_heads, c // self.num_heads
        bias = self.position_bias()
        qkv = self.qkv(x)
        if mask is None:
            qkv = qkv.view(bw, n, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
            attn_bias = bias.unsqueeze(0).to(qkv.dtype)
        else:
            # Fold the windows into the head axis so that one (windows*heads, n, n) bias serves
            # every image of the batch by broadcasting.
            nw = mask.shape[0]
            qkv = qkv.view(batch, nw, n, 3, heads, head_dim).permute(3, 0, 1, 4, 2, 5)
            qkv = qkv.reshape(3, batch, nw * heads, n, head_dim)
            attn_bias = (bias.unsqueeze(0) + mask.unsqueeze(1)).reshape(1, nw * heads, n, n)
            attn_bias = attn_bias.to(qkv.dtype)
        q, k, v = qkv.unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, scale=self.scale)
        if mask is None:
            out = out.transpose(1, 2).reshape(bw, n, c)
        else:
            out = out.view(batch, -1, heads, n, head_dim).transpose(2, 3).reshape(bw, n, c)
        return self.proj(out)


class SwinBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, window: int, shift: int,
                 mlp_ratio: float, drop_path: float) -> None:
        super().__init__()
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, window)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, h: int, w: int, mask: torch.Tensor) -> torch.Tensor:
        """x: (B, h*w, C) tokens; mask: the stage's shifted-window mask (used by odd blocks)."""
        b, _, c = x.shape
        win = self.window
        y = self.norm1(x).view(b, h, w, c)
        pad_b, pad_r = (-h) % win, (-w) % win
        if pad_b or pad_r:
            y = F.pad(y, (0, 0, 0, pad_r, 0, pad_b))
        hp, wp = h + pad_b, w + pad_r
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
        y = self.attn(partition_windows(y, win), b, mask if self.shift else None)
        y = merge_windows(y, win, hp, wp)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        if pad_b or pad_r:
            y = y[:, :h, :w, :]
        x = x + self.drop_path(y.reshape(b, h * w, c))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """Halves the grid: 2x2 neighbours are concatenated (4C), normalised and projected to 2C."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, _, c = x.shape
        x = x.view(b, h, w, c)
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat(
            [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1
        )
        return self.reduction(self.norm(x.reshape(b, -1, 4 * c)))


class SwinStage(nn.Module):
    """Blocks of one resolution, then (except the last stage) patch merging."""

    def __init__(self, dim: int, depth: int, num_heads: int, window: int, mlp_ratio: float,
                 drop_paths: Sequence[float], downsample: bool) -> None:
        super().__init__()
        self.window = window
        self.blocks = nn.ModuleList(
            SwinBlock(dim, num_heads, window, 0 if i % 2 == 0 else window // 2, mlp_ratio,
                      drop_paths[i])
            for i in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None
        self.use_checkpointing = False

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        win = self.window
        mask = shifted_window_mask(math.ceil(h / win) * win, math.ceil(w / win) * win, win,
                                   win // 2, x.device)
        for block in self.blocks:
            if self.use_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, h, w, mask, use_reentrant=False)
            else:
                x = block(x, h, w, mask)
        return x


class SwinBackbone(nn.Module):
    """Four Swin stages over the summed image and click embeddings; returns 4 feature maps.

    Set ``use_checkpointing = True`` to trade compute for memory while training (gradient
    checkpointing of every block); it has no effect in eval mode.
    """

    def __init__(self, embed_dim: int, depths: Sequence[int], num_heads: Sequence[int],
                 window: int = 12, patch_size: int = 4, mlp_ratio: float = 4.0,
                 drop_path_rate: float = 0.3) -> None:
        super().__init__()
        self.num_features = [embed_dim * 2 ** i for i in range(len(depths))]
        self.patch_embed = PatchEmbed(patch_size, 3, embed_dim)
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        starts = [sum(depths[:i]) for i in range(len(depths))]
        self.layers = nn.ModuleList(
            SwinStage(self.num_features[i], depths[i], num_heads[i], window, mlp_ratio,
                      rates[starts[i]:starts[i] + depths[i]], downsample=i < len(depths) - 1)
            for i in range(len(depths))
        )
        for i, channels in enumerate(self.num_features):
            self.add_module(f"norm{i}", nn.LayerNorm(channels))

    @property
    def use_checkpointing(self) -> bool:
        return all(stage.use_checkpointing for stage in self.layers)

    @use_checkpointing.setter
    def use_checkpointing(self, value: bool) -> None:
        for stage in self.layers:
            stage.use_checkpointing = bool(value)

    def forward(self, image: torch.Tensor, click_maps: torch.Tensor) -> list[torch.Tensor]:
        """image: normalised (B, 3, H, W); click_maps: (B, 3, H, W) [prev, pos, neg].

        Returns one (B, C_i, h_i, w_i) map per stage, at strides 4, 8, 16, 32.
        """
        x = self.patch_embed(image) + self.patch_embed(click_maps)  # ONE embedding for both
        b, c, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)
        outputs = []
        for i, stage in enumerate(self.layers):
            x = stage(x, h, w)
            norm = getattr(self, f"norm{i}")
            outputs.append(norm(x).view(b, h, w, -1).permute(0, 3, 1, 2))
            if stage.downsample is not None:
                x = stage.downsample(x, h, w)
                h, w = (h + 1) // 2, (w + 1) // 2
        return outputs


class PatchEmbed(nn.Module):
    """Zero-pad right/bottom to a multiple of the patch, conv patch x patch, LayerNorm."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        pad_b, pad_r = (-x.shape[2]) % p, (-x.shape[3]) % p
        if pad_b or pad_r:
            x = F.pad(x, (0, pad_r, 0, pad_b))
        x = self.proj(x)
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
