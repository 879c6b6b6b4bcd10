"""The GPU check (run by gpu_check.sh): click latency, autocast error, peak memory, propagation.

For the click model (Swin-B; the golden formula weights when ISEGFORMER_GOLDEN holds them, else
torch's random init, seed 0), at 384x384 and 400x400, in float32, float32 with TF32 matmuls,
float16 autocast and bfloat16 autocast:

- the latency of one click's network work (image + its mirror, sigmoid, copy back to the host:
  ``ClickPredictor.predict_batch``), median / min / max of ``--repeats`` after ``--warmup``;
- the peak GPU memory (``torch.cuda.max_memory_allocated``) of that mode;
- the largest probability error against float32, on the golden forward inputs
  (ISEGFORMER_GOLDEN/forward.npz: real MR slices, previous masks and clicks) when present,
  else on random inputs (it says which). With the golden tiny model it also prints the error of
  each mode against the reference's own float32 logits.

Then STCN propagation of a 160x384x384 volume from 5 slices (random weights, synthetic volume).

    python benchmarks/gpu_check.py                 # on a CUDA machine
    python benchmarks/gpu_check.py --dry-run       # anywhere: tiny model, small sizes, CPU

``--dry-run`` proves the script end to end on a CPU; its figures mean nothing (autocast is
CUDA-only in the click model, so its errors there are 0 by construction).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

MODES = ("float32", "tf32", "float16", "bfloat16")


def versions(device: torch.device) -> list[str]:
    lines = [f"machine : {platform.platform()}; {os.cpu_count()} logical CPUs",
             f"python  : {platform.python_version()}; torch {torch.__version__}; numpy "
             f"{np.__version__}; CUDA runtime {torch.version.cuda}; cuDNN "
             f"{torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else '-'}"]
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        lines.append(f"device  : {torch.cuda.get_device_name(device)}; {props.total_memory / 2**30:.0f}"
                     f" GiB; compute capability {props.major}.{props.minor}")
    else:
        lines.append(f"device  : {device} (no GPU: dry run)")
    try:
        lines.append(f"load    : {'%.2f %.2f %.2f' % os.getloadavg()} (1, 5, 15-min load average)")
    except OSError:
        pass
    return lines


def golden_dir() -> Path | None:
    root = Path(os.environ.get("ISEGFORMER_GOLDEN",
                               Path(__file__).resolve().parents[2] / "shared" / "golden"))
    return root if (root / "forward.npz").is_file() else None


def formula_state_dict(golden: Path, manifest: str) -> dict[str, torch.Tensor]:
    """The golden fixtures' deterministic synthetic weights (weights_formula.py, numpy only)."""
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("weights_formula", golden / "weights_formula.py")
    formula = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(formula)
    entries = json.loads((golden / manifest).read_text())
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in formula.fill(entries).items()}


@contextlib.contextmanager
def tf32(enabled: bool):
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def predictor_for(model, device, mode: str):
    from isegformer.click_engine.predictor import ClickPredictor

    precision = "float32" if mode in ("float32", "tf32") else mode
    return ClickPredictor(model, device=device, precision=precision)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_clicks(model, device, mode: str, size: int, warmup: int, repeats: int):
    from isegformer.clicks import Click

    predictor = predictor_for(model, device, mode)
    rng = np.random.default_rng(0)
    image = rng.random((1, 3, size, size), dtype=np.float32)
    clicks = [[Click(size * 0.5, size * 0.5, True), Click(size * 0.3, size * 0.6, False)]]
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    with tf32(mode == "tf32"):
        for n in range(warmup + repeats):
            synchronize(device)
            start = time.perf_counter()
            predictor.predict_batch(image, clicks)  # returns host numpy: includes the copy
            synchronize(device)
            if n >= warmup:
                times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    return times, peak


def probabilities(model, device, mode: str, cases) -> list[np.ndarray]:
    out = []
    model.autocast_dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(mode)
    try:
        with tf32(mode == "tf32"), torch.no_grad():
            for image, prev, points in cases:
                logits = model(image.to(device), prev.to(device), points.to(device))
                out.append(torch.sigmoid(logits.float()).cpu().numpy())
    finally:
        model.autocast_dtype = None
    return out


def golden_cases(golden: Path | None, dry_run: bool):
    if golden is None:
        rng = torch.Generator().manual_seed(0)
        size = 64 if dry_run else 384
        image = torch.rand(2, 3, size, size, generator=rng)
        prev = torch.rand(2, 1, size, size, generator=rng)
        points = torch.tensor([[[size / 2, size / 2, 0], [size / 3, size / 4, 1]]] * 2,
                              dtype=torch.float64)
        return [(image, prev, points)], None
    data = np.load(golden / "forward.npz")
    cases, reference = [], []
    for k in range(int(data["num_cases"])):
        cases.append((torch.from_numpy(data[f"case{k}_image"]),
                      torch.from_numpy(data[f"case{k}_prev_mask"]),
                      torch.from_numpy(data[f"case{k}_points"].astype(np.float64))))
        reference.append(1 / (1 + np.exp(-data[f"case{k}_logits"].astype(np.float64))))
    if dry_run:
        cases, reference = cases[:1], reference[:1]
    return cases, reference


