"""3x3 stride-1 convolutions by Winograd's minimal filtering, F(4x4, 3x3), on the CPU.

Each 4x4 block of outputs is computed from a 6x6 input tile with 36 products per channel pair
instead of 144: the convolution becomes 36 matrix products (tiles x C_in) @ (C_in x C_out),
framed by two small fixed linear maps (Lavin & Gray, 2016, with the points 0, +-1, +-2).
In exact arithmetic it is the same convolution; in float32 its rounding error is about two to
four times that of a direct convolution (measured on the STCN decoder's layers: 7e-6 of the
largest output against 2e-6; see ``Testing/python/test_stcn_fast.py``). oneDNN has no
Winograd kernels for AVX2, so on these CPUs the decoder's 48x48 and 96x96 convolutions, which
are most of its work, take about half the time this way.

Tensors are (N, C, H, W) in channels-last memory; the result is too.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

_BT = torch.tensor([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                    [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], dtype=torch.float64)
_G = torch.tensor([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                   [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], dtype=torch.float64)
_AT = torch.tensor([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
                    [0, 1, -1, 8, -8, 1]], dtype=torch.float64)
TILE = 4  # outputs per tile side
_INPUT_TILE = 6


def transform_weight(weight: torch.Tensor) -> torch.Tensor:
    """(C_out, C_in, 3, 3) -> (36, C_in, C_out), computed in float64 and rounded once (a few
    output channels at a time, so that the float64 temporaries stay small)."""
    out_channels, in_channels = weight.shape[:2]
    result = torch.empty((36, in_channels, out_channels), dtype=weight.dtype, device=weight.device)
    for start in range(0, out_channels, 32):
        part = weight.detach()[start:start + 32].double()
        u = torch.einsum("ai,ocij,bj->aboc", _G.to(part.device), part, _G.to(part.device))
        result[:, :, start:start + 32] = u.reshape(36, part.shape[0], in_channels).transpose(1, 2)
    return result


#: tiles transformed at a time: bounds the temporaries (36 x tiles x channels floats, about
#: 9 MB at 256 channels) and keeps them in the CPU caches
CHUNK_TILES = 256


def winograd_conv3x3(x: torch.Tensor, transformed: torch.Tensor, bias: torch.Tensor | None,
                     input_map: torch.Tensor, output_map: torch.Tensor) -> torch.Tensor:
    """``conv2d(x, weight, bias, padding=1)`` for ``transformed = transform_weight(weight)``;
    ``input_map``/``output_map`` are the 36x36 and 16x36 tile maps (see ``WinogradConv2d``)."""
    n, c, h, w = x.shape
    out_channels = transformed.shape[2]
    th, tw = math.ceil(h / TILE), math.ceil(w / TILE)
    # NHWC with the conv's one-pixel border, and the last tiles completed with zeros
    padded = F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, TILE * tw + 1 - w, 1, TILE * th + 1 - h))
    s_n, s_h, s_w, s_c = padded.stride()
    out = torch.empty((n, th, TILE, tw, TILE, out_channels), dtype=x.dtype, device=x.device)
    rows = max(1, min(th, CHUNK_TILES // tw))
    for image in range(n):
        for row in range(0, th, rows):
            count = min(rows, th - row)
            tiles = padded[image, TILE * row:].as_strided(
                (_INPUT_TILE, _INPUT_TILE, count, tw, c), (s_h, s_w, TILE * s_h, TILE * s_w, s_c))
            spectra = torch.mm(input_map, tiles.reshape(36, count * tw * c)).view(36, count * tw, c)
            products = torch.bmm(spectra, transformed)  # (36, tiles, C_out)
            blocks = torch.mm(output_map, products.view(36, count * tw * out_channels))
            blocks = blocks.view(TILE, TILE, count, tw, out_channels).permute(2, 0, 3, 1, 4)
            target = out[image, row:row + count]
            if bias is None:
                target.copy_(blocks)
            else:
                torch.add(blocks, bias, out=target)
    out = out.view(n, TILE * th, TILE * tw, out_channels)
    if TILE * th != h or TILE * tw != w:
        out = out[:, :h, :w].contiguous()
    return out.permute(0, 3, 1, 2)


class WinogradConv2d(nn.Module):
    """Drop-in for a 3x3, stride-1, padding-1 ``nn.Conv2d`` (inference only, float32 CPU
    tensors; anything else goes through ``conv`` itself). Holds the transformed weights
    (four times the conv's weights) and shares the bias with ``conv``."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        if not is_winograd_compatible(conv):
            raise ValueError(f"not a 3x3 stride-1 padding-1 convolution: {conv}")
        self.conv = conv
        self.register_buffer("transformed", transform_weight(conv.weight), persistent=False)
        self.register_buffer("input_map", torch.kron(_BT, _BT).to(conv.weight.dtype), persistent=False)
        self.register_buffer("output_map", torch.kron(_AT, _AT).to(conv.weight.dtype), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() != 4 or torch.is_grad_enabled():
            return self.conv(x)
        return winograd_conv3x3(x, self.transformed, self.conv.bias, self.input_map, self.output_map)


def is_winograd_compatible(conv: nn.Module) -> bool:
    return (isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.padding == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros")
