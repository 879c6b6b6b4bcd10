"""Session bookkeeping at the paper's volume size (160 x 384 x 384): everything but the networks.

Times undo/redo of a propagation, the label map, and writing .seg.nrrd and session files, on the
real OAI-ZIB label geometry (femoral cartilage annotated on 5 slices, interpolation propagation).
Median of repeated runs after one warm-up. Run: ``PYTHONPATH=Logic python benchmarks/session_overheads.py``
"""
from __future__ import annotations

import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "Logic"))

from isegformer.session import Session  # noqa: E402
from isegformer.volume import read_volume  # noqa: E402

DATA = Path(os.environ.get("ISEGFORMER_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def median_seconds(run, repeats: int = 5) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    import torch

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"python {platform.python_version()}; torch {torch.__version__}; device: cpu (no network runs)")
    labels = read_volume(DATA / "oaizib_label" / "9092628_label.nii.gz")
    rng = np.random.default_rng(0)
    image = labels.array.astype(np.int16) * 100 + rng.integers(0, 50, labels.shape, dtype=np.int16)
    session = Session.open((image, labels.ijk_to_ras), axis=0)
    session.annotate_from_label_map(labels.array == 2, axis=0, indices=[20, 50, 80, 110, 140])
    start = time.perf_counter()
    session.propagate(method="interpolation")
    print(f"volume {session.volume.shape} (k, j, i); first interpolation propagation: "
          f"{time.perf_counter() - start:.2f} s (once)")

    def undo_redo():
        session.undo()
        session.redo()

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        rows = [
            ("undo + redo of a propagation", undo_redo),
            ("label_map()", session.label_map),
            ("save_segmentation (.seg.nrrd)", lambda: session.save_segmentation(folder / "s.seg.nrrd")),
            ("save (session, with volume)", lambda: session.save(folder / "s.isegsession")),
            ("save (session, without volume)", lambda: session.save(folder / "t.isegsession", include_volume=False)),
            ("Session.load (with volume)", lambda: Session.load(folder / "s.isegsession")),
        ]
        for name, run in rows:
            print(f"{name:34s} {median_seconds(run) * 1000:8.1f} ms")
        for name in ("s.seg.nrrd", "s.isegsession", "t.isegsession"):
            print(f"{name:34s} {(folder / name).stat().st_size / 1e6:8.2f} MB")
    print(f"undo history: {session.history.nbytes / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
