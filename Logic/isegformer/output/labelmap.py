"""Label maps as NIfTI, NRRD or MetaImage files, on the volume's grid (SimpleITK does the format).

A label map is a (k, j, i) integer array: 0 is background, segment ``n`` has its label value.
It is written with the volume's exact geometry, so Slicer and ITK tools overlay it in place.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from ..errors import InvalidInputError
from ..volume import Volume
from ..volume.image_io import read_label_map as _read_on_grid
from .atomic import write_image_verified

log = logging.getLogger(__name__)

#: Single-file formats only: a detached header (.nhdr, .mhd) names its data file, and a header
#: renamed after an atomic write would point at the temporary data file.
LABEL_MAP_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")


def check_label_map_path(path: str | os.PathLike) -> Path:
    """Refuse an output name whose suffix is not one of :data:`LABEL_MAP_SUFFIXES`, before any work."""
    path = Path(path)
    name = path.name.lower()
    if not name.endswith(LABEL_MAP_SUFFIXES) or name.endswith(".seg.nrrd"):
        raise InvalidInputError(
            f"Cannot write a label map to {path.name}: use .nii.gz, .nii, .nrrd or .mha "
            "(or save_segmentation for a Slicer .seg.nrrd); the two-file .nhdr and .mhd are read, "
            "not written."
        )
    return path


def write_label_map(path: str | os.PathLike, labels: np.ndarray, reference: Volume) -> Path:
    """Write ``labels`` (k, j, i) with ``reference``'s geometry; the suffix picks the format.

    uint8 when every value fits, else uint16. Written atomically; returns the path.
    """
    path = check_label_map_path(path)
    labels = np.asarray(labels)
    if labels.shape != reference.shape:
        raise InvalidInputError(
            f"The label map has shape {labels.shape} but the volume {reference.shape}."
        )
    if labels.dtype == np.bool_:
        labels = labels.astype(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        raise InvalidInputError(f"A label map holds integers, got dtype {labels.dtype}.")
    if labels.size and (labels.min() < 0 or labels.max() > 65535):
        raise InvalidInputError("Label values must lie in 0..65535.")
    dtype = np.uint8 if (labels.size == 0 or labels.max() <= 255) else np.uint16
    image = reference.to_sitk(labels.astype(dtype, copy=False))
    write_image_verified(image, path, compress=True)
    log.info("Wrote a label map %s to %s", labels.shape, path)
    return path


def read_label_map(path: str | os.PathLike, reference: Volume) -> np.ndarray:
    """Read a label map (any SimpleITK format, or a ``.seg.nrrd``) onto ``reference``'s grid.

    Returns a (k, j, i) integer array. This is :func:`isegformer.volume.read_label_map` (the one
    label reader: values checked, Slicer's flipped or cropped grids placed exactly, another grid
    refused), without the geometry.
    """
    path = Path(path)
    if not path.exists():
        raise InvalidInputError(f"No such label file: {path}.")
    return _read_on_grid(path, reference).array
