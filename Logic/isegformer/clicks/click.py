"""One click of the user, and the ordered list of clicks made on one slice."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable, Iterator, Sequence


@dataclass(frozen=True)
class Click:
    """A click at continuous (row, column) = (y, x) of a 2D slice.

    ``index`` is the click's rank in the order the clicks were made (0, 1, 2, ...), counted over
    positive and negative clicks together, as the network's point rows carry it.
    """

    y: float
    x: float
    positive: bool
    index: int = 0

    def moved(self, y: float, x: float) -> "Click":
        """The same click at other coordinates (used by the zoom and flip transforms)."""
        return replace(self, y=y, x=x)

    @property
    def pixel(self) -> tuple[int, int]:
        """The pixel the click falls in, truncated like the reference (``int(y), int(x)``)."""
        return int(self.y), int(self.x)


class ClickList(Sequence[Click]):
    """Clicks in the order they were made; each new click gets the next index."""

    def __init__(self, clicks: Iterable[Click] = ()) -> None:
        self._clicks: list[Click] = []
        for click in clicks:
            self.add(click.y, click.x, click.positive)

    def add(self, y: float, x: float, positive: bool) -> Click:
        click = Click(y=y, x=x, positive=bool(positive), index=len(self._clicks))
        self._clicks.append(click)
        return click

    def pop(self) -> Click:
        return self._clicks.pop()

    def clear(self) -> None:
        self._clicks.clear()

    @property
    def positives(self) -> list[Click]:
        return [c for c in self._clicks if c.positive]

    @property
    def negatives(self) -> list[Click]:
        return [c for c in self._clicks if not c.positive]

    def __getitem__(self, item):  # type: ignore[override]
        return self._clicks[item]

    def __len__(self) -> int:
        return len(self._clicks)

    def __iter__(self) -> Iterator[Click]:
        return iter(self._clicks)

    def __repr__(self) -> str:
        return f"ClickList({self._clicks!r})"
