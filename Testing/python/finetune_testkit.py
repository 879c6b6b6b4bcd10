"""Shared test data for the fine-tuning command's tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def write_nifti(array: np.ndarray, path: Path) -> Path:
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    return path


def two_object_volume(folder: Path) -> tuple[Path, Path]:
    """A 12x40x40 float volume with objects of label 1 and label 2 on slices 2..9, and its label
    map, as ``vol.nii.gz`` and ``lab.nii.gz`` in ``folder``."""
    rng = np.random.default_rng(0)
    image = (rng.random((12, 40, 40)) * 50).astype(np.float32)
    label = np.zeros((12, 40, 40), np.uint8)
    label[2:10, 10:25, 12:28] = 1
    label[2:10, 28:36, 5:15] = 2
    image[label == 1] += 100
    image[label == 2] += 60
    return write_nifti(image, folder / "vol.nii.gz"), write_nifti(label, folder / "lab.nii.gz")
