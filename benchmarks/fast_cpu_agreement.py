"""How close the int8 fast CPU mode stays to float32: mask IoU and the simulated user's clicks.

On each sample, the NoC protocol (simulated user, zoom-in, flip, until IoU 0.90 or 20 clicks) is
run twice, once with float32 and once with ``precision="int8"``, each with its own simulated
user. Reported per sample set: how many click sequences are identical, the NoC@85/90 of both,
and the IoU between the two modes' masks after the same click (while the sequences agree).

Samples: the reference's NoC cases (ISEGFORMER_GOLDEN/predictor*.npz) and real slices of
ISEGFORMER_DATA (BraTS pat0001/0002/0005 FLAIR whole tumour, axial; the radiomics brain
tumour, axial; the CLAIR knee template's femoral cartilage, sagittal). The model is the golden
tiny iSegFormer with its trained delta (the only trained weights available offline); pass
``--checkpoint`` to use a real checkpoint (e.g. the paper's Swin-B) instead.

    PYTHONPATH=Logic python benchmarks/fast_cpu_agreement.py
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(os.environ.get("ISEGFORMER_GOLDEN", ROOT / "shared" / "golden"))
DATA = Path(os.environ.get("ISEGFORMER_DATA", ROOT / "shared" / "data"))


def golden_model():
    from isegformer.click_engine.build import load_click_model

    state = torch.load(GOLDEN / "tiny_isegformer_state_dict.pth", map_location="cpu",
                       weights_only=True)
    state.update(torch.load(GOLDEN / "tiny_isegformer_trained_delta.pth", map_location="cpu",
                            weights_only=True))
    return load_click_model(state, device="cpu")


def golden_samples():
    for name in ("predictor", "predictor_trained"):
        path = GOLDEN / f"{name}.npz"
        if path.is_file():
            data = np.load(path)
            for k in range(int(data["num_cases"])):
                yield "golden", f"{name}:case{k}", data[f"case{k}_image"], data[f"case{k}_gt"]


def volume_slices(image_path: Path, label_path: Path, axis: int, count: int, select):
    """``count`` slices evenly spread over those holding the object (``select(labels)``)."""
    from isegformer.volume import read_volume
    from isegformer.volume.intensity import normalize
    from isegformer.volume.slicing import extract_slice

    volume = read_volume(image_path)
    labels = np.rint(read_volume(label_path).array).astype(np.int64)
    obj = select(labels)
    unit = normalize(volume.array, None)
    present = [i for i in range(obj.shape[axis]) if extract_slice(obj, axis, i).sum() >= 50]
    chosen = [present[round(j * (len(present) - 1) / max(count - 1, 1))]
              for j in range(min(count, len(present)))]
    for index in sorted(set(chosen)):
        yield (np.ascontiguousarray(extract_slice(unit, axis, index)),
               extract_slice(obj, axis, index).astype(np.int8), index)


def data_samples(per_volume: int):
    sets = []
    for patient in ("pat0001", "pat0002", "pat0005"):
        folder = DATA / "brats" / patient
        sets.append(("brats", folder / "Flair_subtrMeanDivStd.nii.gz", folder / "OTMultiClass.nii.gz",
                     0, lambda l: l > 0, patient))
    folder = DATA / "radiomics_brain"
    sets.append(("radiomics", folder / "brain1_image.nrrd", folder / "brain1_label.nrrd", 0,
                 lambda l: l == 1, "brain1"))
    folder = DATA / "knee_template"
    sets.append(("knee", folder / "CLAIR-Knee-103R_template_64x128x128.nii.gz",
                 folder / "CLAIR-Knee-103R_segmentation_64x128x128.nii.gz", 2,
                 lambda l: l == 2, "femoral cartilage"))
    for group, image, label, axis, select, what in sets:
        if not (image.is_file() and label.is_file()):
            print(f"skipped {group} {what}: {image} or {label} is missing")
            continue
        for unit, gt, index in volume_slices(image, label, axis, per_volume, select):
            yield group, f"{what}:axis{axis}:{index}", unit, gt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a click model file instead of the golden tiny model")
    parser.add_argument("--per-volume", type=int, default=4, help="slices per data volume")
    parser.add_argument("--max-clicks", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from isegformer.click_engine.build import load_click_model
    from isegformer.click_engine.predictor import ClickPredictor
    from isegformer.evaluation.noc import evaluate_sample, number_of_clicks

    model = load_click_model(args.checkpoint, device="cpu") if args.checkpoint else golden_model()
    float32 = ClickPredictor(model, device="cpu")
    int8 = ClickPredictor(model, device="cpu", precision="int8")
    print(f"model: {args.checkpoint or 'golden tiny iSegFormer + trained delta'}; NoC protocol, "
          f"stop at IoU 0.90 or {args.max_clicks} clicks; torch {torch.__version__}, "
          f"int8 engine {int8.model.int8_engine}")

    groups: dict[str, list[dict]] = {}
    for group, name, image, gt in list(golden_samples()) + list(data_samples(args.per_volume)):
        masks = {}

        def recorder(key):
            masks[key] = []
            return lambda session, click, iou: masks[key].append(session.probability > 0.49)

        a = evaluate_sample(float32, image, gt, max_clicks=args.max_clicks, on_click=recorder("f"))
        b = evaluate_sample(int8, image, gt, max_clicks=args.max_clicks, on_click=recorder("q"))
        ca = [(c.y, c.x, c.positive) for c in a.clicks]
        cb = [(c.y, c.x, c.positive) for c in b.clicks]
        same = 0
        while same < min(len(ca), len(cb)) and ca[same] == cb[same]:
            same += 1
        ious = []
        for j in range(same):  # same clicks so far: compare the two masks
            ma, mb = masks["f"][j], masks["q"][j]
            union = (ma | mb).sum()
            ious.append(1.0 if union == 0 else float((ma & mb).sum() / union))
        row = dict(name=name, identical=ca == cb, same_prefix=same, clicks=(len(ca), len(cb)),
                   noc85=(number_of_clicks(a.ious, 0.85, args.max_clicks),
                          number_of_clicks(b.ious, 0.85, args.max_clicks)),
                   noc90=(number_of_clicks(a.ious, 0.90, args.max_clicks),
                          number_of_clicks(b.ious, 0.90, args.max_clicks)),
                   min_mask_iou=min(ious) if ious else float("nan"),
                   mean_mask_iou=statistics.fmean(ious) if ious else float("nan"))
        groups.setdefault(group, []).append(row)
        print(f"  {group:<9} {name:<34} identical clicks {str(row['identical']):<5} "
              f"(first {same} of {len(ca)}/{len(cb)}), NoC@85 {row['noc85']}, NoC@90 "
              f"{row['noc90']}, mask IoU int8 vs float32 min {row['min_mask_iou']:.3f} mean "
              f"{row['mean_mask_iou']:.3f}", flush=True)
    print("summary (float32, int8):")
    for group, rows in groups.items():
        identical = sum(r["identical"] for r in rows)
        noc85 = [statistics.fmean(r["noc85"][i] for r in rows) for i in (0, 1)]
        noc90 = [statistics.fmean(r["noc90"][i] for r in rows) for i in (0, 1)]
        mins = [r["min_mask_iou"] for r in rows if r["same_prefix"]]
        means = [r["mean_mask_iou"] for r in rows if r["same_prefix"]]
        print(f"  {group:<9} {len(rows)} samples: identical click sequences {identical}/{len(rows)}; "
              f"mean NoC@85 {noc85[0]:.2f} / {noc85[1]:.2f}; mean NoC@90 {noc90[0]:.2f} / "
              f"{noc90[1]:.2f}; mask IoU (same clicks) worst {min(mins):.3f}, mean "
              f"{statistics.fmean(means):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
