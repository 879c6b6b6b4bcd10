"""Loading ``stcn.pth`` and ``fusion_stcn.pth`` into the networks, strictly.

A file is accepted only if its keys and shapes are exactly those of the network (the
``num_batches_tracked`` counters, unused at inference, may be absent). Anything else raises
:class:`CheckpointError` naming the missing, unexpected and mis-shaped keys, so that a wrong
or truncated download is never half-loaded.
"""
from __future__ import annotations

import os
from typing import Mapping, TypeVar, Union

import torch
from torch import nn

from ...checkpoint import check_finite, compare_state_dict
from ...errors import CheckpointError
from .fusion import FusionNet
from .network import STCNNetwork

Source = Union[str, os.PathLike, Mapping[str, torch.Tensor]]
Net = TypeVar("Net", bound=nn.Module)

_OPTIONAL_SUFFIX = "num_batches_tracked"
_ADVICE = {
    "STCN": "Download stcn.pth again (`isegformer download stcn --force`; the cached file "
            "stays until the new one is verified) and retry.",
    "FusionNet": "Download fusion_stcn.pth again (`isegformer download mivos_fusion --force`), "
                 "or propagate without fusion weights.",
}


def _state_dict_of(source: Source, what: str) -> Mapping[str, torch.Tensor]:
    if isinstance(source, Mapping):
        return source
    from ...checkpoint import load_checkpoint

    return load_checkpoint(source, advice=_ADVICE[what])["state_dict"]


def _list(keys, limit: int = 8) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_strict(network: Net, source: Source, what: str) -> Net:
    """Load ``source`` (a path or a state dict) into ``network`` after checking every key."""
    given = _state_dict_of(source, what)
    if not all(isinstance(k, str) for k in given):
        raise CheckpointError(f"The given {what} state dict's keys must be parameter names "
                              f"(strings). {_ADVICE[what]}")
    expected = network.state_dict()
    mismatch = compare_state_dict(given, {k: v.shape for k, v in expected.items()},
                                  optional_suffixes=(_OPTIONAL_SUFFIX,))
    missing, unexpected = mismatch.missing, mismatch.unexpected
    misshaped = [f"{k} {shape} instead of {want}" for k, shape, want in mismatch.misshaped]
    non_tensor = [k for k in given if not isinstance(given[k], torch.Tensor)]
    if missing or unexpected or misshaped or non_tensor:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({_list(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({_list(unexpected)})")
        if misshaped:
            parts.append(f"{len(misshaped)} with the wrong shape ({_list(misshaped, 4)})")
        if non_tensor:
            parts.append(f"{len(non_tensor)} that are not tensors ({_list(non_tensor)})")
        name = source if not isinstance(source, Mapping) else "the given state dict"
        raise CheckpointError(
            f"{name} is not a {what} checkpoint: {'; '.join(parts)} keys. "
            f"{_ADVICE[what]}"
        )
    if isinstance(source, Mapping):  # files are checked by load_checkpoint already
        check_finite(given, f"The given {what} state dict", _ADVICE[what])
    full = dict(given)
    for key, value in expected.items():
        if key not in full:  # only the optional counters reach here
            full[key] = torch.zeros_like(value)
    full = {k: v.to(expected[k].dtype) if v.is_floating_point() else v for k, v in full.items()}
    network.load_state_dict(full, strict=True)
    return network.eval()


def load_stcn(source: Source) -> STCNNetwork:
    """An :class:`STCNNetwork` in eval mode with the weights of ``stcn.pth`` (path or state dict)."""
    return load_strict(STCNNetwork(), source, "STCN")


def load_fusion(source: Source) -> FusionNet:
    """A :class:`FusionNet` in eval mode with the weights of ``fusion_stcn.pth``."""
    return load_strict(FusionNet(), source, "FusionNet")
