"""Per-click latency and peak memory of the click engine, optionally side by side with others.

Each click goes through the full predictor (zoom-in and flip: two images per network call)
exactly as a user's click does, on a synthetic 384x384 slice with Swin-B random weights
(seed 0). Engines, interleaved click by click in one process (same weights, same clicks, same
load), the order rotating every session:

- ``ours``: this package (``--precision`` float32, or ``int8`` for the fast CPU mode);
- ``ours:int8``: this package in the int8 fast CPU mode;
- ``baseline``: another checkout of this package (``--baseline PATH/Logic``), e.g. a git
  worktree of an older commit, for before/after figures;
- ``reference``: the reference iSegFormer v1.0 (``--reference CHECKOUT``; see
  ``reference_isegformer.py``), with the same weights.

For each engine it prints the wall-clock and the process CPU time per click, split into
unzoomed clicks (the first of each session) and zoomed ones (400x400-class crops), as median,
min and max after the warm-up clicks; ratios to the last engine; the largest probability
difference between engines on the same clicks; the process's peak RSS.

    PYTHONPATH=Logic python benchmarks/click_latency.py --sessions 3 --clicks 4
    PYTHONPATH=Logic python benchmarks/click_latency.py --engines ours reference \\
        --reference ~/src/iSegFormer --sessions 3 --clicks 4 --threads 2
    PYTHONPATH=Logic python benchmarks/click_latency.py --engines ours baseline \\
        --baseline /tmp/base/Logic --threads 1 --sessions 2

On a machine shared with other work, decide by the CPU times with ``--threads 1`` (wall
times are inflated by the other processes); on a quiet machine use the wall times.

In one process every engine shares this package's allocator setting (``ours`` keeps freed
blocks between clicks, ``click_engine/cpu_memory.py``), so an interleaved run measures the
code only. ``--processes N`` runs each engine in N fresh processes instead, one after the
other, the order rotating, and pools their clicks: the whole difference, including the page
faults the reference pays; ``--wait-load`` makes each process wait for a quiet machine:

    PYTHONPATH=Logic python benchmarks/click_latency.py --engines ours ours:int8 reference \
        --reference ~/src/iSegFormer --processes 3 --wait-load 1.0 --sessions 3 --clicks 3 --threads 2
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from isegformer.click_engine.build import build_isegformer
from isegformer.device import resolve_device

# A plausible sequence: two positives, a negative, then corrections (fractions of the size).
CLICKS = [(0.50, 0.50, True), (0.40, 0.55, True), (0.70, 0.30, False), (0.45, 0.62, True),
          (0.20, 0.80, False), (0.58, 0.47, True), (0.66, 0.70, False), (0.35, 0.40, True)]

#: how the tables split the clicks: (name, whether the click ran on a zoom-in crop)
CLICK_KINDS = (("unzoomed", False), ("zoomed", True))


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def load_average() -> str:
    try:
        return "%.2f %.2f %.2f" % os.getloadavg()
    except OSError:
        return "unavailable"


def peak_rss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def machine_lines(device: torch.device) -> list[str]:
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "-"
    return [
        f"machine : {platform.platform()}; {cpu_name()}; {os.cpu_count()} logical CPUs",
        f"python  : {platform.python_version()}; torch {torch.__version__}; "
        f"threads {torch.get_num_threads()}; numpy {np.__version__}",
        f"device  : {device} {gpu}",
        f"cpu blas: {cpu_blas_line()}",
        f"load    : {load_average()} (1, 5, 15-min load average at start)",
    ]


def cpu_blas_line() -> str:
    """Which BLAS this package's click model uses for its linear layers on the CPU."""
    try:
        from isegformer.click_engine import cpu_blas
    except ImportError:  # an older checkout of the package, without the choice
        return "PyTorch's (this package version has no other)"
    return cpu_blas.describe()


