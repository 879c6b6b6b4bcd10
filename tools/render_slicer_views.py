"""Draw what a user sees in Slicer after a short session, with Slicer's own renderer.

A scripted session through the module's Logic: a simulated user places points on a few axial
slices of a real brain MR with a tumour (each point where the current mask is most wrong, as
the NoC protocol's user does), then the annotated slices are propagated through the volume.
The Red, Yellow and Green slice views (Slicer's slice logic, displayable managers and markups
widgets from the slicer-core wheel, rendered offscreen) are written side by side into a PNG.

The click model is the golden folder's tiny test model with its trained delta (golden
README 2.3): small enough for a CPU, and object-shaped, but not the paper's Swin-B. The
propagation is the ``interpolation`` method, which needs no downloaded weights. The module
runs on slicer-core with Testing/python/slicer_standins.py for the Qt and application parts.

    .venv/bin/python tools/render_slicer_views.py --out docs/slicer_views.png
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "Testing" / "python"), str(ROOT / "Logic")]

#: image, label (any value > 0 is the object), and the image's licence
CASES = {
    "brats": ("brats/pat0001/Flair_subtrMeanDivStd.nii.gz", "brats/pat0001/OTMultiClass.nii.gz",
              "BRATS 2013 pat0001 FLAIR, CC BY-NC-SA 3.0 CH"),
    "brain": ("radiomics_brain/brain1_image.nrrd", "radiomics_brain/brain1_label.nrrd",
              "radiomics brain1 T1 post-contrast, BSD-3"),
}
SEGMENT_COLOR = (1.0, 0.78, 0.1)


def trained_tiny_checkpoint(golden: Path, folder: Path) -> Path:
    """The tiny model's state dict with the trained tensors applied, saved into ``folder``."""
    import torch

    state = torch.load(golden / "tiny_isegformer_state_dict.pth", map_location="cpu", weights_only=True)
    state.update(torch.load(golden / "tiny_isegformer_trained_delta.pth", map_location="cpu", weights_only=True))
    path = folder / "tiny_isegformer_trained.pth"
    torch.save(state, path)
    return path


def annotated_slices(label: np.ndarray, count: int) -> list[int]:
    """``count`` axial slices spread over the object's extent (its ends excluded)."""
    present = np.flatnonzero(label.any(axis=(1, 2)))
    return sorted({int(round(k)) for k in np.linspace(present[0], present[-1], count + 2)[1:-1]})


def click_slice(logic, label, index, clicks, ijk_to_ras):
    """Up to ``clicks`` simulated points on slice ``index``, each made through the Logic."""
    from isegformer.clicks.simulator import next_click

    truth = label[index].astype(bool)
    made = []
    for _ in range(clicks):
        current = logic.segmentArray()[index].astype(bool)
        click = next_click(truth, current, made)
        ras = (ijk_to_ras @ [click.x, click.y, index, 1.0])[:3]
        logic.addClick(ras, positive=click.positive, axis=0)
        made.append(click)
    return made


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * float((a & b).sum()) / max(int(a.sum() + b.sum()), 1)


def show(views, volume, ras_centre, field_of_view_mm, red_offset):
    """Each view through ``ras_centre``, ``field_of_view_mm`` wide; Red at ``red_offset`` (mm)."""
    views.showVolume(volume)
    for name, view in views.views.items():
        node = view.sliceNode
        width, height, depth = node.GetFieldOfView()
        node.SetFieldOfView(field_of_view_mm, field_of_view_mm * height / width, depth)
        node.JumpSliceByCentering(*ras_centre)
        if name == "Red":
            view.sliceLogic.SetSliceOffset(red_offset)
        else:
            view.sliceLogic.SnapSliceOffsetToIJK()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "slicer_views.png")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("ISEGFORMER_DATA", ROOT.parent / "shared" / "data")))
    parser.add_argument("--golden", type=Path,
                        default=Path(os.environ.get("ISEGFORMER_GOLDEN", ROOT.parent / "shared" / "golden")))
    parser.add_argument("--case", choices=sorted(CASES), default="brats",
                        help="brats: a whole tumour on FLAIR (the tiny model was trained on such slices); "
                             "brain: a T1c tumour the tiny model does not know")
    parser.add_argument("--slices", type=int, default=4, help="axial slices the user annotates")
    parser.add_argument("--clicks", type=int, default=3, help="points per annotated slice")
    parser.add_argument("--size", type=int, default=320, help="pixels per view (square)")
    parser.add_argument("--fov", type=float, default=110.0, help="field of view of each view (mm)")
    args = parser.parse_args(argv)
    for folder, what in ((args.data, "sample data (--data)"), (args.golden, "golden fixtures (--golden)")):
        if not folder.is_dir():
            parser.error(f"{what} not found at {folder}")

    import slicer_offscreen  # first: it loads torch's triton before any window exists
    import slicer_standins

    slicer = slicer_standins.install()
    scene = slicer_standins.new_scene()
    module = slicer_standins.import_module()
    views = slicer_offscreen.SliceViews(scene, args.size, args.size, applicationLogic=slicer.app.applicationLogic())

    image, labels, licence = CASES[args.case]
    print(f"image: {image} ({licence})")
    volume = slicer.util.loadVolume(str(args.data / image))
    labelNode = slicer.util.loadVolume(str(args.data / labels), properties={"labelmap": True})
    label = slicer.util.arrayFromVolume(labelNode) > 0  # Slicer's voxel order (K flipped), as the volume's
    scene.RemoveNode(labelNode)

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="isegformer-render-") as folder:
        logic = module.iSegFormerSlicerLogic()
        logic.setModelSettings(model=str(trained_tiny_checkpoint(args.golden, Path(folder))), device="cpu",
                               propagation="interpolation")
        logic.setVolume(volume)
        segmentation, segmentId = logic.setSegmentation()
        segmentation.GetSegmentation().GetSegment(segmentId).SetColor(*SEGMENT_COLOR)
        segmentation.GetSegmentation().GetSegment(segmentId).SetName("tumour")
        ijk_to_ras = logic.volumeIJKToWorld()
        try:
            indices = annotated_slices(label, args.slices)
            for index in indices:
                made = click_slice(logic, label, index, args.clicks, ijk_to_ras)
                print(f"slice {index}: {len(made)} points, Dice {dice(logic.segmentArray()[index], label[index]):.3f}")
            logic.propagate()
        finally:
            logic.shutdown()
    mask = logic.segmentArray()
    print(f"after propagation: Dice {dice(mask, label):.3f} over the volume "
          f"({time.monotonic() - started:.1f} s on the CPU)")

    centre_ijk = np.argwhere(label).mean(axis=0)[::-1]  # (i, j, k)
    centre = (ijk_to_ras @ [*centre_ijk, 1.0])[:3]
    middle = indices[len(indices) // 2]
    red_offset = float((ijk_to_ras @ [0.0, 0.0, middle, 1.0])[2])  # an annotated slice, with its points
    show(views, volume, centre, args.fov, red_offset)

    from PIL import Image

    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(views.capture(gap=6)).save(args.out, optimize=True)
    views.close()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
