"""Memory and time of taking a label map with many labels into a Session.

Run: PYTHONPATH=Logic .venv/bin/python benchmarks/label_map_memory.py [--labels 60] [--repeats 3]
Before/after: ``--logic OTHER_CHECKOUT/Logic`` measures another checkout's package instead.

``annotate_from_label_map`` annotates every segment on every slice where any label is, so a
map of many small structures gives mostly empty or small slice masks. Each measurement runs in
a fresh process (peak RSS only grows): the growth of the peak RSS over the session's start, the
bytes the undo history counts, and the median time of ``annotate_from_label_map`` and of
``label_map()`` over ``--repeats`` new sessions after one warm-up. The map: ``--labels`` boxes
over runs of 20 slices in a (64, 256, 256) uint8 volume (seed 0).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def many_label_map(shape=(64, 256, 256), labels=60, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    label_map = np.zeros(shape, np.uint8)
    for value in range(1, labels + 1):
        k0 = int(rng.integers(0, shape[0] - 20))
        j0, i0 = (int(v) for v in rng.integers(0, shape[1] - 30, size=2))
        label_map[k0:k0 + 20, j0:j0 + int(rng.integers(3, 30)), i0:i0 + int(rng.integers(3, 30))] = value
    return label_map


def measure(logic: str, labels: int, repeats: int) -> dict:
    sys.path.insert(0, logic)
    from isegformer.session import Session
    from isegformer.volume import Volume

    label_map = many_label_map(labels=labels)
    volume = Volume(np.zeros(label_map.shape, np.int16), np.diag([0.5, 0.5, 2.0, 1.0]))

    def peak_mb() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    annotate_s, label_map_s = [], []
    result = {}
    for run in range(repeats + 1):
        session = Session.open(volume, click_model="swin_base")  # the model is never loaded
        before = peak_mb()
        started = time.perf_counter()
        session.annotate_from_label_map(label_map)
        annotated = time.perf_counter() - started
        started = time.perf_counter()
        back = session.label_map()
        composed = time.perf_counter() - started
        if run == 0:  # the first session's growth: nothing measured before it raised the peak
            result = {"peak_rss_growth_mb": peak_mb() - before, "history_bytes": session.history.nbytes,
                      "same_map_back": bool(np.array_equal(back, label_map))}
            continue
        annotate_s.append(annotated)
        label_map_s.append(composed)
    result.update(map_mb=label_map.nbytes / 1e6, segments=len(session.segments),
                  annotate_s=statistics.median(annotate_s), label_map_s=statistics.median(label_map_s),
                  annotate_range=(min(annotate_s), max(annotate_s)))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logic", default=str(ROOT / "Logic"), help="the package's folder to measure")
    parser.add_argument("--labels", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.logic, args.labels, args.repeats)))
        return 0
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, numpy {np.__version__}; load average at start "
          f"{os.getloadavg()[0]:.2f}; package {args.logic}")
    command = [sys.executable, __file__, "--child", "--logic", args.logic,
               "--labels", str(args.labels), "--repeats", str(args.repeats)]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    r = json.loads(out.strip().splitlines()[-1])
    print(f"label map {r['map_mb']:.1f} MB, {r['segments']} segments: peak RSS growth "
          f"{r['peak_rss_growth_mb']:.1f} MB, undo history {r['history_bytes'] / 1e6:.3f} MB, "
          f"same map back: {r['same_map_back']}")
    low, high = r["annotate_range"]
    print(f"annotate_from_label_map: median {r['annotate_s']:.2f} s (min {low:.2f}, max {high:.2f}, "
          f"{args.repeats} runs after one warm-up); label_map(): median {r['label_map_s']:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
