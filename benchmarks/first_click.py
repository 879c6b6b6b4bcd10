"""Time to the first mask: a cold first click against one after Session's background warm-up.

Each run is a fresh Python process (imports count), on a 160 x 384 x 384 volume file (the
paper's knee geometry, synthetic intensities) and a Swin-B checkpoint file with random weights
(355 MB, read, hash-checked and loaded as a real one is), in a temporary ISEGFORMER_HOME:

- ``cold``: ``Session.open(volume)``, then the first click (which imports torch, reads and
  checks the checkpoint, builds the network and runs its first forward), then a second click;
- ``warm``: ``Session.open(volume, warm_up=True)``; the time until the model is ready (from the
  moment the volume is chosen, i.e. ``open`` is called), then the first click, then a second.

The two kinds alternate, ``--repeats`` times each; median, min and max are printed.

    PYTHONPATH=Logic python benchmarks/first_click.py --repeats 3
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
import tempfile
import time
from pathlib import Path

SHAPE = (160, 384, 384)  # (k, j, i): slices along k are 384 x 384
CLICK = (80, 192, 200)   # slice index, row, col: inside the bright block below


def make_inputs(folder: Path, variant: str) -> tuple[Path, Path]:
    import numpy as np
    import SimpleITK as sitk
    import torch

    from isegformer.click_engine.build import build_isegformer, save_click_model

    rng = np.random.default_rng(0)
    array = rng.normal(200, 30, SHAPE).astype(np.int16)
    array[40:120, 120:260, 130:270] += 400
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.3646, 0.3646, 0.7))
    volume = folder / "volume.nrrd"
    sitk.WriteImage(image, str(volume))
    torch.manual_seed(0)
    checkpoint = folder / f"{variant}_random.pth"
    save_click_model(build_isegformer(variant), checkpoint)
    return volume, checkpoint


def child(kind: str, volume: str, checkpoint: str) -> dict:
    start = time.perf_counter()
    import isegformer  # light: torch is imported by the click model's loading

    imported = time.perf_counter()
    result: dict = {"kind": kind, "import_s": imported - start}
    opened = time.perf_counter()
    session = isegformer.Session.open(volume, click_model=checkpoint, device="cpu",
                                      warm_up=(kind == "warm"))
    result["open_s"] = time.perf_counter() - opened
    if kind == "warm":
        handle = session.warm_up_click_model()
        handle.result()
        result["ready_after_open_s"] = time.perf_counter() - opened
        result["load_s"], result["warm_s"] = handle.load_seconds, handle.warm_seconds
    index, row, col = CLICK
    t = time.perf_counter()
    session.click_slice(0, index, row=row, col=col, positive=True)
    result["first_click_s"] = time.perf_counter() - t
    t = time.perf_counter()
    session.click_slice(0, index, row=row - 30, col=col + 20, positive=True)
    result["second_click_s"] = time.perf_counter() - t
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    import torch

    result["threads"] = torch.get_num_threads()
    return result


def stats(values: list[float]) -> str:
    return f"{statistics.median(values):7.2f} {min(values):7.2f} {max(values):7.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variant", default="swin_base", choices=("swin_base", "tiny"))
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--child", choices=("cold", "warm"), help=argparse.SUPPRESS)
    parser.add_argument("--volume", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.volume, args.checkpoint)))
        return 0

    print(f"machine : {platform.platform()}; {os.cpu_count()} logical CPUs; python "
          f"{platform.python_version()}")
    print(f"load    : {'%.2f %.2f %.2f' % os.getloadavg()} (1, 5, 15-min load average at start)")
    runs: dict[str, list[dict]] = {"cold": [], "warm": []}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        volume, checkpoint = make_inputs(folder, args.variant)
        env = dict(os.environ, ISEGFORMER_HOME=str(folder / "home"))
        if args.threads:  # through the environment: setting it in torch would import torch first
            env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
        for _ in range(args.repeats):
            for kind in ("cold", "warm"):
                command = [sys.executable, __file__, "--child", kind, "--volume", str(volume),
                           "--checkpoint", str(checkpoint)]
                out = subprocess.run(command, env=env, capture_output=True, text=True)
                if out.returncode:
                    sys.stderr.write(out.stderr)
                    return out.returncode
                runs[kind].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"load    : {'%.2f %.2f %.2f' % os.getloadavg()} (at the end)")
    print(f"{args.variant}, volume {SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]}, torch threads "
          f"{runs['cold'][0]['threads']}, {args.repeats} fresh processes each; "
          "seconds (median min max)")
    rows = [("import isegformer", "import_s"), ("Session.open", "open_s"),
            ("model ready after open (warm-up)", "ready_after_open_s"),
            ("  of which: load the model", "load_s"), ("  of which: warm-up click", "warm_s"),
            ("first click", "first_click_s"), ("second click", "second_click_s"),
            ("peak RSS (MB)", "peak_rss_mb")]
    for kind in ("cold", "warm"):
        for label, key in rows:
            values = [r[key] for r in runs[kind] if r.get(key) is not None]
            if values:
                print(f"{kind:<5} {label:<34} {stats(values)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
