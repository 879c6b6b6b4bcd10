"""STCN propagation at the paper's volume size: time, throughput and peak memory.

Work: a 160 x 384 x 384 volume (geometry of the OAI-ZIB label map in ISEGFORMER_DATA/oaizib_label)
propagated from 5 slices (the reference's Table 2 scheme, slice min(round(T*i/5), T-1)),
then one correction of the middle annotated slice (half of its object removed) and its
re-propagation. Two modes: ``sequential`` annotates the slices one after another (``annotate``
each time, the reference's protocol; the time of each interaction is printed), ``batch`` hands
all 5 to ``annotate_many`` (what ``Session.propagate`` does: same result, only the frames that
are read). The image is synthetic: the label map's classes mapped to intensities, smoothed,
plus Gaussian noise (the real image is not shared). Weights are random (torch default init,
seed 0): speed and memory do not depend on them.

Every run is a fresh process (its peak RSS, ``ru_maxrss``, is its own), after a small warm-up
inside it; ``--repeats`` runs per slice count and mode give the median, min and max. A 160-slice
run takes minutes on 2 cores, so the default is one repeat: the table says so.

    PYTHONPATH=Logic .venv/bin/python benchmarks/propagation.py                       # 160 slices, both modes
    PYTHONPATH=Logic .venv/bin/python benchmarks/propagation.py --modes batch --repeats 3
    PYTHONPATH=Logic .venv/bin/python benchmarks/propagation.py --slices 40 80 160 --modes sequential
    PYTHONPATH=Logic .venv/bin/python benchmarks/propagation.py --size 192 --slices 160  # memory behaviour, faster

Against the reference (its MiVOS inference core, see ``reference_propagation.py``), interleaved
fresh processes with the same weights, and the ratios of the medians:

    PYTHONPATH=Logic .venv/bin/python benchmarks/propagation.py --engines ours reference \\
        --reference ~/src/iSegFormer --modes batch sequential --threads 2 --wait-load 1.0

Before and after a change, against another checkout of this package (``git worktree add
/tmp/base HEAD``), interleaved the same way:

    PYTHONPATH=Logic .venv/bin/python benchmarks/propagation.py --engines baseline ours \\
        --baseline /tmp/base/Logic --slices 40 --modes batch --repeats 3 --threads 2

``--wait-load L`` starts each process only once the 1-minute load average is below L (the
load column is the one each process saw once its input was built).
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

DEFAULT_LABEL = Path(os.environ.get("ISEGFORMER_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) \
    / "oaizib_label" / "9092628_label.nii.gz"
INTENSITY = {0: 60, 1: 420, 2: 760, 3: 380, 4: 700}  # background, femur, fem. cartilage, tibia, tib. cartilage
OBJECT_LABEL = 2  # femoral cartilage, as in the paper's Table 2


def synthetic_volume(label: np.ndarray, seed: int = 0) -> np.ndarray:
    """Built slice by slice in float32, so that making the input does not set the peak RSS
    (a whole-volume float64 filter took about 0.6 GB at 160 slices)."""
    from scipy.ndimage import gaussian_filter

    lut = np.zeros(max(INTENSITY) + 1, np.float32)
    for value, level in INTENSITY.items():
        lut[value] = level
    image = gaussian_filter(lut[np.clip(label, 0, max(INTENSITY))], sigma=(0.5, 1.5, 1.5), output=np.float32)
    rng = np.random.default_rng(seed)
    out = np.empty(label.shape, np.int16)
    for k in range(label.shape[0]):
        noisy = image[k] + rng.normal(0, 40, label.shape[1:]).astype(np.float32)
        out[k] = np.clip(noisy, 0, None)
    return out


def annotated_slices(num_frames: int, count: int = 5) -> list[int]:
    return [min(round(num_frames * i / count), num_frames - 1) for i in range(1, count + 1)]


def load_label(label_path: Path, num_slices: int, size: int | None) -> np.ndarray:
    import SimpleITK as sitk

    label = sitk.GetArrayFromImage(sitk.ReadImage(str(label_path)))
    if num_slices > label.shape[0]:
        raise SystemExit(f"{label_path} has {label.shape[0]} slices; asked for {num_slices}")
    start = (label.shape[0] - num_slices) // 2
    label = label[start:start + num_slices]
    if size is not None:  # a centred in-plane crop, for quicker memory-behaviour runs
        top, left = (label.shape[1] - size) // 2, (label.shape[2] - size) // 2
        label = label[:, top:top + size, left:left + size]
    return np.ascontiguousarray(label)


def run_one(args: argparse.Namespace) -> dict:
    import torch

    from isegformer.propagation.stcn import FusionNet, STCNNetwork, STCNPropagator

    torch.set_num_threads(args.threads)
    label = load_label(args.label, args.slices[0], args.size)
    volume = synthetic_volume(label)
    truth = (label == OBJECT_LABEL).astype(np.uint8)
    del label
    torch.manual_seed(0)
    network, fusion = STCNNetwork().eval(), FusionNet().eval()
    kwargs = {} if args.cache_mib is None else {"feature_cache_bytes": args.cache_mib * 2**20}
    if args.winograd != "default":
        kwargs["winograd"] = args.winograd == "on"

    # warm-up on a tiny stack (allocator, kernels), not timed
    small = STCNPropagator.from_volume(volume[:6, :64, :64], 0, 1, network, fusion, device="cpu", **kwargs)
    small.annotate(3, truth[3, :64, :64])
    del small

    mode = args.modes[0]
    load = os.getloadavg()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    prop = STCNPropagator.from_volume(volume, 0, 1, network, fusion, device="cpu", **kwargs)
    slices = annotated_slices(volume.shape[0])
    interactions = []
    if mode == "batch":
        prop.annotate_many([(index, truth[index]) for index in slices])
    else:
        for index in slices:
            start = time.perf_counter()
            prop.annotate(index, truth[index])
            interactions.append(time.perf_counter() - start)
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
        "mode": mode, "load_average": load, "slices": int(volume.shape[0]), "size": list(volume.shape[1:]),
        "annotated": slices, "seconds": wall, "cpu_seconds": cpu, "interaction_seconds": interactions,
        "frames_decoded": decoded, "frames_encoded": encoded, "slices_per_second": decoded / wall,
        "correction_seconds": correction_wall, "correction_frames": prop.frames_decoded - decoded,
        "cache_frames": prop._cache.capacity,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "dice_random_weights": float(dice),
    }


def _spread(values: list[float], digits: int = 1) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.median(values):.{digits}f} [{min(values):.{digits}f}-{max(values):.{digits}f}]"


HERE = Path(__file__).resolve().parent
#: engine -> the script whose ``--child`` runs it (each prints one JSON line of ``run_one``'s keys)
ENGINE_SCRIPTS = {"ours": HERE / "propagation.py", "baseline": HERE / "propagation.py",
                  "reference": HERE / "reference_propagation.py"}


def child_environment(engine: str, args: argparse.Namespace) -> dict:
    """``baseline`` imports the package from ``--baseline`` (another checkout's Logic folder)."""
    env = os.environ.copy()
    if engine == "baseline":
        env["PYTHONPATH"] = os.pathsep.join([str(args.baseline), *filter(None, [env.get("PYTHONPATH")])])
    return env


def child_command(engine: str, count: int, mode: str, args: argparse.Namespace) -> list[str]:
    command = [sys.executable, str(ENGINE_SCRIPTS[engine]), "--child", "--slices", str(count),
               "--label", str(args.label), "--threads", str(args.threads), "--modes", mode]
    if engine in ("ours", "baseline"):
        command += ["--winograd", args.winograd]
        if args.cache_mib is not None:
            command += ["--cache-mib", str(args.cache_mib)]
    else:
        command += ["--reference", str(args.reference)]
    if args.size is not None:
        command += ["--size", str(args.size)]
    return command


def run_table(args: argparse.Namespace) -> int:
    """The table of fresh-process runs, each (slice count, engine, mode) ``args.repeats`` times.
    With several engines the runs are interleaved (ours, reference, ours, ...) so that a
    change in the machine's load falls on both, and the ratios to the reference are printed."""
    import torch

    from quiet import wait_for_quiet_machine

    print(f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores; load average {' '.join(f'{v:.2f}' for v in os.getloadavg())} at start")
    print(f"device: cpu, {args.threads} torch threads; torch {torch.__version__}, numpy {np.__version__}; "
          f"winograd {args.winograd}, cache {args.cache_mib or 'default'} MiB; engines {' '.join(args.engines)}"
          + (f" (reference: {args.reference})" if "reference" in args.engines else ""))
    print(f"label geometry from {args.label}; synthetic image; random weights (the same in every engine); "
          f"5 annotated slices, then 1 correction of the middle one; {args.repeats} fresh-process run(s) "
          "per row after an in-process warm-up (median [min-max] where more than one)"
          + (f"; each process waited for a 1-minute load below {args.wait_load}" if args.wait_load else ""))
    print(f"{'engine':>9} {'mode':>10} {'load':>5} {'slices':>9} {'seconds':>17} {'cpu s':>17} {'decoded':>7} "
          f"{'encoded':>7} {'correction s':>12} {'(frames)':>8} {'cache':>5} {'peak RSS GiB':>17}  interactions s")
    for count in args.slices:
        # the reference has one protocol: one interaction after another
        jobs = [(engine, mode) for engine in args.engines
                for mode in (args.modes if engine != "reference" else ["sequential"])]
        runs: dict = {job: [] for job in jobs}
        for _ in range(max(1, args.repeats)):
            for job in jobs:
                wait_for_quiet_machine(args.wait_load)
                done = subprocess.run(child_command(job[0], count, job[1], args), capture_output=True,
                                      text=True, env=child_environment(job[0], args))
                if done.returncode != 0:
                    print(done.stderr[-2000:])
                    return done.returncode
                runs[job].append(json.loads(done.stdout.strip().splitlines()[-1]))
        for (engine, mode), rows in runs.items():
            r = rows[0]
            shape = f"{r['slices']}x{r['size'][0]}"
            interactions = " ".join(f"{s:.1f}" for s in r["interaction_seconds"])
            print(f"{engine:>9} {mode:>10} {max(x['load_average'][0] for x in rows):>5.1f} {shape:>9} "
                  f"{_spread([x['seconds'] for x in rows]):>17} {_spread([x['cpu_seconds'] for x in rows]):>17} "
                  f"{r['frames_decoded']:>7} {r['frames_encoded']:>7} "
                  f"{_spread([x['correction_seconds'] for x in rows]):>12} {r['correction_frames']:>8} "
                  f"{r['cache_frames']:>5} {_spread([x['peak_rss_gib'] for x in rows], 2):>17}  {interactions}",
                  flush=True)
        for mode in args.modes:
            baseline, ours = runs.get(("baseline", mode)), runs.get(("ours", mode))
            if baseline and ours:
                print(f"  ratio ours / baseline, {mode}, at {count} slices: wall "
                      + ", cpu ".join(f"{statistics.median(x[key] for x in ours) / statistics.median(x[key] for x in baseline):.3f}"
                                      for key in ("seconds", "cpu_seconds"))
                      + f", peak RSS {statistics.median(x['peak_rss_gib'] for x in ours) / statistics.median(x['peak_rss_gib'] for x in baseline):.3f} (medians)",
                      flush=True)
        reference = runs.get(("reference", "sequential"))
        if reference:
            def median(rows, key):
                return statistics.median(x[key] for x in rows)
            for (engine, mode), rows in runs.items():
                if engine == "reference":
                    continue
                print(f"  ratio ours {mode} / reference at {count} slices: wall "
                      f"{median(rows, 'seconds') / median(reference, 'seconds'):.3f}, cpu "
                      f"{median(rows, 'cpu_seconds') / median(reference, 'cpu_seconds'):.3f}, peak RSS "
                      f"{median(rows, 'peak_rss_gib') / median(reference, 'peak_rss_gib'):.3f} (medians)",
                      flush=True)
    print(f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())} at the end (other work on this "
          "machine slows the wall times; cpu s is this process's CPU time, all threads)")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, nargs="+", default=[160])
    parser.add_argument("--size", type=int, default=None, help="centred in-plane crop (default: the full 384x384)")
    parser.add_argument("--label", type=Path, default=DEFAULT_LABEL)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=1, help="fresh-process runs per slice count and mode")
    parser.add_argument("--cache-mib", type=int, default=None, help="feature cache budget (default: the propagator's)")
    parser.add_argument("--winograd", choices=("default", "on", "off"), default="default")
    parser.add_argument("--modes", nargs="+", choices=("sequential", "batch"), default=["sequential", "batch"])
    parser.add_argument("--engines", nargs="+", choices=tuple(ENGINE_SCRIPTS), default=["ours"],
                        help="ours and/or reference (interleaved, in fresh processes)")
    parser.add_argument("--reference", type=Path, default=None,
                        help="iSegFormer v1.0 checkout (or its maskprop/MiVOS folder), for --engines reference")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="for --engines baseline: the Logic folder of another checkout (e.g. a git worktree)")
    parser.add_argument("--wait-load", type=float, default=None,
                        help="before each fresh process, wait for a 1-minute load average below this")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(args)))
        return 0
    if "baseline" in args.engines and args.baseline is None:
        raise SystemExit("--engines baseline needs --baseline PATH/Logic")
    if "reference" in args.engines and args.reference is None:
        raise SystemExit("--engines reference needs --reference CHECKOUT (uncbiag/iSegFormer v1.0)")
    return run_table(args)


if __name__ == "__main__":
    sys.exit(main())
