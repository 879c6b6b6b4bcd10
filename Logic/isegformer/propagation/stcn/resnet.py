"""ResNet building blocks for the STCN encoders, written here so that no torchvision is needed.

The parameter names (``conv1``, ``bn1``, ``downsample.0`` ...) are those of the official
``stcn.pth``, which stores torchvision-style ResNet trunks:

* the key encoder is a ResNet-50 trunk (v1.5 bottlenecks: stride on the 3x3 conv, no conv bias);
* the value encoder is a ResNet-18 trunk whose convs all carry a bias (MiVOS' modified ResNet),
  including the 1x1 downsample conv in front of its BatchNorm.
"""
from __future__ import annotations

from typing import Optional, Type, Union

import torch
from torch import nn


def _downsample(inplanes: int, outplanes: int, stride: int, bias: bool) -> nn.Sequential:
    # Sequential so that the keys read "downsample.0.weight" (conv) and "downsample.1.*" (BN).
    return nn.Sequential(
        nn.Conv2d(inplanes, outplanes, kernel_size=1, stride=stride, bias=bias),
        nn.BatchNorm2d(outplanes),
    )


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: Optional[nn.Module] = None, bias: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=bias)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=bias)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + shortcut)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided) -> 1x1 bottleneck with a residual connection (ResNet-50, v1.5)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: Optional[nn.Module] = None, bias: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=bias)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=bias)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=bias)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return torch.relu(out + shortcut)


Block = Type[Union[BasicBlock, Bottleneck]]


def make_stage(block: Block, inplanes: int, planes: int, num_blocks: int, stride: int = 1,
               bias: bool = False) -> nn.Sequential:
    """One ResNet stage; the first block changes resolution/width through a 1x1 shortcut."""
    outplanes = planes * block.expansion
    downsample = None
    if stride != 1 or inplanes != outplanes:
        downsample = _downsample(inplanes, outplanes, stride, bias)
    blocks = [block(inplanes, planes, stride, downsample, bias=bias)]
    blocks += [block(outplanes, planes, bias=bias) for _ in range(1, num_blocks)]
    return nn.Sequential(*blocks)


def stem_forward(conv1: nn.Conv2d, bn1: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """The ResNet stem: 7x7/2 conv, BN, ReLU, 3x3/2 max-pool with padding 1 (stride 4 overall)."""
    x = torch.relu(bn1(conv1(x)))
    return nn.functional.max_pool2d(x, kernel_size=3, stride=2, padding=1)
