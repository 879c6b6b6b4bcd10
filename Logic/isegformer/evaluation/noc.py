"""NoC evaluation (the paper's Table 1 protocol): how many clicks until the IoU target.

For each sample the simulated user (:class:`isegformer.clicks.ClickSimulator`) clicks on the
largest error, the predictor answers, and the loop stops once the IoU reaches ``stop_iou``
(0.90, after at least ``min_clicks``) or after ``max_clicks`` (20). NoC@t is the first click
whose IoU is >= t, or ``max_clicks`` when never reached; ">=20@t" counts the samples whose
NoC@t equals ``max_clicks`` (as the reference counts them, reaching t at exactly the last click
included).
"""
from __future__ import annotations

import logging
import resource
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
import torch

from ..clicks import Click, ClickSimulator
from ..click_engine.predictor import ClickPredictor
from ..click_engine.session import ClickSession
from ..errors import InvalidInputError
from ..progress import ProgressCallback, report

log = logging.getLogger(__name__)

NOC_THRESHOLDS = (0.80, 0.85, 0.90)


@dataclass
class Sample:
    """One image and the ground truth of one object (1 object, 0 background, -1 ignored)."""

    name: str
    image: np.ndarray
    gt: np.ndarray


@dataclass
class SampleResult:
    name: str
    clicks: list[Click]
    ious: np.ndarray            # IoU after each click, float32
    seconds: float


@dataclass
class NocReport:
    results: list[SampleResult]
    max_clicks: int
    stop_iou: float
    seconds: float              # wall time of the whole loop
    peak_memory_mb: float
    peak_memory_kind: str       # "cuda_max_allocated" or "process_peak_rss"
    device: str
    metrics: dict = field(default_factory=dict)


def iou(gt: np.ndarray, pred: np.ndarray) -> float:
    """IoU of ``pred`` and the object ``gt == 1``, over the pixels where ``gt != -1``."""
    valid = gt != -1
    obj = gt == 1
    union = np.logical_and(np.logical_or(pred, obj), valid).sum()
    inter = np.logical_and(np.logical_and(pred, obj), valid).sum()
    return float(inter / union) if union else 1.0


def number_of_clicks(ious: Sequence[float], target: float, max_clicks: int) -> int:
    """The 1-based first click with IoU >= target, or ``max_clicks`` if none."""
    hits = np.flatnonzero(np.asarray(ious) >= target)
    return int(hits[0]) + 1 if hits.size else max_clicks


def evaluate_sample(predictor: ClickPredictor, image: np.ndarray, gt: np.ndarray, *,
                    max_clicks: int = 20, stop_iou: float = 0.90, min_clicks: int = 1,
                    name: str = "",
                    on_click: Optional[Callable[[ClickSession, Click, float], None]] = None
                    ) -> SampleResult:
    """Run the simulated user on one sample; ``on_click(session, click, iou)`` sees each step."""
    gt = np.asarray(gt)
    if gt.ndim != 2 or gt.shape != np.asarray(image).shape[:2]:
        raise InvalidInputError(
            f"Sample {name!r}: the mask {gt.shape} must be 2D and as large as the image "
            f"{np.asarray(image).shape[:2]}.")
    if not (gt == 1).any():
        raise InvalidInputError(
            f"Sample {name!r} has no object pixel (no 1 in its mask): leave it out.")
    start = time.perf_counter()
    session = ClickSession(predictor, image)
    simulator = ClickSimulator(gt)
    pred = np.zeros(gt.shape, dtype=bool)
    ious: list[float] = []
    for click_number in range(1, max_clicks + 1):
        click = simulator.next_click(pred)
        _, pred = session.add_click(click.y, click.x, click.positive)
        ious.append(iou(gt, pred))
        if on_click is not None:
            on_click(session, click, ious[-1])
        if ious[-1] >= stop_iou and click_number >= min_clicks:
            break
    return SampleResult(name, list(simulator.clicks), np.asarray(ious, dtype=np.float32),
                        time.perf_counter() - start)


