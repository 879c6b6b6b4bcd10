"""The NoC curve: mean IoU against the number of clicks, as a PNG."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence, Union


def plot_iou_curve(mean_ious: Sequence[float], path: Union[str, Path], *, title: str = "",
                   targets: Sequence[float] = (0.80, 0.85, 0.90)) -> Path:
    """Write the curve of ``mean_ious`` (index 0 = after click 1) to ``path`` and return it."""
    # A bare Figure renders with Agg and never touches pyplot's global backend (which matters
    # inside Slicer's Qt application).
    from matplotlib.figure import Figure

    path = Path(path)
    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.add_subplot()
    clicks = range(1, len(mean_ious) + 1)
    ax.plot(clicks, mean_ious, marker="o", markersize=3, linewidth=1.5, label="mean IoU")
    for t in targets:
        ax.axhline(t, color="grey", linewidth=0.6, linestyle="--")
    ax.set_xlabel("number of clicks")
    ax.set_ylabel("mean IoU (samples that stopped keep their last IoU)")
    ax.set_ylim(0, 1)
    ax.set_xlim(1, max(len(mean_ious), 2))
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # clicks are counted, never 1.25
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path
