"""Per-frame query features, computed once per stack and kept within a memory budget.

Decoding a frame needs its key, its compressed stride-16 features, its stride-16 features (to
become a memory value) and the decoder's projections of its stride-8 and stride-4 features.
None of these depend on the annotations, so they are computed once, in batches, and reused by
every later pass and correction.

The features live in one preallocated slab per kind, ``capacity`` frames deep, so the cache
holds exactly its budget and does not fragment the heap with thousands of frame-sized blocks.
When the stack does not fit, the caller's ``upcoming`` reads decide: frames it will not read
are dropped first, least recently used first, else the one read furthest ahead (Belady's rule;
a plain LRU would evict, during a sequential pass, exactly the frames the pass needs next).
The propagator passes every read of the call ahead, so one cached segment between two
annotated frames serves both passes that cross it. Dropped frames are recomputed when needed
again: slower, never different.

The returned features are views into the slabs: valid until the next ``get``. Copy what must
outlive that.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Callable, Dict, Iterable, List, NamedTuple, Optional, Sequence

import torch

log = logging.getLogger(__name__)


class FrameFeatures(NamedTuple):
    k16: torch.Tensor  # (N, 64, h, w)
    f16_thin: torch.Tensor  # (N, 512, h, w)
    f16: torch.Tensor  # (N, 1024, h, w)
    skip8: torch.Tensor  # (N, 512, 2h, 2w) decoder projection of f8
    skip4: torch.Tensor  # (N, 256, 4h, 4w) decoder projection of f4

    def frame_nbytes(self) -> int:
        """Bytes of one frame's features."""
        return sum(t[0].element_size() * t[0].nelement() for t in self)


Encoder = Callable[[Sequence[int]], FrameFeatures]


class FeatureCache:
    """Frame index -> :class:`FrameFeatures`, bounded to ``budget_bytes``."""

    def __init__(self, encode: Encoder, budget_bytes: int, num_frames: int, batch_size: int = 4):
        self._encode = encode
        self._budget = int(budget_bytes)
        self._num_frames = int(num_frames)
        self._batch = max(1, min(int(batch_size), self._num_frames))
        self._slabs: Optional[FrameFeatures] = None
        self._slot: "OrderedDict[int, int]" = OrderedDict()  # frame -> slot, in recency order
        self._free: List[int] = []
        #: how many frames went through the key encoder (for tests and benchmarks)
        self.encoded = 0

    def __contains__(self, index: int) -> bool:
        return index in self._slot

    def __len__(self) -> int:
        return len(self._slot)

    @property
    def capacity(self) -> int:
        return 0 if self._slabs is None else self._slabs.k16.shape[0]

    @property
    def nbytes(self) -> int:
        return 0 if self._slabs is None else self.capacity * self._slabs.frame_nbytes()

    def get(self, index: int, upcoming: Iterable[int] = ()) -> FrameFeatures:
        """Features (each (1, C, h', w')) of frame ``index``. On a miss, the next missing
        ``upcoming`` frames (those the pass visits next) are encoded in the same batch."""
        slot = self._slot.get(index)
        if slot is None:
            upcoming = list(upcoming)
            batch = [index]
            for other in upcoming:
                if len(batch) >= self._batch:
                    break
                if other not in self._slot and other not in batch:
                    batch.append(other)
            features = self._encode(batch)
            self.encoded += len(batch)
            if self._slabs is None:
                self._allocate(features)
            next_use = {frame: order for order, frame in enumerate(upcoming)}
            for position, frame in enumerate(batch):
                slot = self._take_slot(protect=batch, next_use=next_use)
                for slab, part in zip(self._slabs, features):
                    slab[slot] = part[position]
                self._slot[frame] = slot
            slot = self._slot[index]
        self._slot.move_to_end(index)
        return FrameFeatures(*(slab[slot:slot + 1] for slab in self._slabs))

    def _allocate(self, example: FrameFeatures) -> None:
        frame_bytes = example.frame_nbytes()
        capacity = max(self._batch, min(self._num_frames, self._budget // max(1, frame_bytes)))
        self._slabs = FrameFeatures(*(
            torch.empty((capacity,) + tuple(t.shape[1:]), dtype=t.dtype, device=t.device,
                        memory_format=_layout_of(t)) for t in example
        ))
        self._free = list(range(capacity - 1, -1, -1))
        log.info("Feature cache: %d frames of %.1f MB (%.2f GiB).", capacity, frame_bytes / 1e6,
                 capacity * frame_bytes / 2**30)

    def _take_slot(self, protect: Sequence[int], next_use: Dict[int, int]) -> int:
        if self._free:
            return self._free.pop()
        candidates = [k for k in self._slot if k not in protect]
        unneeded = [k for k in candidates if k not in next_use]
        # least recently used frame the pass will not need; else the one it needs last
        victim = unneeded[0] if unneeded else max(candidates, key=next_use.__getitem__)
        return self._slot.pop(victim)

    def clear(self) -> None:
        self._slot.clear()
        self._slabs = None
        self._free = []


def _layout_of(tensor: torch.Tensor) -> torch.memory_format:
    """Keep the encoder's layout (channels-last on the CPU) so that reads need no conversion."""
    if tensor.dim() == 4 and not tensor.is_contiguous() \
            and tensor.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format