def mean_iou_curve(results: Sequence[SampleResult], max_clicks: int) -> np.ndarray:
    """Mean IoU after click 1..max_clicks; a sample that stopped early keeps its last IoU."""
    curves = [np.concatenate([r.ious, np.full(max_clicks - len(r.ious), r.ious[-1])])
              for r in results]
    return np.mean(curves, axis=0) if curves else np.zeros(0)


def summarize(results: Sequence[SampleResult], max_clicks: int,
              thresholds: Sequence[float] = NOC_THRESHOLDS, stop_iou: Optional[float] = None) -> dict:
    """NoC mean and std per threshold, the count of samples at ``max_clicks``, timing.

    A threshold above ``stop_iou`` (the IoU at which the loop stopped clicking) was not
    measured: a sample that stopped there would count as ``max_clicks``, a failure it never
    had. Its NoC and count are None, with ``"not_measured"`` saying why."""
    metrics: dict = {"samples": len(results)}
    for t in thresholds:
        key = f"{round(t * 100)}"
        if stop_iou is not None and t > stop_iou + 1e-9:
            metrics[f"noc@{key}"] = {"mean": None, "std": None, "not_measured":
                                     f"the loop stopped clicking at IoU {stop_iou:g}, below {t:g}"}
            metrics[f">={max_clicks}@{key}"] = None
            continue
        nocs = np.array([number_of_clicks(r.ious, t, max_clicks) for r in results], dtype=float)
        metrics[f"noc@{key}"] = {"mean": float(nocs.mean()) if nocs.size else float("nan"),
                                 "std": float(nocs.std()) if nocs.size else float("nan")}
        metrics[f">={max_clicks}@{key}"] = int((nocs == max_clicks).sum())
    clicks = sum(len(r.ious) for r in results)
    seconds = sum(r.seconds for r in results)
    metrics["clicks"] = clicks
    metrics["seconds_per_click"] = seconds / clicks if clicks else float("nan")
    metrics["mean_iou_per_click"] = mean_iou_curve(results, max_clicks).tolist()
    return metrics


def _peak_memory(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes
    return (peak / 2**20 if sys.platform == "darwin" else peak / 2**10), "process_peak_rss"


def evaluate(predictor: ClickPredictor, samples: Iterable[Sample], *, max_clicks: int = 20,
             stop_iou: float = 0.90, min_clicks: int = 1, total: Optional[int] = None,
             progress: Optional[ProgressCallback] = None) -> NocReport:
    """The NoC loop over ``samples``; ``progress(done, total, name)`` after each sample."""
    if max_clicks < 1:
        raise InvalidInputError(f"max_clicks must be at least 1, got {max_clicks}.")
    above = [t for t in NOC_THRESHOLDS if t > stop_iou + 1e-9]
    if above:
        log.warning("stop_iou %g is below NoC@%s: those are not measured (reported as None); use "
                    "a stop IoU of at least %g for every NoC of the protocol", stop_iou,
                    "/".join(str(round(t * 100)) for t in above), max(NOC_THRESHOLDS))
    if predictor.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(predictor.device)
    results: list[SampleResult] = []
    start = time.perf_counter()
    for sample in samples:
        results.append(evaluate_sample(predictor, sample.image, sample.gt, max_clicks=max_clicks,
                                       stop_iou=stop_iou, min_clicks=min_clicks,
                                       name=sample.name))
        log.info("%s: %d clicks, IoU %.4f", sample.name, len(results[-1].ious),
                 results[-1].ious[-1])
        report(progress, len(results), total or len(results), sample.name)
    peak, kind = _peak_memory(predictor.device)
    report_ = NocReport(results, max_clicks, stop_iou, time.perf_counter() - start, peak, kind,
                        str(predictor.device))
    report_.metrics = summarize(results, max_clicks, stop_iou=stop_iou)
    return report_
