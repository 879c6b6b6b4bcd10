"""Per-frame query features, computed once per stack and kept within a memory budget.

Decoding a frame needs its key, its compressed stride-16 features, its stride-16 features (to
become a memory value) and the decoder's projections of its stride-8 and stride-4 features.
None of these depend on the annotations, so they are computed once, in batches, and reused by
every later pass and correction. When the stack does not fit the budget, the least recently
used frames that the running pass will not need are dropped first (a plain LRU would evict,
during a sequential pass, exactly the frames the pass needs next); they are recomputed when
needed again: slower, never different.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Callable, Dict, Iterable, List, NamedTuple, Optional, Sequence

import torch

log = logging.getLogger(__name__)


class FrameFeatures(NamedTuple):
    k16: torch.Tensor  # (1, 64, h, w)
    f16_thin: torch.Tensor  # (1, 512, h, w)
    f16: torch.Tensor  # (1, 1024, h, w)
    skip8: torch.Tensor  # (1, 256 or 512, 2h, 2w) decoder projection of f8
    skip4: torch.Tensor  # (1, 256, 4h, 4w) decoder projection of f4

    def nbytes(self) -> int:
        return sum(t.element_size() * t.nelement() for t in self)


Encoder = Callable[[Sequence[int]], List[FrameFeatures]]


class FeatureCache:
    """LRU store of :class:`FrameFeatures` by frame index, bounded in bytes."""

    def __init__(self, encode: Encoder, budget_bytes: int, batch_size: int = 4):
        self._encode = encode
        self._budget = int(budget_bytes)
        self._batch = max(1, int(batch_size))
        self._items: "OrderedDict[int, FrameFeatures]" = OrderedDict()
        self._bytes = 0
        #: how many frames went through the key encoder (for tests and benchmarks)
        self.encoded = 0

    def __contains__(self, index: int) -> bool:
        return index in self._items

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def get(self, index: int, upcoming: Iterable[int] = ()) -> FrameFeatures:
        """Features of frame ``index``; on a miss, also encodes the next missing ``upcoming``
        frames in the same batch (the frames a pass will ask for next)."""
        item = self._items.get(index)
        if item is not None:
            self._items.move_to_end(index)
            return item
        upcoming = list(upcoming)
        batch = [index]
        for other in upcoming:
            if len(batch) >= self._batch:
                break
            if other not in self._items and other not in batch:
                batch.append(other)
        features = self._encode(batch)
        self.encoded += len(batch)
        # next use in this pass: frames needed soonest are evicted last
        next_use = {frame: order for order, frame in enumerate(upcoming)}
        for frame, feats in zip(batch, features):
            self._insert(frame, feats, protect=batch, next_use=next_use)
        return self._items[index] if index in self._items else features[0]

    def _insert(self, index: int, feats: FrameFeatures, protect: Sequence[int],
                next_use: Dict[int, int]) -> None:
        size = feats.nbytes()
        while self._items and self._bytes + size > self._budget:
            victim = self._victim(protect, next_use)
            if victim is None:
                break
            self._bytes -= self._items.pop(victim).nbytes()
        self._items[index] = feats
        self._bytes += size

    def _victim(self, protect: Sequence[int], next_use: Dict[int, int]) -> Optional[int]:
        """Least recently used frame the pass will not need; else the one it needs last."""
        candidates = [k for k in self._items if k not in protect]
        if not candidates:
            return None
        unneeded = [k for k in candidates if k not in next_use]
        if unneeded:
            return unneeded[0]  # the dict is in recency order
        return max(candidates, key=next_use.__getitem__)

    def clear(self) -> None:
        self._items.clear()
        self._bytes = 0
