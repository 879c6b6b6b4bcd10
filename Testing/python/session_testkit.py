"""Shared helpers of the session and segment-CLI tests: a small real volume and the tiny model."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from isegformer.volume import Volume, read_volume

#: A BraTS FLAIR crop around the tumour: small enough for fast CPU clicks with the tiny model.
CROP_SHAPE = (12, 48, 48)


def crop(volume: Volume, start: tuple[int, int, int], shape: tuple[int, int, int]) -> Volume:
    """A sub-volume with its own exact geometry (the IJK origin moves to ``start``)."""
    k0, j0, i0 = start
    array = volume.array[k0:k0 + shape[0], j0:j0 + shape[1], i0:i0 + shape[2]]
    shift = np.eye(4)
    shift[:3, 3] = [i0, j0, k0]
    return Volume(np.ascontiguousarray(array), volume.ijk_to_ras @ shift)


def brats_crop(data_dir: Path) -> tuple[Volume, np.ndarray]:
    """(FLAIR crop, its tumour label crop) centred on the tumour of BraTS pat0001."""
    folder = data_dir / "brats" / "pat0001"
    image = read_volume(folder / "Flair_subtrMeanDivStd.nii.gz")
    labels = read_volume(folder / "OTMultiClass.nii.gz").array
    centre = np.argwhere(labels > 0).mean(axis=0).astype(int)
    start = tuple(int(c - s // 2) for c, s in zip(centre, CROP_SHAPE))
    cropped = crop(image, start, CROP_SHAPE)
    label_crop = crop(Volume(labels, image.ijk_to_ras), start, CROP_SHAPE).array
    return cropped, np.rint(label_crop).astype(np.uint8)


def tiny_predictor(golden_dir: Path):
    """The golden tiny iSegFormer (random weights: masks are not meaningful, the plumbing is real).

    Zoom-in is off to keep each click one small network call on the CPU.
    """
    from isegformer.click_engine.predictor import ClickPredictor

    return ClickPredictor(golden_dir / "tiny_isegformer.pth", device="cpu", zoom_in=False)


def single_torch_thread():
    """Generator for a fixture: one torch thread while a test module runs.

    The tiny model's layers are so small that thread start-up dominates; on a shared, busy
    CPU two threads made each click 30 times slower than one.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
