"""The ``--slices`` option of every command: which slices of a volume to use.

One grammar for ``finetune`` and ``evaluate-clicks`` alike:

- ``all``: every slice that holds an object (the caller knows which do);
- ``paper``: slices 40, 80 and 120, the paper's three annotated slices per training volume
  (those that exist; a shorter volume gives a warning);
- a comma-separated list of indices and inclusive ranges: ``40,50,60-70``.

Keywords are matched in any case. A reversed range (``8-3``), a negative index, or a slice named
twice (``5,5`` or ``3-8,5``) is refused rather than silently emptied or counted twice: in an
evaluation a repeated slice would weigh twice in the mean. The list comes back sorted.
"""
from __future__ import annotations

import logging
from collections import Counter
from typing import Optional, Sequence, Union

from ..errors import InvalidInputError

log = logging.getLogger(__name__)

#: The slices the paper annotated in each OAI-ZIB training volume.
PAPER_SLICES: tuple[int, ...] = (40, 80, 120)
KEYWORDS = ("all", "paper")
#: A bound on one spec's slices, so that a typo such as 0-999999999 fails at once.
MAX_SLICES = 100_000

SliceChoice = Union[str, Sequence[int]]  # "paper", "all", or explicit indices

_GRAMMAR = ("'all' (every slice with an object), 'paper' (slices "
            f"{', '.join(map(str, PAPER_SLICES))}) or indices and ranges such as 10,20,30-40")


def parse_slice_choice(text: str, option: str = "--slices") -> Union[str, list[int]]:
    """``"all"``, ``"paper"``, or the sorted indices of ``"10,20,30-40"``."""
    value = str(text).strip().lower()
    if value in KEYWORDS:
        return value
    indices: list[int] = []
    for part in value.replace(" ", "").split(","):
        if not part:
            continue
        first, dash, last = part.partition("-")
        try:
            low = int(first)
            high = int(last) if dash else low
        except ValueError:
            raise InvalidInputError(f"{option} must be {_GRAMMAR}; got {text!r}.") from None
        if high < low:
            raise InvalidInputError(
                f"{option} {text!r}: the range {part} runs backwards, so it chooses no slice. "
                f"Write it low-high ({high}-{low})."
            )
        if len(indices) + high - low >= MAX_SLICES:
            raise InvalidInputError(
                f"{option} {text!r} names more than {MAX_SLICES} slices, more than any volume has.")
        indices.extend(range(low, high + 1))
    if not indices:
        raise InvalidInputError(f"{option} must be {_GRAMMAR}; got {text!r}.")
    return _checked_indices(indices, option)


def _checked_indices(indices: Sequence[int], option: str) -> list[int]:
    values = []
    for index in indices:
        try:
            whole = not isinstance(index, (bool, str)) and int(index) == index
        except (TypeError, ValueError, OverflowError):
            whole = False
        if not whole:
            raise InvalidInputError(f"{option}: slice indices are whole numbers, got {index!r}.")
        values.append(int(index))
    negative = sorted({v for v in values if v < 0})
    if negative:
        raise InvalidInputError(
            f"{option}: slice indices start at 0, got {negative}. Write a range as low-high (3-8)."
        )
    repeated = sorted(v for v, n in Counter(values).items() if n > 1)
    if repeated:
        raise InvalidInputError(
            f"{option} names slice(s) {repeated} more than once; each slice would count once per "
            "mention. Give each slice once."
        )
    return sorted(values)


def chosen_slices(choice: Optional[SliceChoice], count: int, where: str, axis: int,
                  option: str = "--slices") -> Optional[list[int]]:
    """The slice indices ``choice`` names in a volume with ``count`` slices along ``axis``.

    ``None`` for ``"all"`` (or no choice): every slice holding an object, which the caller finds.
    Explicit indices must all exist; ``"paper"`` keeps those of 40, 80, 120 that exist.
    """
    if choice is None:
        return None
    if isinstance(choice, str):
        choice = parse_slice_choice(choice, option)
    if choice == "all":
        return None
    if choice == "paper":
        indices = [i for i in PAPER_SLICES if i < count]
        if not indices:
            raise InvalidInputError(
                f"{where} has {count} slices along axis {axis}, so none of the paper's slices "
                f"{', '.join(map(str, PAPER_SLICES))} exists: choose slices with {option} (e.g. "
                f"{option} all), or another axis.")
        if len(indices) < len(PAPER_SLICES):
            log.warning("%s has %d slices along axis %d: using the paper's slices %s only.",
                        where, count, axis, indices)
        return indices
    indices = _checked_indices(list(choice), option)
    outside = [i for i in indices if i >= count]
    if outside:
        raise InvalidInputError(
            f"Slices {outside} do not exist in {where}: it has slices 0..{count - 1} along axis "
            f"{axis}. Choose indices in that range (or {option} all)."
        )
    return indices
