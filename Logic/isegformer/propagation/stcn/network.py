"""STCN (Cheng et al., NeurIPS 2021) as used by iSegFormer's MiVOS propagation, inference only.

``STCNNetwork().state_dict()`` has exactly the 405 keys of the official ``stcn.pth``.

Shapes: frames are (N, 3, H, W) ImageNet-normalised with H, W multiples of 16; ``h, w`` are
H/16, W/16. A memory holds M = T*h*w positions (frame-major, row-major inside a frame).
"""
from __future__ import annotations

import math
from typing import NamedTuple, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .modules import Decoder, KeyEncoder, KeyProjection, ValueEncoder

TOP_K = 20
KEY_DIM = 64
VALUE_DIM = 512


class KeyFeatures(NamedTuple):
    """Everything the key encoder gives for a batch of frames."""

    k16: torch.Tensor  # (N, 64, h, w) matching key
    f16_thin: torch.Tensor  # (N, 512, h, w) compressed features the decoder reads
    f16: torch.Tensor  # (N, 1024, h, w) used to encode this frame as a memory value
    f8: torch.Tensor  # (N, 512, 2h, 2w)
    f4: torch.Tensor  # (N, 256, 4h, 4w)


class SparseAffinity(NamedTuple):
    """The top-k memory read weights: for each query position, k memory positions and weights."""

    weights: torch.Tensor  # (hw, k), each row sums to 1
    indices: torch.Tensor  # (hw, k) into the M memory positions

    def dense(self, num_memory: int) -> torch.Tensor:
        """(M, hw) matrix with zeros outside the top-k (the reference's layout, for checks)."""
        out = self.weights.new_zeros((self.weights.shape[0], num_memory))
        return out.scatter_(1, self.indices, self.weights).transpose(0, 1)


def negative_squared_distance(mem_keys: torch.Tensor, query_key: torch.Tensor) -> torch.Tensor:
    """(M, hw) affinity ``(2 m.q - |m|^2 - |q|^2) / sqrt(C)`` between key columns.

    ``mem_keys`` is (C, M), ``query_key`` (C, hw). The query-norm term does not change which
    entries are kept or the softmax, but it is part of the reference's rounding, so it stays.
    """
    mem_sq = mem_keys.pow(2).sum(0).unsqueeze(1)
    cross = 2 * (mem_keys.transpose(0, 1) @ query_key)
    query_sq = query_key.pow(2).sum(0).unsqueeze(0)
    return (-mem_sq + cross - query_sq) / math.sqrt(mem_keys.shape[0])


def query_major_affinity(mem_keys: torch.Tensor, query_key: torch.Tensor) -> torch.Tensor:
    """The same affinity transposed, (hw, M), computed in place.

    Query-major rows make the top-k over memory a contiguous reduction (several times faster
    than along the first axis for tens of thousands of memory positions), and the in-place
    steps avoid four full-size temporaries; each step is the same float operation as above.
    """
    out = query_key.transpose(0, 1) @ mem_keys
    out.mul_(2)
    out.sub_(mem_keys.pow(2).sum(0).unsqueeze(0))
    out.sub_(query_key.pow(2).sum(0).unsqueeze(1))
    return out.div_(math.sqrt(mem_keys.shape[0]))


def top_k_softmax(affinity: torch.Tensor, k: int = TOP_K) -> SparseAffinity:
    """Keep the ``k`` largest entries of each row (hw, M) and softmax them (max subtracted)."""
    k = min(k, affinity.shape[1])
    values, indices = torch.topk(affinity, k=k, dim=1)
    weights = torch.exp(values - values[:, 0:1])
    weights /= weights.sum(1, keepdim=True)
    return SparseAffinity(weights, indices)


def read_memory(affinity: SparseAffinity, mem_values: torch.Tensor) -> torch.Tensor:
    """Weighted sum of memory values: (K, CV, M) -> (K, CV, hw).

    Gathers the k selected columns instead of multiplying by the mostly-zero dense matrix: the
    same sum (up to float rounding order) for a fraction of the work.
    """
    picked = mem_values[:, :, affinity.indices]  # (K, CV, hw, k)
    return (picked * affinity.weights).sum(3)


def soft_aggregate(prob: torch.Tensor) -> torch.Tensor:
    """Per-object probabilities (K, 1, H, W) -> a distribution [bg, 1..K] (K+1, 1, H, W).

    The background is the probability that no object is present; the K+1 odds are then
    normalised by a softmax of their logits, clamped away from 0 and 1.
    """
    background = torch.prod(1 - prob, dim=0, keepdim=True)
    stacked = torch.cat([background, prob], dim=0).clamp(1e-7, 1 - 1e-7)
    return F.softmax(torch.log(stacked / (1 - stacked)), dim=0)


