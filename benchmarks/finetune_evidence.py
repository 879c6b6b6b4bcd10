"""Does fine-tuning help? A tiny iSegFormer, trained from scratch on a few slices, against its
own untrained start: training BCE/IoU, and NoC@85 on held-out slices.

    PYTHONPATH=Logic OMP_NUM_THREADS=1 python benchmarks/finetune_evidence.py --dataset knee \
        --steps 900 --train-slices 6 --held-out 5 --no-zoom-in --threads 1 --out /tmp/ft_knee

``--dataset knee``: sagittal slices of the knee template, every label an object; held-out slices
lie between the training slices; NoC on femur and tibia. ``--dataset brats`` (default): whole
tumour (labels 1-4 merged, label maps written into --out) on FLAIR of pat0001 and pat0002,
held-out slices of pat0005 (a much harder test for a network this small).
Trains with ``isegformer.finetune`` and evaluates through ``isegformer evaluate-clicks`` (the
CLI, in a subprocess), exactly as a user would. Prints machine, torch version and the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

TRAIN_CASES = ("pat0001", "pat0002")
HELD_OUT_CASE = "pat0005"
IMAGE = "Flair_subtrMeanDivStd.nii.gz"
LABELS = "OTMultiClass.nii.gz"
TINY = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8), head_channels=32,
            drop_path_rate=0.0, dropout=0.0)


def whole_tumour(data_dir: Path, case: str, out: Path) -> Path:
    from isegformer.volume import read_volume, write_volume

    labels = read_volume(data_dir / "brats" / case / LABELS)
    path = out / f"{case}_whole_tumour.nii.gz"
    write_volume(labels, path, (np.rint(labels.array) > 0).astype(np.uint8))
    return path


def labelled_slices(label_path: Path, axis: int, count: int, min_area: int = 200) -> list[int]:
    """``count`` slices evenly spread over those whose tumour covers at least ``min_area`` pixels."""
    from isegformer.volume import read_volume

    areas = np.moveaxis(read_volume(label_path).array > 0, axis, 0).sum(axis=(1, 2))
    candidates = np.flatnonzero(areas >= min_area)
    picks = np.linspace(0, len(candidates) - 1, num=min(count, len(candidates))).round().astype(int)
    return sorted(int(candidates[p]) for p in np.unique(picks))


KNEE_IMAGE = "knee_template/CLAIR-Knee-103R_template_64x128x128.nii.gz"
KNEE_LABELS = "knee_template/CLAIR-Knee-103R_segmentation_64x128x128.nii.gz"
KNEE_BONES = (1, 3)  # femur, tibia: what the held-out NoC is measured on


def knee_data(data_dir: Path, train_count: int, held_count: int):
    """Sagittal slices (axis i) of the knee template: every label is a training object; the
    held-out slices lie between the training slices, and NoC is measured on the two bones."""
    from isegformer.finetune.data import slices_from_volume
    from isegformer.volume import read_volume

    labels = np.rint(read_volume(data_dir / KNEE_LABELS).array).astype(int)
    femur_area = np.moveaxis(labels == 1, 2, 0).sum(axis=(1, 2))
    usable = np.flatnonzero(femur_area >= 400)
    spread = np.linspace(usable[0], usable[-1], num=train_count + held_count).round().astype(int)
    train_idx, held_idx = sorted(set(spread[0::2].tolist())), sorted(set(spread[1::2].tolist()))
    train = slices_from_volume(data_dir / KNEE_IMAGE, data_dir / KNEE_LABELS, 2, train_idx)
    return train, data_dir / KNEE_IMAGE, data_dir / KNEE_LABELS, held_idx, "i", KNEE_BONES


def evaluate_clicks(model: Path, volume: Path, labels: Path, slices: list[int], out: Path,
                    max_clicks: int, zoom_in: bool, axis: str = "k",
                    label_values: tuple[int, ...] = ()) -> dict:
    cmd = [sys.executable, "-m", "isegformer.cli.main", "evaluate-clicks", "--model", str(model),
           "--volume", str(volume), "--labels", str(labels), "--axis", axis,
           "--slices", ",".join(map(str, slices)), "--max-clicks", str(max_clicks),
           "--stop-iou", "0.85", "--device", "cpu", "--out", str(out)]
    for value in label_values:
        cmd += ["--label", str(value)]
    if not zoom_in:
        cmd.append("--no-zoom-in")
    subprocess.run(cmd, check=True, env=dict(os.environ), stdout=subprocess.DEVNULL)
    return json.loads((out / "results.json").read_text())["metrics"]


def run(data_dir: Path, out: Path, steps: int, epochs: int, batch_size: int, crop: int,
        train_slices_per_case: int, held_out_slices: int, max_clicks: int, zoom_in: bool,
        seed: int = 0, embed_dim: int = TINY["embed_dim"], depth: int = 1,
        dataset: str = "brats") -> dict:
    from isegformer.click_engine.build import save_click_model
    from isegformer.click_engine.model import ClickModelConfig
    from isegformer.finetune.data import slices_from_volume
    from isegformer.finetune.trainer import FinetuneSettings, finetune, starting_model

    out.mkdir(parents=True, exist_ok=True)
    shape = dict(TINY, embed_dim=embed_dim, depths=(depth,) * 4, head_channels=2 * embed_dim)
    config = ClickModelConfig(**shape, name="evidence_tiny")
    if dataset == "knee":
        train, held_volume, held_labels, held_slices, axis, values = knee_data(
            data_dir, train_slices_per_case, held_out_slices)
    else:
        train = []
        for case in TRAIN_CASES:
            labels = whole_tumour(data_dir, case, out)
            chosen = labelled_slices(labels, 0, train_slices_per_case)
            train += slices_from_volume(data_dir / "brats" / case / IMAGE, labels, 0, chosen, label_value=1)
        held_labels = whole_tumour(data_dir, HELD_OUT_CASE, out)
        held_slices = labelled_slices(held_labels, 0, held_out_slices)
        held_volume = data_dir / "brats" / HELD_OUT_CASE / IMAGE
        axis, values = "k", ()

    settings = FinetuneSettings(
        init="scratch", model_config=config, epochs=epochs, steps_per_epoch=max(1, steps // epochs),
        batch_size=batch_size, crop_size=(crop, crop), seed=seed, device="cpu", val_samples=0)
    # The untrained start: exactly the weights the run begins from (drawn from the same seed).
    start_path = save_click_model(starting_model(settings)[0], out / "untrained.pth")
    run_dir = out / "run"
    t0 = time.perf_counter()
    result = finetune(train, run_dir, settings)
    train_seconds = time.perf_counter() - t0

    before = evaluate_clicks(start_path, held_volume, held_labels, held_slices, out / "eval_before",
                             max_clicks, zoom_in, axis, values)
    after = evaluate_clicks(result.checkpoint, held_volume, held_labels, held_slices,
                            out / "eval_after", max_clicks, zoom_in, axis, values)
    losses = [r.loss for r in result.history]
    return {
        "machine": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "train_slices": len(train), "held_out_slices": held_slices, "steps": settings.steps_per_epoch * epochs,
        "batch_size": batch_size, "crop": crop, "train_seconds": round(train_seconds, 1),
        "loss_per_epoch": [round(v, 4) for v in losses],
        "bce_per_epoch": [round(r.bce, 4) for r in result.history],
        "train_iou_per_epoch": [round(r.iou, 3) for r in result.history],
        "noc85_before": before["noc@85"]["mean"], "noc85_after": after["noc@85"]["mean"],
        "max_clicks": max_clicks, "zoom_in": zoom_in, "checkpoint": str(result.checkpoint),
        "network": {"embed_dim": embed_dim, "depths": list(config.depths)}, "dataset": dataset,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path(os.environ.get("ISEGFORMER_DATA", "../shared/data")))
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--crop", type=int, default=96)
    p.add_argument("--train-slices", type=int, default=6, help="per training case")
    p.add_argument("--held-out", type=int, default=6)
    p.add_argument("--max-clicks", type=int, default=20)
    p.add_argument("--no-zoom-in", action="store_true")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--embed-dim", type=int, default=TINY["embed_dim"])
    p.add_argument("--depth", type=int, default=1, help="Swin blocks per stage")
    p.add_argument("--dataset", choices=("brats", "knee"), default="brats")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    figures = run(args.data, args.out, args.steps, args.epochs, args.batch_size, args.crop,
                  args.train_slices, args.held_out, args.max_clicks, not args.no_zoom_in,
                  embed_dim=args.embed_dim, depth=args.depth, dataset=args.dataset)
    print(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
