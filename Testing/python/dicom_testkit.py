"""Real DICOM series for tests, written file by file with SimpleITK (GDCM), as a scanner's would be.

Each slice is its own MR image file with the tags a series reader sorts and places by:
ImagePositionPatient, ImageOrientationPatient, PixelSpacing, SliceThickness, InstanceNumber and
one SeriesInstanceUID.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


def write_dicom_series(
    folder: Path,
    voxels: np.ndarray,
    spacing: Sequence[float] = (0.5, 0.6, 1.5),
    origin_lps: Sequence[float] = (10.0, -20.0, 30.0),
    positions_lps: Sequence[Sequence[float]] | None = None,
) -> list[Path]:
    """Write ``voxels`` (k, j, i) int16 as one axial series; slice k at ``positions_lps[k]``
    (default: ``origin + k * spacing[2]`` along z). Returns the files in slice order."""
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    series_uid = "1.2.826.0.1.3680043.2.1125.1.4242"
    if positions_lps is None:
        positions_lps = [(origin_lps[0], origin_lps[1], origin_lps[2] + k * spacing[2])
                         for k in range(voxels.shape[0])]
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    files = []
    for k, position in enumerate(positions_lps):
        image = sitk.GetImageFromArray(np.ascontiguousarray(voxels[k].astype(np.int16)))
        image.SetSpacing((float(spacing[0]), float(spacing[1])))
        tags = {
            "0008|0016": "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
            "0008|0018": f"{series_uid}.{k + 1}",
            "0008|0060": "MR",
            "0010|0010": "Test^Series",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1.42",
            "0020|000e": series_uid,
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(repr(float(v)) for v in position),
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0028|0030": f"{spacing[1]!r}\\{spacing[0]!r}",  # row spacing, then column spacing
            "0018|0050": repr(float(spacing[2])),
        }
        for key, value in tags.items():
            image.SetMetaData(key, value)
        path = folder / f"slice{k:03d}.dcm"
        writer.SetFileName(str(path))
        writer.Execute(image)
        files.append(path)
    return files
