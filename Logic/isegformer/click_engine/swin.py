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

import functools
import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .cpu_blas import project

MASKED = -100.0  # the reference's additive mask between shifted regions


def relative_position_index(window: int) -> torch.Tensor:
    """(window², window²) int64: index into the bias table for each pair of window positions."""
    rows, cols = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    rows, cols = rows.flatten(), cols.flatten()
    dy = rows[:, None] - rows[None, :] + (window - 1)
    dx = cols[:, None] - cols[None, :] + (window - 1)
    return dy * (2 * window - 1) + dx


def _cached_constant(function):
    """Memoise a function of plain arguments that returns constant tensors.

    The tensors are built outside inference mode and autograd, so that the same cached tensor
    serves inference, no-grad and training calls alike. Callers must never modify them.
    """
    @functools.lru_cache(maxsize=16)
    @functools.wraps(function)
    def cached(*args):
        with torch.inference_mode(False), torch.no_grad():
            return function(*args)
    return cached


@_cached_constant
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


@_cached_constant
def window_token_order(h: int, w: int, window: int, shift: int,
                       device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Index maps between a grid's tokens and its (padded, rolled) windows, as one gather each.

    Padding the (h, w) grid to a multiple of ``window``, rolling it by ``-shift`` and cutting it
    into windows only moves tokens around, so it is one ``index_select``; this replaces a pad,
    two rolls (each a cat of two slices per axis on CPU), two permute copies and a crop.

    Returns ``(gather, scatter)``: ``gather`` (Hp*Wp,) gives, for each token of the windows in
    row-major window order, its index in the flattened grid, or ``h * w`` for a padding token
    (the caller appends one zero token); ``scatter`` (h*w,) gives each grid token's position in
    the windowed order (padding tokens are simply never read back).
    """
    hp, wp = math.ceil(h / window) * window, math.ceil(w / window) * window
    # After torch.roll(y, -shift), position i holds the token from (i + shift) mod size.
    rows = ((torch.arange(hp) + shift) % hp)[:, None].expand(hp, wp)
    cols = ((torch.arange(wp) + shift) % wp)[None, :].expand(hp, wp)
    token = torch.where((rows < h) & (cols < w), rows * w + cols, h * w)
    gather = (
        token.reshape(hp // window, window, wp // window, window).permute(0, 2, 1, 3).reshape(-1)
    )
    real = gather < h * w
    scatter = torch.empty(h * w, dtype=torch.long)
    scatter[gather[real]] = torch.arange(hp * wp)[real]
    return gather.to(device), scatter.to(device)


def linear_bias(linear: nn.Module) -> torch.Tensor:
    """The bias of a float ``nn.Linear`` or of its int8 replacement (where ``bias`` is a method)."""
    bias = linear.bias
    return bias() if callable(bias) else bias


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
        return project(self.fc2, self.act(project(self.fc1, x)))


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
        self._bias_cache: torch.Tensor | None = None
        self._bias_cache_key: tuple | None = None

    def position_bias(self) -> torch.Tensor:
        """(heads, window², window²)."""
        n = self.window * self.window
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(n, n, self.num_heads).permute(2, 0, 1)

    def attention_bias(self, mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
        """The additive bias for SDPA: (1, heads, n, n), or (1, windows*heads, n, n) with a mask.

        Gathering the position bias from its table costs about as much as the attention on
        CPU and only changes with the table, so when no gradient can flow to the table it is
        kept, keyed by the table's identity and version counter (bumped by load_state_dict,
        optimiser steps and any other in-place change; ``.to()`` makes a new tensor). Only the
        (heads, n, n) bias is kept: the sum with a mask is windows times larger (hundreds of MB
        over all blocks) and cheap to redo.
        """
        bias = self._cached_position_bias(dtype).unsqueeze(0)
        if mask is not None:
            # Windows folded into the head axis: one bias serves every image of the batch.
            n = bias.shape[-1]
            bias = (bias + mask.to(dtype).unsqueeze(1)).reshape(1, -1, n, n)
        return bias

    def _cached_position_bias(self, dtype: torch.dtype) -> torch.Tensor:
        table = self.relative_position_bias_table
        if torch.is_grad_enabled() and table.requires_grad:
            return self.position_bias().to(dtype)
        try:
            version = table._version
        except RuntimeError:  # a table created in inference mode has no version counter
            return self.position_bias().to(dtype)
        key = (table.data_ptr(), version, table.device, dtype)
        if self._bias_cache_key != key:
            with torch.inference_mode(False), torch.no_grad():
                self._bias_cache = self.position_bias().to(dtype).contiguous()
            self._bias_cache_key = key
        return self._bias_cache

    def attend(self, qkv: torch.Tensor, batch: int, mask: torch.Tensor | None) -> torch.Tensor:
        """Attention from the ``qkv`` projections of each window, before ``proj``.

        qkv: (batch * num_windows, window², 3C); mask: (num_windows, window², window²) or None.
        Returns (batch * num_windows, window², C). The projections and ``proj`` are per token,
        so the caller runs them on the real tokens only (see :class:`SwinBlock`).
        """
        bw, n, c3 = qkv.shape
        c = c3 // 3
        heads, head_dim = self.num_heads, c // self.num_heads
        if mask is None:
            qkv = qkv.view(bw, n, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
        else:
            nw = mask.shape[0]
            qkv = qkv.view(batch, nw, n, 3, heads, head_dim).permute(3, 0, 1, 4, 2, 5)
            qkv = qkv.reshape(3, batch, nw * heads, n, head_dim)
        attn_bias = self.attention_bias(mask, qkv.dtype)
        q, k, v = qkv.unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, scale=self.scale)
        if mask is None:
            return out.transpose(1, 2).reshape(bw, n, c)
        return out.view(batch, -1, heads, n, head_dim).transpose(2, 3).reshape(bw, n, c)

    def forward(self, x: torch.Tensor, batch: int, mask: torch.Tensor | None) -> torch.Tensor:
        """x: (batch * num_windows, window², C) -> same; see :meth:`attend`."""
        return project(self.proj, self.attend(project(self.qkv, x), batch, mask))


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
        b, tokens, c = x.shape
        win = self.window
        hp, wp = math.ceil(h / win) * win, math.ceil(w / win) * win
        # Pad, roll and window partition as one gather (and its inverse after attention).
        gather, scatter = window_token_order(h, w, win, self.shift, x.device)
        qkv = project(self.attn.qkv, self.norm1(x))
        if hp * wp != tokens:
            # A zero padding token projects to exactly the qkv bias, so the projection runs on
            # the real tokens only and the padding positions all read this one bias token.
            qkv = torch.cat([qkv, linear_bias(self.attn.qkv).to(qkv.dtype).expand(b, 1, -1)],
                            dim=1)
        windows = qkv.index_select(1, gather).view(-1, win * win, 3 * c)
        y = self.attn.attend(windows, b, mask if self.shift else None)
        y = project(self.attn.proj, y.view(b, hp * wp, c).index_select(1, scatter))
        x = x + self.drop_path(y)
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
            h, w = h + h % 2, w + w % 2
        # The 4C vector of a 2x2 cell is [(0,0), (1,0), (0,1), (1,1)] as (row, column) offsets,
        # i.e. column offset major: one permuted copy instead of four strided slices and a cat.
        x = x.view(b, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 4, 2, 5)
        return project(self.reduction, self.norm(x.reshape(b, -1, 4 * c)))


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