def test_image(size: int) -> np.ndarray:
    """A gray disc with texture on a darker background, uint8."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size * 0.5) ** 2 + (xx - size * 0.55) ** 2 < (size * 0.2) ** 2
    image = 60 + 120 * disc + rng.normal(0, 15, (size, size))
    return np.clip(image, 0, 255).astype(np.uint8)


def import_package_copy(logic_dir: str, name: str = "isegformer_baseline"):
    """Import another checkout's ``isegformer`` package under another name (its click engine
    imports itself relatively, so both versions live side by side in one process)."""
    init = Path(logic_dir).expanduser().resolve() / "isegformer" / "__init__.py"
    if not init.is_file():
        raise SystemExit(f"--baseline {logic_dir}: no isegformer/__init__.py there (give .../Logic)")
    spec = importlib.util.spec_from_file_location(name, init,
                                                  submodule_search_locations=[str(init.parent)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class PackageEngine:
    """This package (or another checkout of it): ClickPredictor + ClickSession."""

    def __init__(self, package: str, model: torch.nn.Module, device: torch.device,
                 precision: str) -> None:
        predictor_module = importlib.import_module(f"{package}.click_engine.predictor")
        self._session_module = importlib.import_module(f"{package}.click_engine.session")
        if package != "isegformer":
            build = importlib.import_module(f"{package}.click_engine.build")
            model = build.load_click_model(model.state_dict(), device=device)
        self.predictor = predictor_module.ClickPredictor(model, device=device, precision=precision)
        self.session = None

    def start(self, image: np.ndarray) -> None:
        self.session = self._session_module.ClickSession(self.predictor, image)
        self._shape = image.shape[:2]

    def click(self, y: int, x: int, positive: bool) -> tuple[np.ndarray, bool]:
        self.session.add_click(y, x, positive)  # includes the copy back to numpy
        zoomed = tuple(self.predictor.last_call.input_hw) != tuple(self._shape)
        return np.asarray(self.session.probability), zoomed


class ReferenceEngine:
    def __init__(self, checkout: str, model: torch.nn.Module, device: torch.device) -> None:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from reference_isegformer import ReferenceClickEngine

        from isegformer.click_engine.predictor import ZOOM_IN_DEFAULTS

        self.engine = ReferenceClickEngine(checkout, model.config, model.state_dict(),
                                           ZOOM_IN_DEFAULTS, device=str(device))

    def start(self, image: np.ndarray) -> None:
        self.engine.start(image)

    def click(self, y: int, x: int, positive: bool) -> tuple[np.ndarray, bool]:
        prob = self.engine.click(y, x, positive)
        zoomed = self.engine.predictor.zoom_in._object_roi is not None
        return np.asarray(prob), zoomed


def make_engine(spec: str, args, model, device):
    if spec == "ours":
        return PackageEngine("isegformer", model, device, args.precision)
    if spec == "ours:int8":
        return PackageEngine("isegformer", model, device, "int8")
    if spec == "baseline":
        if not args.baseline:
            raise SystemExit("--engines baseline needs --baseline PATH/Logic")
        import_package_copy(args.baseline)
        return PackageEngine("isegformer_baseline", model, device, "float32")
    if spec == "reference":
        if not args.reference:
            raise SystemExit("--engines reference needs --reference CHECKOUT (iSegFormer v1.0)")
        return ReferenceEngine(args.reference, model, device)
    raise SystemExit(f"unknown engine {spec!r}: ours, ours:int8, baseline, reference")


def summary(values: list[float]) -> str:
    if not values:
        return "   -      -      -  "
    return (f"{statistics.median(values):6.2f} {min(values):6.2f} {max(values):6.2f}")


def print_table(samples: dict[str, list[dict]], names: list[str], max_diff: dict[str, float]) -> None:
    """Per engine and kind of click: wall and process CPU seconds (median min max), the
    kernel's share, and the ratios of the medians to the last engine's."""
    print(f"{'engine':<10} {'clicks':<9} {'n':>2}   {'wall s':^20}   {'process CPU s':^20}"
          "   of which kernel (page faults...), median")
    medians: dict[tuple[str, str, str], float] = {}
    for spec in names:
        for kind, zoomed in CLICK_KINDS:
            rows = [r for r in samples[spec] if r["zoomed"] == zoomed]
            walls, cpus = [r["wall"] for r in rows], [r["cpu"] for r in rows]
            kernel = statistics.median([r["sys"] for r in rows]) if rows else float("nan")
            print(f"{spec:<10} {kind:<9} {len(rows):>2}   {summary(walls)}   {summary(cpus)}"
                  f"   {kernel:6.2f}")
            if rows:
                medians[spec, kind, "wall"] = statistics.median(walls)
                medians[spec, kind, "cpu"] = statistics.median(cpus)
    if len(names) > 1:
        last = names[-1]
        for spec in names[:-1]:
            parts = []
            for kind in ("unzoomed", "zoomed"):
                for clock in ("wall", "cpu"):
                    if (spec, kind, clock) in medians and (last, kind, clock) in medians:
                        parts.append(f"{kind} {clock} {medians[spec, kind, clock] / medians[last, kind, clock]:.3f}")
            print(f"ratio {spec}/{last} (medians): " + ", ".join(parts))
        for spec, diff in max_diff.items():
            print(f"largest probability difference {spec} vs {names[0]}: {diff:.2e}")


def run_processes(args: argparse.Namespace) -> int:
    """Each engine in fresh processes, one after the other, ``args.processes`` rounds, the
    order rotating every round: every process pays its own allocator's costs (page faults),
    which one shared process hides. Samples of all rounds are pooled per engine."""
    from quiet import wait_for_quiet_machine

    if args.threads:
        torch.set_num_threads(args.threads)  # for the machine lines; each process sets its own
    for line in machine_lines(resolve_device(args.device)):
        print(line)
    names = list(args.engines)
    samples: dict[str, list[dict]] = {spec: [] for spec in names}
    peaks: dict[str, list[float]] = {spec: [] for spec in names}
    loads: list[float] = []
    forwarded = ["--device", args.device, "--variant", args.variant, "--size", str(args.size),
                 "--sessions", str(args.sessions), "--clicks", str(args.clicks),
                 "--warmup", str(args.warmup), "--precision", args.precision]
    for option in ("baseline", "reference", "threads"):
        if getattr(args, option):
            forwarded += [f"--{option}", str(getattr(args, option))]
    with tempfile.TemporaryDirectory() as folder:
        for number in range(args.processes):
            for spec in names[number % len(names):] + names[:number % len(names)]:
                loads.append(wait_for_quiet_machine(args.wait_load))
                out = Path(folder) / f"{number}-{spec.replace(':', '_')}.json"
                done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--engines", spec,
                                       "--json", str(out), *forwarded], capture_output=True, text=True)
                if done.returncode != 0:
                    print(done.stdout[-2000:], done.stderr[-2000:])
                    return done.returncode
                result = json.loads(out.read_text())
                samples[spec] += [dict(row, process=number) for row in result["samples"][spec]]
                peaks[spec].append(result["peak_rss_mb"])
    print(f"{args.processes} fresh process(es) per engine, one after the other (order rotating); "
          f"1-minute load at their starts {min(loads):.2f}-{max(loads):.2f}"
          + (f" (each waited for < {args.wait_load})" if args.wait_load is not None else ""))
    print(f"each: {args.sessions} sessions x {args.clicks} clicks after {args.warmup} warm-up clicks; "
          "seconds per click (median min max), all processes pooled")
    print_table(samples, names, {})
    for spec in names:
        per_process = []
        for number in range(args.processes):
            rows = [r for r in samples[spec] if r["process"] == number]
            walls = {kind: [r["wall"] for r in rows if r["zoomed"] == zoomed]
                     for kind, zoomed in CLICK_KINDS}
            per_process.append(" / ".join(f"{statistics.median(w):.2f}" if w else "-" for w in walls.values()))
        print(f"{spec}: median wall s per process (unzoomed / zoomed), round by round: " + ", ".join(per_process))
    for spec in names:
        print(f"peak RSS of a {spec} process: {statistics.median(peaks[spec]):.0f} MB median, "
              f"{max(peaks[spec]):.0f} MB max")
    print(f"load    : {load_average()} (at the end)")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--variant", default="swin_base", choices=("swin_base", "swin_large", "tiny"))
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--engines", nargs="+", default=["ours"],
                        help="ours, ours:int8, baseline, reference (interleaved)")
    parser.add_argument("--baseline", help="Logic folder of another checkout of this package")
    parser.add_argument("--reference", help="checkout of uncbiag/iSegFormer, branch v1.0")
    parser.add_argument("--sessions", type=int, default=3, help="timed sessions after warm-up")
    parser.add_argument("--clicks", type=int, default=4, help="clicks per session")
    parser.add_argument("--warmup", type=int, default=2, help="untimed clicks per engine first")
    parser.add_argument("--forward-repeats", type=int, default=0,
                        help="also time ours' raw forward (batch 2) this many times")
    parser.add_argument("--precision", default="float32",
                        choices=("float32", "float16", "bfloat16", "int8"))
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", help="write every sample to this file")
    parser.add_argument("--processes", type=int, default=0,
                        help="run each engine in this many fresh processes instead (see run_processes)")
    parser.add_argument("--wait-load", type=float, default=None,
                        help="with --processes: before each, wait for a 1-minute load average below this")
    args = parser.parse_args()
    if args.processes:
        return run_processes(args)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = build_isegformer(args.variant).to(device)
    for line in machine_lines(device):
        print(line)
    print(f"model   : {args.variant} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M "
          f"parameters, random weights, seed 0); image {args.size}x{args.size}; "
          f"precision of 'ours' {args.precision}")
    engines = {spec: make_engine(spec, args, model, device) for spec in args.engines}
    image = test_image(args.size)
    clicks = [(int(round(y * (args.size - 1))), int(round(x * (args.size - 1))), p)
              for y, x, p in CLICKS[:max(1, args.clicks)]]

    for engine in engines.values():  # warm-up: first calls allocate, pick kernels, fill caches
        engine.start(image)
        for y, x, positive in (clicks * 2)[:args.warmup]:
            engine.click(y, x, positive)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)

    samples: dict[str, list[dict]] = {spec: [] for spec in engines}
    max_diff: dict[str, float] = {}
    names = list(engines)
    for s in range(args.sessions):
        order = names[s % len(names):] + names[:s % len(names)]
        for engine in engines.values():
            engine.start(image)
        for n, (y, x, positive) in enumerate(clicks):
            probs = {}
            for spec in order:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                wall, cpu = time.perf_counter(), time.process_time()
                kernel = resource.getrusage(resource.RUSAGE_SELF).ru_stime
                prob, zoomed = engines[spec].click(y, x, positive)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                samples[spec].append(dict(session=s, click=n, zoomed=bool(zoomed),
                                          wall=time.perf_counter() - wall,
                                          cpu=time.process_time() - cpu,
                                          sys=resource.getrusage(resource.RUSAGE_SELF).ru_stime
                                          - kernel))
                probs[spec] = prob
            for spec in names[1:]:
                diff = float(np.abs(probs[spec] - probs[names[0]]).max())
                max_diff[spec] = max(max_diff.get(spec, 0.0), diff)

    print(f"load    : {load_average()} (at the end)")
    print(f"{args.sessions} sessions x {len(clicks)} clicks after {args.warmup} warm-up clicks; "
          "seconds per click (median min max)")
    print_table(samples, names, max_diff)

    if args.forward_repeats:
        size = args.size
        net_in = torch.rand(2, 3, size, size, device=device)
        prev = torch.zeros(2, 1, size, size, device=device)
        points = torch.tensor([[[size / 2, size / 2, 0], [-1, -1, -1]]] * 2,
                              dtype=torch.float64, device=device)
        net = engines[names[0]].predictor.model if hasattr(engines[names[0]], "predictor") else model
        walls, cpus = [], []
        with torch.no_grad():
            for _ in range(args.forward_repeats + 1):
                wall, cpu = time.perf_counter(), time.process_time()
                net(net_in, prev, points)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                walls.append(time.perf_counter() - wall)
                cpus.append(time.process_time() - cpu)
        print(f"raw forward of {names[0]}, batch 2 x {size}x{size}, {args.forward_repeats} after 1 "
              f"warm-up: wall {summary(walls[1:])}, CPU {summary(cpus[1:])}")
    if device.type == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MB")
    print(f"peak RSS of this process: {peak_rss_mb():.0f} MB"
          + (" (all engines together)" if len(names) > 1 else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(dict(args=vars(args), samples=samples,
                                                   max_probability_difference=max_diff,
                                                   peak_rss_mb=peak_rss_mb())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
