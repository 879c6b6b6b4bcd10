"""The memory bank of one propagation pass: keys and values of the frames it remembers.

The reference keeps values as (K, 512, M) and reads them with a dense (M, hw) matrix that is
zero outside each query position's top 20. Here values are stored memory-major, (K, M, 512):
the top-k read then gathers whole 2 KB rows (streaming reads) instead of 512 scattered floats
per entry, which stays fast when M outgrows the CPU caches (a 27-frame memory at 384x384 holds
15,552 entries, 32 MB of values: the column gather took 125 ms per frame, the row gather 16 ms).

The affinity of a query position to a memory entry is ``(2 m.q - |m|^2 - |q|^2) / sqrt(64)``
(the reference's rounding). ``|m|^2`` is computed once per entry when it is added. The top k
are chosen on ``2 m.q - |m|^2`` and only those k get the last two steps: subtracting a
per-row constant and dividing by 8 (exact) are monotonic in floating point, so the chosen
entries and their values are those of the full (hw, M) computation, except which of several
entries that round to the same value is taken; the GEMM and the weighted sum round in their
own order (measured: 6e-7 on unit-scale values).
"""
from __future__ import annotations

import math

import torch

from .network import KEY_DIM, TOP_K, VALUE_DIM, SparseAffinity


class MemoryBank:
    """Room for ``capacity`` frames of ``hw`` positions each, for ``num_objects`` objects."""

    def __init__(self, capacity: int, hw: int, num_objects: int, device: torch.device,
                 top_k: int = TOP_K):
        self._hw = int(hw)
        self._top_k = int(top_k)
        self.keys = torch.empty((KEY_DIM, capacity * hw), device=device)
        self.key_sq = torch.empty((capacity * hw,), device=device)
        self.values = torch.empty((num_objects, capacity * hw, VALUE_DIM), device=device)
        self.frames = 0

    @property
    def capacity(self) -> int:
        return self.key_sq.shape[0] // self._hw

    def add(self, k16: torch.Tensor, value: torch.Tensor) -> None:
        """One frame: its key (64, h, w) or (1, 64, h, w) and value (K, 512, [1,] h, w)."""
        if self.frames >= self.capacity:
            raise RuntimeError("memory bank full")  # a planning error, never a user's
        rows = slice(self.frames * self._hw, (self.frames + 1) * self._hw)
        key = k16.reshape(KEY_DIM, self._hw)
        self.keys[:, rows] = key
        self.key_sq[rows] = key.pow(2).sum(0)
        if value.dim() == 5:
            value = value.squeeze(2)
        # (K, h, w, 512) rows: a view of the value encoder's channels-last output
        self.values[:, rows] = value.permute(0, 2, 3, 1).reshape(value.shape[0], self._hw, VALUE_DIM)
        self.frames += 1

    def affinity(self, query_k16: torch.Tensor) -> SparseAffinity:
        """Top-k read weights of the query key (1, 64, h, w) over the filled part of the bank."""
        used = self.frames * self._hw
        query = query_k16.reshape(KEY_DIM, self._hw)
        # 2 q.m - |m|^2 in one GEMM (the factor 2 is exact, so this is the reference's rounding)
        scores = torch.addmm(self.key_sq[:used].neg().unsqueeze(0), query.transpose(0, 1),
                             self.keys[:, :used], beta=1, alpha=2)
        k = min(self._top_k, used)
        top, indices = torch.topk(scores, k=k, dim=1)
        top = (top - query.pow(2).sum(0).unsqueeze(1)) / math.sqrt(KEY_DIM)
        weights = torch.exp(top - top[:, 0:1])
        weights /= weights.sum(1, keepdim=True)
        return SparseAffinity(weights, indices)

    def read(self, query_k16: torch.Tensor) -> torch.Tensor:
        """The readout (K, 512, h, w), channels-last, for a query key (1, 64, h, w)."""
        affinity = self.affinity(query_k16)
        picked = self.values[:, affinity.indices]  # (K, hw, k, 512)
        readout = torch.matmul(affinity.weights.unsqueeze(1), picked).squeeze(2)  # (K, hw, 512)
        h, w = query_k16.shape[-2:]
        return readout.reshape(-1, h, w, VALUE_DIM).permute(0, 3, 1, 2)
