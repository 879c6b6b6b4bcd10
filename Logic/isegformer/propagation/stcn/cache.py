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

A frame's ``f16`` is needed only where it becomes a memory value, so the cache keeps it only
for the frames whose later reads need it (and in free slots), which leaves room for more
frames in the same budget (see ``FeatureCache``).

The returned features are views into the slabs (or the encoder's output): valid until the
next ``get``. Copy what must outlive that.
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
    f16: Optional[torch.Tensor]  # (N, 1024, h, w); from ``FeatureCache.get`` only when asked for
    skip8: torch.Tensor  # (N, 512, 2h, 2w) decoder projection of f8
    skip4: torch.Tensor  # (N, 256, 4h, 4w) decoder projection of f4

    def frame_nbytes(self) -> int:
        """Bytes of one frame's features (without ``f16`` where it is None)."""
        return sum(t[0].element_size() * t[0].nelement() for t in self if t is not None)


Encoder = Callable[[Sequence[int]], FrameFeatures]


class FeatureCache:
    """Frame index -> :class:`FrameFeatures`, bounded to ``budget_bytes``.

    ``f16`` (2.4 MB of a 384x384 frame's 17.9) is read only when a frame becomes a memory
    value, about one visit in ``value_every``, so it has its own smaller slab: a frame's
    ``f16`` is kept only while a later read that needs it is ahead (``upcoming_f16``), in
    ``capacity // (value_every - 1)`` slots; a cached frame whose ``f16`` was not kept is
    encoded again when it is asked for (the same features: slower, never different).
    """

    def __init__(self, encode: Encoder, budget_bytes: int, num_frames: int, batch_size: int = 4,
                 value_every: int = 1):
        self._encode = encode
        self._budget = int(budget_bytes)
        self._num_frames = int(num_frames)
        self._batch = max(1, min(int(batch_size), self._num_frames))
        self._value_every = max(1, int(value_every))
        self._slabs: Optional[FrameFeatures] = None  # its f16 slab is ``f16_capacity`` deep
        self._slot: "OrderedDict[int, int]" = OrderedDict()  # frame -> slot, in recency order
        self._free: List[int] = []
        self._f16_slot: Dict[int, int] = {}
        self._f16_free: List[int] = []
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
    def f16_capacity(self) -> int:
        return 0 if self._slabs is None else self._slabs.f16.shape[0]

    @property
    def nbytes(self) -> int:
        return 0 if self._slabs is None else sum(t.element_size() * t.nelement() for t in self._slabs)

    def get(self, index: int, upcoming: Iterable[int] = (), *, f16: bool = True,
            upcoming_f16: Optional[Iterable[int]] = None) -> FrameFeatures:
        """Features (each (1, C, h', w')) of frame ``index``. On a miss, the next missing
        ``upcoming`` frames (those the pass visits next) are encoded in the same batch.

        ``f16``: whether this read needs ``f16`` (without it, ``f16`` may be None);
        ``upcoming_f16``: the upcoming reads that will need it, in order (default: all)."""
        upcoming = list(upcoming)
        later_f16 = upcoming if upcoming_f16 is None else list(upcoming_f16)
        slot = self._slot.get(index)
        fresh_f16 = None
        if slot is None or (f16 and index not in self._f16_slot):
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
            next_use = _first_uses(upcoming)
            next_f16_use = _first_uses(later_f16)
            for position, frame in enumerate(batch):
                slot = self._slot.get(frame)
                if slot is None:
                    slot = self._take_slot(protect=batch, next_use=next_use)
                for name, slab, part in zip(FrameFeatures._fields, self._slabs, features):
                    if name != "f16":  # its own, smaller slab (below)
                        slab[slot] = part[position]
                self._slot[frame] = slot
                f16_slot = self._take_f16_slot(frame, protect=batch, next_use=next_f16_use)
                if f16_slot is not None:
                    self._slabs.f16[f16_slot] = features.f16[position]
                    self._f16_slot[frame] = f16_slot
            slot = self._slot[index]
            fresh_f16 = features.f16[0:1]  # ``index`` is the batch's first frame
        self._slot.move_to_end(index)
        f16_slot = self._f16_slot.get(index)
        if fresh_f16 is None and f16_slot is not None:
            fresh_f16 = self._slabs.f16[f16_slot:f16_slot + 1]
        k16, f16_thin, _, skip8, skip4 = (slab[slot:slot + 1] for slab in self._slabs)
        return FrameFeatures(k16, f16_thin, fresh_f16, skip8, skip4)

    def _allocate(self, example: FrameFeatures) -> None:
        f16_bytes = example.f16[0].element_size() * example.f16[0].nelement()
        main_bytes = example.frame_nbytes() - f16_bytes
        capacity = min(self._num_frames, self._budget // max(1, main_bytes))
        while capacity > self._batch and capacity * main_bytes + self._f16_slots(capacity) * f16_bytes > self._budget:
            capacity -= 1
        capacity = max(self._batch, capacity)
        # the f16 slots a pass needs, and as many more as the budget leaves (all of them when
        # the whole stack fits: later calls, whose reads are not known yet, then find them all)
        f16_depth = min(capacity, max(self._f16_slots(capacity), (self._budget - capacity * main_bytes) // f16_bytes))
        depths = [capacity, capacity, f16_depth, capacity, capacity]
        self._slabs = FrameFeatures(*(
            torch.empty((depth,) + tuple(t.shape[1:]), dtype=t.dtype, device=t.device,
                        memory_format=_layout_of(t)) for depth, t in zip(depths, example)
        ))
        self._free = list(range(capacity - 1, -1, -1))
        self._f16_free = list(range(depths[2] - 1, -1, -1))
        log.info("Feature cache: %d frames of %.1f MB and %d f16 of %.1f MB (%.2f GiB).", capacity,
                 main_bytes / 1e6, depths[2], f16_bytes / 1e6, self.nbytes / 2**30)

    def _f16_slots(self, capacity: int) -> int:
        """f16 slots for ``capacity`` frames: a pass adds every ``value_every``-th frame."""
        return min(capacity, max(1, capacity // max(1, self._value_every - 1)))

    def _take_slot(self, protect: Sequence[int], next_use: Dict[int, int]) -> int:
        if self._free:
            return self._free.pop()
        candidates = [k for k in self._slot if k not in protect]
        unneeded = [k for k in candidates if k not in next_use]
        # least recently used frame the pass will not need; else the one it needs last
        victim = unneeded[0] if unneeded else max(candidates, key=next_use.__getitem__)
        self._drop_f16(victim)
        return self._slot.pop(victim)

    def _take_f16_slot(self, frame: int, protect: Sequence[int], next_use: Dict[int, int]) -> Optional[int]:
        """A slot for ``frame``'s f16: a free one (also for a frame with no known later need:
        a later call may read it), else the one of a frame needed later than ``frame`` or not
        at all (Belady); None when every kept one is needed sooner or ``frame`` is not needed."""
        if frame in self._f16_slot:
            return self._f16_slot[frame]
        if self._f16_free:
            return self._f16_free.pop()
        candidates = [k for k in self._f16_slot if k not in protect]
        if not candidates or frame not in next_use:
            return None
        victim = max(candidates, key=lambda k: next_use.get(k, len(next_use) + 1))
        if next_use.get(victim, len(next_use) + 1) <= next_use[frame]:
            return None
        return self._f16_slot.pop(victim)

    def _drop_f16(self, frame: int) -> None:
        slot = self._f16_slot.pop(frame, None)
        if slot is not None:
            self._f16_free.append(slot)

    def clear(self) -> None:
        self._slot.clear()
        self._f16_slot.clear()
        self._slabs = None
        self._free = []
        self._f16_free = []


def _first_uses(frames: Sequence[int]) -> Dict[int, int]:
    """Frame -> position of its first occurrence in ``frames`` (its next use)."""
    uses: Dict[int, int] = {}
    for order, frame in enumerate(frames):
        uses.setdefault(frame, order)
    return uses


def _layout_of(tensor: torch.Tensor) -> torch.memory_format:
    """Keep the encoder's layout (channels-last on the CPU) so that reads need no conversion."""
    if tensor.dim() == 4 and not tensor.is_contiguous() \
            and tensor.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format
