"""Which decoded frames of a sequence of interactions are ever read: a dry run, backwards.

Applying several annotations one after another (MiVOS' ``interact`` each time) decodes many
frames that a later interaction overwrites before anything reads them. A frame's result is
read only when it is

* in the final state (the last interaction that writes the frame);
* the *previous* estimate that a later, fused (bounded) write of the same frame blends with;
* the previous estimate at a later interaction's own index, whose change to the new mask
  drives FusionNet's attention (only when a FusionNet is used).

A pass decodes its frames in order and adds some of them to its memory on the way, so the frames
before a given one never depend on how far the pass goes: running only the prefix up to the
furthest frame that is read gives those frames exactly. Reads only flow from an interaction to
earlier ones, so one backward sweep over the sequence finds every needed frame.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Set


@dataclass
class PlannedInteraction:
    """One interaction of a sequence: its bounds and the part of it that must be computed."""

    index: int
    lower: int  # nearest other annotated frame below, or -1
    upper: int  # nearest other annotated frame above, or T
    num_frames: int
    #: frames of this interaction's passes whose result is read later (or is final)
    needed: Set[int] = field(default_factory=set)

    @property
    def forward(self) -> List[int]:
        """The whole forward pass, in visiting order."""
        return list(range(self.index + 1, self.upper))

    @property
    def backward(self) -> List[int]:
        """The whole backward pass, in visiting order."""
        return list(range(self.index - 1, self.lower, -1))

    @property
    def forward_prefix(self) -> List[int]:
        """The forward frames to decode: up to the furthest needed one."""
        stop = max((t for t in self.needed if t > self.index), default=self.index)
        return list(range(self.index + 1, stop + 1))

    @property
    def backward_prefix(self) -> List[int]:
        stop = min((t for t in self.needed if t < self.index), default=self.index)
        return list(range(self.index - 1, stop - 1, -1))

    def fused(self, t: int) -> bool:
        """Whether frame ``t``'s new estimate is blended with its previous one: it lies between
        this interaction's frame and another annotated frame."""
        return (t > self.index and self.upper < self.num_frames) or (t < self.index and self.lower >= 0)


def plan_interactions(num_frames: int, annotated_before: Sequence[int], indices: Sequence[int],
                      uses_change: bool) -> List[PlannedInteraction]:
    """Plan the interactions at ``indices`` (in order) on a stack of ``num_frames`` frames whose
    frames ``annotated_before`` are already annotated. ``uses_change``: whether a fused write
    reads the previous estimate at the interaction's own index (FusionNet's attention)."""
    annotated: Set[int] = set(annotated_before)
    plan: List[PlannedInteraction] = []
    writers: Dict[int, List[int]] = {}  # frame -> interactions writing it, in order
    for number, index in enumerate(indices):
        others = annotated - {index}
        upper = min([a for a in others if a > index] + [num_frames])
        lower = max([a for a in others if a < index] + [-1])
        plan.append(PlannedInteraction(index, lower, upper, num_frames))
        for t in range(lower + 1, upper):
            writers.setdefault(t, []).append(number)
        annotated.add(index)

    def previous_writer(t: int, number: int) -> Optional[int]:
        earlier = [m for m in writers.get(t, ()) if m < number]
        return earlier[-1] if earlier else None  # None: the state before the sequence

    for t, numbers in writers.items():
        plan[numbers[-1]].needed.add(t)
    for number in range(len(plan) - 1, -1, -1):
        step = plan[number]
        fused = [t for t in step.needed if t != step.index and step.fused(t)]
        reads = fused + ([step.index] if fused and uses_change else [])
        for t in reads:
            writer = previous_writer(t, number)
            if writer is not None:
                plan[writer].needed.add(t)
    return plan