def others_masks(masks: torch.Tensor) -> torch.Tensor:
    """For each object mask (K, 1, H, W): the sum of the other objects' masks."""
    count = masks.shape[0]
    if count == 1:
        return torch.zeros_like(masks)
    # an explicit sum of the others (not total - own) keeps the reference's rounding
    return torch.cat(
        [masks[[j for j in range(count) if j != i]].sum(0, keepdim=True) for i in range(count)], dim=0
    )


class STCNNetwork(nn.Module):
    """Key/value encoders, memory read and decoder of STCN (inference only)."""

    def __init__(self, top_k: int = TOP_K):
        super().__init__()
        # registration order = the checkpoint's key order
        self.value_encoder = ValueEncoder()
        self.key_encoder = KeyEncoder()
        self.key_proj = KeyProjection(1024, KEY_DIM)
        self.key_comp = nn.Conv2d(1024, 512, 3, padding=1)
        self.decoder = Decoder()
        self.top_k = top_k

    def encode_key(self, frames: torch.Tensor) -> KeyFeatures:
        """Key features of (N, 3, H, W) normalised frames."""
        f16, f8, f4 = self.key_encoder(frames)
        return KeyFeatures(self.key_proj(f16), self.key_comp(f16), f16, f8, f4)

    def encode_value(self, frame: torch.Tensor, f16: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Memory value (K, 512, 1, h, w) of one frame (1, 3, H, W) with K object masks (K, 1, H, W)."""
        num_objects = masks.shape[0]
        image = frame.expand(num_objects, -1, -1, -1)
        key_f16 = f16.expand(num_objects, -1, -1, -1)
        return self.value_encoder(image, key_f16, masks, others_masks(masks)).unsqueeze(2)

    def memory_affinity(self, mem_keys: torch.Tensor, query_key: torch.Tensor) -> SparseAffinity:
        """Top-k read weights from memory keys (64, M) to a query key (64, hw)."""
        return top_k_softmax(query_major_affinity(mem_keys, query_key), self.top_k)

    def segment(self, mem_keys: torch.Tensor, mem_values: torch.Tensor, query_k16: torch.Tensor,
                query_f16_thin: torch.Tensor, skip8: torch.Tensor, skip4: torch.Tensor) -> torch.Tensor:
        """Object probabilities (K, 1, H, W) of one query frame.

        mem_keys (64, M), mem_values (K, 512, M); query_k16 (1, 64, h, w), query_f16_thin
        (1, 512, h, w); skip8/skip4 from ``decoder.project_skips`` of the query's f8/f4.
        """
        _, _, h, w = query_k16.shape
        affinity = self.memory_affinity(mem_keys, query_k16.reshape(KEY_DIM, h * w))
        readout = read_memory(affinity, mem_values).reshape(mem_values.shape[0], -1, h, w)
        return self.decode_readout(readout, query_f16_thin, skip8, skip4)

    def decode_readout(self, readout: torch.Tensor, query_f16_thin: torch.Tensor,
                       skip8: torch.Tensor, skip4: torch.Tensor) -> torch.Tensor:
        """Object probabilities (K, 1, H, W) from a memory readout (K, 512, h, w) and the
        query frame's features (as in ``segment``)."""
        qv16 = query_f16_thin.expand(readout.shape[0], -1, -1, -1)
        logits = self.decoder.decode(torch.cat([readout, qv16], dim=1), skip8, skip4)
        return torch.sigmoid(logits)

    @staticmethod
    def attention(mem_k16: torch.Tensor, pos_diff: torch.Tensor, neg_diff: torch.Tensor,
                  query_k16: torch.Tensor) -> torch.Tensor:
        """Where the annotated frame's change lands in the query frame, (B, 2, H, W).

        mem_k16 and query_k16 are (1, 64, h, w); pos_diff/neg_diff are (B, 1, H, W) positive
        and negative parts of the annotation change. Full softmax (no top-k) over memory.
        """
        _, _, h, w = query_k16.shape
        batch = pos_diff.shape[0]
        affinity = negative_squared_distance(mem_k16.reshape(KEY_DIM, -1), query_k16.reshape(KEY_DIM, -1))
        weights = F.softmax(affinity, dim=0)  # (hw_mem, hw)

        def project(diff: torch.Tensor) -> torch.Tensor:
            return F.interpolate(diff, size=(h, w), mode="area").reshape(batch, 1, h * w) @ weights

        maps = torch.cat([project(pos_diff), project(neg_diff)], dim=1).reshape(batch, 2, h, w)
        return F.interpolate(maps, size=pos_diff.shape[-2:], mode="bilinear", align_corners=False)
