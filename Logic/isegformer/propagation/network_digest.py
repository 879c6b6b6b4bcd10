"""Which weights a propagation ran with, as a digest kept in its propagation record.

A saved propagated result is taken up by a later session only if that session's networks are
the ones that computed it (``Session.propagate``): the same annotations with other weights
give another result.
"""
from __future__ import annotations

import hashlib
from typing import Any


def network_digest(*networks: Any) -> str:
    """A digest (32 lower-case hex digits, the form of a mask digest) of the weights of torch
    modules, in order; None stands for "no network". Equal weights give equal digests on any
    device; one changed weight, another architecture or a missing network gives another."""
    import torch

    digest = hashlib.blake2b(digest_size=16)
    for position, network in enumerate(networks):
        digest.update(f"network {position}: {'none' if network is None else type(network).__name__}\n".encode())
        if network is None:
            continue
        for name, tensor in sorted(network.state_dict().items()):
            tensor = tensor.detach()
            digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}\n".encode())
            # Raw bytes of any dtype (numpy has no bfloat16); copied to the CPU only if needed.
            digest.update(tensor.to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()