def check_clicks(args, device) -> None:
    from isegformer.click_engine.build import build_isegformer, load_click_model

    golden = golden_dir()
    if args.dry_run:
        variant, sizes = "tiny", (64, 80)
    else:
        variant, sizes = "swin_base", (384, 400)
    if golden is not None and variant == "swin_base":
        model = load_click_model(formula_state_dict(golden, "manifest_isegformer_swin_base.json"),
                                 device=device)
        weights = f"golden formula weights ({golden})"
    else:
        torch.manual_seed(0)
        model = build_isegformer(variant).to(device).eval()
        weights = "random weights (torch init, seed 0)"
    print(f"\n== click model: {variant}, {weights}")
    print(f"per click (one network call: image + mirror, sigmoid, copy to host), {args.repeats} "
          f"after {args.warmup} warm-up; ms median / min / max; peak GPU memory of the mode")
    for size in sizes:
        for mode in MODES:
            times, peak = time_clicks(model, device, mode, size, args.warmup, args.repeats)
            ms = [1000 * t for t in times]
            print(f"  {size}x{size} {mode:<9} {statistics.median(ms):9.2f} {min(ms):9.2f} "
                  f"{max(ms):9.2f} ms   peak {peak:8.0f} MB")

    cases, _ = golden_cases(golden, args.dry_run)
    where = ("the golden forward inputs (forward.npz: real MR slices, previous masks, clicks)"
             if golden is not None else "RANDOM inputs (no ISEGFORMER_GOLDEN/forward.npz found)")
    print(f"\nlargest probability error against float32 on {where}, {variant}:")
    if device.type != "cuda":
        print("  (dry run on the CPU: the click model autocasts on CUDA only, so these are 0)")
    base = probabilities(model, device, "float32", cases)
    for mode in MODES[1:]:
        other = probabilities(model, device, mode, cases)
        err = max(float(np.abs(a - b).max()) for a, b in zip(base, other))
        flips = sum(int(((a > 0.49) != (b > 0.49)).sum()) for a, b in zip(base, other))
        print(f"  {mode:<9} {err:.2e}  ({flips} mask pixels change at the 0.49 threshold)")
    if golden is not None:
        tiny = load_click_model(torch.load(golden / "tiny_isegformer_state_dict.pth",
                                           map_location="cpu", weights_only=True), device=device)
        cases, reference = golden_cases(golden, args.dry_run)
        print("the golden tiny model against the reference's float32 probabilities (forward.npz):")
        for mode in MODES:
            ours = probabilities(tiny, device, mode, cases)
            err = max(float(np.abs(a - b).max()) for a, b in zip(ours, reference))
            print(f"  {mode:<9} {err:.2e}")


def check_propagation(args, device) -> None:
    from isegformer.propagation.stcn import FusionNet, STCNNetwork, STCNPropagator

    frames, size = (12, 64) if args.dry_run else (160, 384)
    print(f"\n== STCN propagation: {frames}x{size}x{size} from 5 slices (random weights, "
          "synthetic volume), annotate_many")
    rng = np.random.default_rng(0)
    zz, yy, xx = np.mgrid[:frames, :size, :size]
    truth = (((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (size / 4 + 8 * np.sin(zz / 9)) ** 2)
    volume = np.clip(truth * 500 + rng.normal(100, 40, truth.shape), 0, None).astype(np.int16)
    truth = truth.astype(np.uint8)
    slices = [min(round(frames * i / 5), frames - 1) for i in range(1, 6)]
    torch.manual_seed(0)
    network, fusion = STCNNetwork().eval(), FusionNet().eval()
    warm = STCNPropagator.from_volume(volume[:6, :64, :64], 0, 1, network, fusion, device=device)
    warm.annotate(3, truth[3, :64, :64])
    del warm
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    synchronize(device)
    start = time.perf_counter()
    prop = STCNPropagator.from_volume(volume, 0, 1, network, fusion, device=device)
    prop.annotate_many([(index, truth[index]) for index in slices])
    labels = prop.labels()  # on the host: the result the user gets
    synchronize(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    print(f"  {seconds:.2f} s for the volume (from frames to host labels), {prop.frames_decoded} "
          f"slices decoded, peak GPU memory {peak:.0f} MB, labels {labels.shape}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny model, small sizes")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--skip-propagation", action="store_true")
    parser.add_argument("--propagation-only", action="store_true")
    args = parser.parse_args()
    if args.dry_run:
        device = torch.device("cpu")
        torch.set_num_threads(1)
        args.warmup = 1 if args.warmup is None else args.warmup
        args.repeats = 2 if args.repeats is None else args.repeats
    else:
        if not torch.cuda.is_available():
            print("No CUDA device is visible to torch: run this on a GPU machine, or use "
                  "--dry-run to test the script on a CPU.", file=sys.stderr)
            return 2
        device = torch.device("cuda")
        args.warmup = 10 if args.warmup is None else args.warmup
        args.repeats = 50 if args.repeats is None else args.repeats
    for line in versions(device):
        print(line)
    if not args.propagation_only:
        check_clicks(args, device)
    if not args.skip_propagation:
        check_propagation(args, device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
