"""Per-click latency and peak memory of the click engine: Swin-B, 384x384, random weights.

Each click goes through the full predictor (zoom-in and flip: two images per network call)
exactly as a user's click does; the median is taken after warm-up clicks. The raw network
forward (a batch of 2 at 384x384) is timed separately.

    PYTHONPATH=Logic python benchmarks/click_latency.py --device cpu --sessions 2 --clicks 4

The issue's GPU target is <= 20 ms per click and <= 1.5 GB; the paper reports 64 ms and
2,797 MB on an A6000. On CPU the figure is only informative.
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import time

import numpy as np
import torch

from isegformer.click_engine.build import build_isegformer
from isegformer.click_engine.predictor import ClickPredictor
from isegformer.click_engine.session import ClickSession
from isegformer.device import resolve_device

# A plausible sequence: two positives, a negative, then corrections.
CLICKS = [(0.50, 0.50, True), (0.40, 0.55, True), (0.70, 0.30, False), (0.45, 0.62, True),
          (0.20, 0.80, False), (0.58, 0.47, True), (0.66, 0.70, False), (0.35, 0.40, True)]


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def peak_memory_mb(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "CUDA max_memory_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (rss / 2**20 if sys.platform == "darwin" else rss / 2**10), "process peak RSS"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def test_image(size: int) -> np.ndarray:
    """A gray disc with texture on a darker background, uint8."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size * 0.5) ** 2 + (xx - size * 0.55) ** 2 < (size * 0.2) ** 2
    image = 60 + 120 * disc + rng.normal(0, 15, (size, size))
    return np.clip(image, 0, 255).astype(np.uint8)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--variant", default="swin_base", choices=("swin_base", "swin_large", "tiny"))
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--sessions", type=int, default=3, help="timed sessions after warm-up")
    parser.add_argument("--clicks", type=int, default=len(CLICKS), help="clicks per session")
    parser.add_argument("--warmup", type=int, default=2, help="untimed clicks first")
    parser.add_argument("--forward-repeats", type=int, default=5)
    parser.add_argument("--precision", default="float32", choices=("float32", "float16", "bfloat16"))
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = build_isegformer(args.variant).to(device)
    predictor = ClickPredictor(model, device=device, precision=args.precision)
    image = test_image(args.size)
    clicks = [(y * args.size, x * args.size, p) for y, x, p in CLICKS[:max(1, args.clicks)]]

    print(f"machine : {platform.platform()}; {cpu_name()}; {os.cpu_count()} logical CPUs")
    print(f"python  : {platform.python_version()}; torch {torch.__version__}; "
          f"threads {torch.get_num_threads()}")
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "-"
    print(f"device  : {device} {gpu}; precision {args.precision}; model {args.variant} "
          f"({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters, random weights)")
    print(f"load    : {os.getloadavg()[0]:.1f} (1-min load average at start)")

    # warm-up (first calls allocate, pick kernels)
    warm = ClickSession(predictor, image)
    for y, x, positive in (clicks * 2)[:args.warmup]:
        warm.add_click(y, x, positive)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    first, later, sizes = [], [], []
    for _ in range(args.sessions):
        session = ClickSession(predictor, image)
        for n, (y, x, positive) in enumerate(clicks):
            synchronize(device)
            start = time.perf_counter()
            session.add_click(y, x, positive)   # includes the copy back to numpy
            elapsed = time.perf_counter() - start
            (first if n == 0 else later).append(elapsed)
            sizes.append(predictor.last_call.input_hw)

    net_in = torch.rand(2, 3, args.size, args.size, device=device)
    prev = torch.zeros(2, 1, args.size, args.size, device=device)
    points = torch.tensor([[[args.size / 2, args.size / 2, 0], [-1, -1, -1]]] * 2,
                          dtype=torch.float64, device=device)
    forward = []
    with torch.no_grad():
        for _ in range(args.forward_repeats + 1):
            synchronize(device)
            start = time.perf_counter()
            model(net_in, prev, points)
            synchronize(device)
            forward.append(time.perf_counter() - start)
    forward = forward[1:]

    every = first + later
    peak, kind = peak_memory_mb(device)
    print(f"network input sizes seen: {sorted(set(sizes))}")
    print(f"per click, median of {len(every)}: {1000 * statistics.median(every):.1f} ms "
          f"(first clicks, unzoomed: {1000 * statistics.median(first):.1f} ms; "
          f"later clicks: {1000 * statistics.median(later) if later else float('nan'):.1f} ms; "
          f"min {1000 * min(every):.1f}, max {1000 * max(every):.1f})")
    print(f"raw forward, batch 2 x {args.size}x{args.size}, median of {len(forward)}: "
          f"{1000 * statistics.median(forward):.1f} ms")
    print(f"peak memory: {peak:.0f} MB ({kind})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
