"""Timing of the Slicer module's MRML-free work per click (no model): slice writing and the worker.

Run: PYTHONPATH=Logic python benchmarks/slicer_support_bench.py [--repeats 25]
Volume of the paper's knees (160 x 384 x 384, (k, j, i)) with four segments; median after warm-up.
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from isegformer.slicer_support.slice_write import EditRules, MaskMode, OverwriteMode, write_slice
from isegformer.slicer_support.transforms import slice_point
from isegformer.slicer_support.worker import Worker


def median_ms(function, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=25)
    args = parser.parse_args()
    try:
        import torch

        torch_version = torch.__version__
    except ImportError:
        torch_version = "not installed (not needed here)"
    print(f"machine: {platform.machine()} {platform.processor()} | cpus: {os.cpu_count()} | "
          f"python {platform.python_version()} | numpy {np.__version__} | torch {torch_version} | device: cpu")

    rng = np.random.default_rng(0)
    shape = (160, 384, 384)
    segments = {f"segment{n}": (rng.random(shape) > 0.7).astype(np.uint8) for n in range(4)}
    rules = EditRules(mask_mode=MaskMode.OUTSIDE_VISIBLE_SEGMENTS, overwrite_mode=OverwriteMode.ALL_SEGMENTS)
    for axis in (0, 1, 2):
        rows, cols = [n for a, n in enumerate(shape) if a != axis]
        mask = rng.random((rows, cols)) > 0.5
        index = shape[axis] // 2
        ms = median_ms(lambda: write_slice(mask, "segment0", segments, axis, index, rules), args.repeats)
        print(f"write_slice, axis {axis}, 4 segments, masking+overwrite: {ms:.2f} ms (median of {args.repeats})")

    ijk_to_ras = np.diag([0.36, 0.36, 0.7, 1.0])
    ms = median_ms(lambda: slice_point((30.0, 40.0, 50.0), ijk_to_ras, 0, shape), args.repeats)
    print(f"slice_point (RAS -> slice, row, col): {ms:.3f} ms")

    worker = Worker()
    try:
        ms = median_ms(lambda: worker.wait(worker.submit(lambda progress: None)), args.repeats * 4)
        print(f"worker round trip of an empty job: {ms:.3f} ms")
    finally:
        worker.shutdown()


if __name__ == "__main__":
    main()
