"""STCN propagation at the paper's volume size: time, throughput and peak memory.

Work: a 160 x 384 x 384 volume (geometry of the OAI-ZIB label map in ISEGFORMER_DATA/oaizib_label)
propagated from 5 slices (the reference's Table 2 scheme, slice min(round(T*i/5), T-1)),
then one correction of the middle annotated slice. Two modes, each in its own process:
``sequential`` annotates the slices one after another (``annotate`` each time, the reference's
protocol); ``batch`` hands all 5 to ``annotate_many`` (same result, only the frames that are read). The image
is synthetic: the label map's classes mapped to intensities, smoothed, plus Gaussian noise
(the real image is not shared). Weights are random (torch default init, seed 0): speed and
memory do not depend on them. Each slice count runs in its own process, so that its peak RSS
is its own.

    PYTHONPATH=Logic .venv/bin/python benchmarks/propagation.py                 # 160 slices
    PYTHONPATH=Logic .venv/bin/python benchmarks/propagation.py --slices 40 80 160
    PYTHONPATH=Logic .venv/bin/python benchmarks/propagation.py --modes batch

Heavy (minutes per volume on 2 CPU cores): one run per slice count, after a small warm-up run.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DEFAULT_LABEL = Path(os.environ.get("ISEGFORMER_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) \
    / "oaizib_label" / "9092628_label.nii.gz"
INTENSITY = {0: 60, 1: 420, 2: 760, 3: 380, 4: 700}  # background, femur, fem. cartilage, tibia, tib. cartilage
OBJECT_LABEL = 2  # femoral cartilage, as in the paper's Table 2


def synthetic_volume(label: np.ndarray, seed: int = 0) -> np.ndarray:
    from skimage.filters import gaussian

    image = np.zeros(label.shape, np.float32)
    for value, level in INTENSITY.items():
        image[label == value] = level
    image = gaussian(image, sigma=(0.5, 1.5, 1.5), preserve_range=True).astype(np.float32)
    image += np.random.default_rng(seed).normal(0, 40, label.shape).astype(np.float32)
    return np.clip(image, 0, None).astype(np.int16)


def annotated_slices(num_frames: int, count: int = 5) -> list[int]:
    return [min(round(num_frames * i / count), num_frames - 1) for i in range(1, count + 1)]


def run_one(num_slices: int, label_path: Path, threads: int, cache_mib: int | None, mode: str) -> dict:
    import SimpleITK as sitk
    import torch

    from isegformer.propagation.stcn import FusionNet, STCNNetwork, STCNPropagator

    torch.set_num_threads(threads)
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(label_path)))
    start = (label.shape[0] - num_slices) // 2
    label = label[start:start + num_slices]
    volume = synthetic_volume(label)
    truth = (label == OBJECT_LABEL).astype(np.uint8)
    torch.manual_seed(0)
    network, fusion = STCNNetwork().eval(), FusionNet().eval()
    kwargs = {} if cache_mib is None else {"feature_cache_bytes": cache_mib * 2**20}

    # warm-up on a tiny stack (allocator, kernels), not timed
    small = STCNPropagator.from_volume(volume[:6, :64, :64], 0, 1, network, fusion, device="cpu")
    small.annotate(3, truth[3, :64, :64])

    cpu0, wall0 = time.process_time(), time.perf_counter()
    prop = STCNPropagator.from_volume(volume, 0, 1, network, fusion, device="cpu", **kwargs)
    slices = annotated_slices(num_slices)
    load = os.getloadavg()[0]
    if mode == "batch":
        prop.annotate_many([(index, truth[index]) for index in slices])
    else:
        for index in slices:
            prop.annotate(index, truth[index])
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    decoded, encoded = prop.frames_decoded, prop.frames_encoded

    middle = slices[len(slices) // 2]
    corrected = truth[middle].copy()
    corrected[:, : corrected.shape[1] // 2] = 0  # the user removes half of the object
    wall1 = time.perf_counter()
    prop.annotate(middle, corrected)
    correction_wall = time.perf_counter() - wall1

    labels = prop.labels()
    inter = np.logical_and(labels == 1, truth == 1).sum()
    dice = 2 * inter / max(1, (labels == 1).sum() + truth.sum())
    return {
        "mode": mode, "load_average": load, "slices": num_slices, "annotated": slices, "seconds": wall, "cpu_seconds": cpu,
        "frames_decoded": decoded, "frames_encoded": encoded,
        "slices_per_second": decoded / wall,
        "correction_seconds": correction_wall,
        "correction_frames": prop.frames_decoded - decoded,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "dice_random_weights": float(dice),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, nargs="+", default=[160])
    parser.add_argument("--label", type=Path, default=DEFAULT_LABEL)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--cache-mib", type=int, default=None, help="feature cache budget (default: the propagator's)")
    parser.add_argument("--modes", nargs="+", choices=("sequential", "batch"), default=["sequential", "batch"])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(args.slices[0], args.label, args.threads, args.cache_mib, args.modes[0])))
        return 0

    import torch

    print(f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start")
    print(f"device: cpu ({args.threads} torch threads); torch {torch.__version__}, numpy {np.__version__}")
    print(f"label geometry from {args.label}; synthetic image; random weights; 5 annotated slices, "
          "then 1 correction of the middle one; one run per slice count and mode (after a small warm-up)")
    header = (f"{'mode':>10} {'load':>5} {'slices':>6} {'seconds':>8} {'cpu s':>7} {'decoded':>7} {'encoded':>7} {'slices/s':>8} "
              f"{'correction s':>12} {'(frames)':>8} {'peak RSS GiB':>12}")
    print(header)
    for count, mode in [(count, mode) for count in args.slices for mode in args.modes]:
        command = [sys.executable, __file__, "--child", "--slices", str(count), "--label", str(args.label),
                   "--threads", str(args.threads), "--modes", mode]
        if args.cache_mib is not None:
            command += ["--cache-mib", str(args.cache_mib)]
        done = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy())
        if done.returncode != 0:
            print(done.stderr[-2000:])
            return done.returncode
        r = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{r['mode']:>10} {r['load_average']:>5.1f} {r['slices']:>6} {r['seconds']:>8.1f} {r['cpu_seconds']:>7.1f} {r['frames_decoded']:>7} "
              f"{r['frames_encoded']:>7} {r['slices_per_second']:>8.2f} {r['correction_seconds']:>12.1f} "
              f"{r['correction_frames']:>8} {r['peak_rss_gib']:>12.2f}")
    print(f"load average {os.getloadavg()[0]:.1f} at the end (other work on this machine slows the wall times)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
