"""An inference-only view of an STCN network: batch norms folded into their convolutions, and
the decoder's large 3x3 convolutions computed by Winograd's algorithm on the CPU.

The view shares every parameter it does not change with the given network, which is left as
it was (its state dict, its modules); only the folded convolutions (the two encoders' ResNet
trunks, about 45 MB) and the Winograd weights (four times the weights of the layers that use
it, about 300 MB) are new. A later change of the network's weights is not seen by a view made
before it.

* Folding: ``bn(conv(x)) = conv'(x)`` with ``w' = w * g / sqrt(var + eps)`` and
  ``b' = (b - mean) * g / sqrt(var + eps) + beta``, computed in float64 and rounded once, so the
  outputs differ from the unfolded network's by float rounding only (measured in
  ``Testing/python/test_stcn_fast.py``); it saves the batch norms' passes over the encoders'
  activations.
* Winograd: see :mod:`.winograd`; the decoder's compress block at 24x24, its upsampling blocks
  at 48x48 and 96x96 and its two skip projections run about twice as fast, with about three
  times the rounding error of a direct convolution (measured on the full-width layers:
  8-9e-6 of the largest output against 3e-6).
"""
from __future__ import annotations

import copy
from typing import Iterable, Tuple

import torch
from torch import nn

from .network import STCNNetwork
from .winograd import WinogradConv2d, is_winograd_compatible

#: the decoder's 3x3 convolutions from 512 channels up, at every resolution, and its two skip
#: projections: the 1/16 compress block runs once per decoded frame and the 1/8 skip projection
#: once per encoded frame, together 227 MB of transformed weights for about a tenth of a
#: batch propagation's time
WINOGRAD_LAYERS = (
    "decoder.compress.downsample",
    "decoder.compress.conv1",
    "decoder.compress.conv2",
    "decoder.up_16_8.skip_conv",
    "decoder.up_16_8.out_conv.downsample",
    "decoder.up_16_8.out_conv.conv1",
    "decoder.up_16_8.out_conv.conv2",
    "decoder.up_8_4.skip_conv",
    "decoder.up_8_4.out_conv.conv1",
    "decoder.up_8_4.out_conv.conv2",
)


def inference_network(network: STCNNetwork, *, fold_batch_norms: bool = True,
                      winograd: bool = False) -> STCNNetwork:
    """A view of ``network`` (in eval mode) for inference; ``network`` itself is not changed."""
    if network.training:
        raise ValueError("inference_network needs a network in eval mode (batch-norm statistics)")
    view = _shallow(network)
    if fold_batch_norms:
        for path, conv, norm_path in list(_conv_norm_pairs(network)):
            view = _replace(view, path, fold(conv, _get(network, norm_path)))
            view = _replace(view, norm_path, nn.Identity())
    if winograd:
        for path in WINOGRAD_LAYERS:
            conv = _get(view, path)
            if is_winograd_compatible(conv):
                view = _replace(view, path, WinogradConv2d(conv))
    return view


def fold(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> nn.Conv2d:
    """The convolution that computes ``norm(conv(x))`` (eval-mode statistics)."""
    scale = norm.weight.detach().double() / torch.sqrt(norm.running_var.double() + norm.eps)
    bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(scale)
    folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                       conv.padding, conv.dilation, conv.groups, bias=True,
                       padding_mode=conv.padding_mode, device=conv.weight.device, dtype=conv.weight.dtype)
    layout = (torch.channels_last if conv.weight.is_contiguous(memory_format=torch.channels_last)
              and not conv.weight.is_contiguous() else torch.contiguous_format)
    weight = (conv.weight.detach().double() * scale.view(-1, 1, 1, 1)).to(conv.weight.dtype)
    folded.weight = nn.Parameter(weight.contiguous(memory_format=layout), requires_grad=False)
    folded.bias = nn.Parameter(((bias - norm.running_mean.double()) * scale + norm.bias.detach().double())
                               .to(conv.weight.dtype), requires_grad=False)
    return folded.eval()


def _conv_norm_pairs(root: nn.Module) -> Iterable[Tuple[str, nn.Conv2d, str]]:
    """(conv path, conv, norm path) for every BatchNorm2d applied right after a Conv2d: the
    ResNet naming (``convN`` / ``bnN``) and ``Sequential(conv, bn)`` downsample branches."""
    for name, module in root.named_modules():
        prefix = f"{name}." if name else ""
        children = dict(module.named_children())
        if isinstance(module, nn.Sequential):
            items = list(children.items())
            for (conv_name, conv), (norm_name, norm) in zip(items, items[1:]):
                if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                    yield prefix + conv_name, conv, prefix + norm_name
            continue
        for norm_name, norm in children.items():
            if isinstance(norm, nn.BatchNorm2d) and norm_name.startswith("bn"):
                conv = children.get("conv" + norm_name[2:])
                if isinstance(conv, nn.Conv2d):
                    yield prefix + "conv" + norm_name[2:], conv, prefix + norm_name


def _shallow(module: nn.Module) -> nn.Module:
    """A copy of ``module`` that shares its parameters but has its own list of children."""
    clone = copy.copy(module)
    clone._modules = type(module._modules)(module._modules)
    return clone


def _get(root: nn.Module, path: str) -> nn.Module:
    for name in path.split("."):
        root = root._modules[name]
    return root


def _replace(root: nn.Module, path: str, new: nn.Module) -> nn.Module:
    """``root`` with the module at ``path`` replaced; the modules along the path are copied
    (``_shallow``) the first time, so that the original tree is never modified."""
    names = path.split(".")
    parent = root
    for name in names[:-1]:
        child = parent._modules[name]
        if not getattr(child, "_inference_copy", False):
            child = _shallow(child)
            child._inference_copy = True
            parent._modules[name] = child
        parent = child
    parent._modules[names[-1]] = new
    return root
