"""Where NoC samples come from: PNG folders (like the released OAI-ZIB test slices) or volumes.

A sample is one image and one object's ground truth. A mask with several labels (the OAI-ZIB
test slices hold femoral and tibial cartilage) gives one sample per label.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..errors import InvalidInputError
from ..volume.slice_choice import SliceChoice
from .noc import Sample

log = logging.getLogger(__name__)

# (images, masks) sub-folder names of the released OAI-ZIB-test.zip (reference: OAIZIBDataset)
DATASET_LAYOUTS = (("test/image", "test/annotations"), ("image", "annotations"))


def find_png_folders(images: Path, masks: Optional[Path]) -> tuple[Path, Path]:
    """The image and mask folders: given both, or found inside a dataset root."""
    images = Path(images).expanduser()
    if not images.is_dir():
        raise InvalidInputError(f"No such folder: {images}. Give the folder of PNG images.")
    if masks is not None:
        masks = Path(masks).expanduser()
        if not masks.is_dir():
            raise InvalidInputError(f"No such folder: {masks}. Give the folder of PNG masks.")
        return images, masks
    # the root itself, or one folder down (an archive unpacked into a folder of its own name)
    for root in [images, *sorted(p for p in images.iterdir() if p.is_dir())]:
        for image_dir, mask_dir in DATASET_LAYOUTS:
            if (root / image_dir).is_dir() and (root / mask_dir).is_dir():
                return root / image_dir, root / mask_dir
    raise InvalidInputError(
        f"{images} has no 'image' and 'annotations' sub-folders (the OAI-ZIB test layout): "
        "give the masks folder with --masks.")


def _as_model_image(array: np.ndarray, path: Path) -> np.ndarray:
    """uint8 (H, W, 3) as the reference reads it, or a gray image scaled to [0, 1]."""
    if array.min() == array.max():  # refused here, before any sample runs, not by the click session
        raise InvalidInputError(
            f"The image {path} is constant (every pixel is {array.flat[0]}): there is nothing to "
            "segment in it. Replace it, or move it and its mask out of the folders.")
    if array.dtype == np.uint8:
        return np.repeat(array[..., None], 3, axis=2) if array.ndim == 2 else array
    array = array.astype(np.float64)
    lo, hi = np.percentile(array, [0.1, 99.9])
    if hi <= lo:
        lo, hi = array.min(), array.max()
    log.info("%s is not 8-bit; scaled by its 0.1-99.9 percentiles.", path.name)
    return np.clip((array - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def _objects(labels: np.ndarray, wanted: Optional[Sequence[int]], objects: str) -> list[int]:
    present = [int(v) for v in np.unique(labels) if v > 0]
    if wanted:
        present = [v for v in present if v in set(wanted)]
    if objects == "last":
        # The reference evaluation script keeps only the last object of each image.
        present = present[-1:]
    return present


def png_samples(images_dir: Path, masks_dir: Path, labels: Optional[Sequence[int]] = None,
                objects: str = "all") -> list[Sample]:
    """One sample per image and object; masks are matched to images by their full stem.

    Pairing and reading follow the package's one PNG rule (:mod:`isegformer.volume.png_pairs`,
    :mod:`isegformer.volume.png_files`), the same as ``finetune``'s.
    """
    from ..volume.png_files import read_png_image, read_png_labels
    from ..volume.png_pairs import png_pairs

    samples: list[Sample] = []
    for image_path, mask_path in png_pairs(images_dir, masks_dir):
        image = _as_model_image(read_png_image(image_path), image_path)
        label_map = read_png_labels(mask_path)
        if label_map.shape != image.shape[:2]:
            raise InvalidInputError(
                f"The mask {mask_path} is {label_map.shape[1]}x{label_map.shape[0]} pixels but its "
                f"image {image_path.name} is {image.shape[1]}x{image.shape[0]}: a mask must have its "
                "image's size. Give the mask made on this image (or resize it with nearest-neighbour "
                "interpolation, which keeps its label values).")
        for value in _objects(label_map, labels, objects):
            samples.append(Sample(f"{image_path.name}#{value}", image,
                                  (label_map == value).astype(np.int8)))
    if not samples:
        raise InvalidInputError(f"No mask in {masks_dir} holds an object (a nonzero label).")
    return samples


def volume_samples(volume_path: Path, labels_path: Path, axis: int,
                   slices: Optional[SliceChoice] = None, labels: Optional[Sequence[int]] = None,
                   window: Optional[Sequence[float]] = None) -> list[Sample]:
    """One sample per chosen slice and label present in it; intensities by the volume's window.

    ``slices`` follows the package's one slice grammar (:mod:`isegformer.volume.slice_choice`):
    ``None`` or ``"all"`` for every slice holding an object, ``"paper"``, a spec such as
    ``"10,20,30-40"`` or a list of indices. Every chosen slice is checked (NaN/inf voxels, a
    constant image) before any sample is made, so a bad slice stops the evaluation before it starts.
    """
    from ..volume import read_label_map, read_volume
    from ..volume.intensity import normalize, robust_window
    from ..volume.slice_choice import chosen_slices
    from ..volume.slice_content import refuse_constant_slices, refuse_nonfinite_slices
    from ..volume.slicing import check_axis, extract_slice

    check_axis(axis)
    volume = read_volume(volume_path)
    label_map = read_label_map(labels_path, volume).array
    where = Path(volume_path).name
    chosen = chosen_slices(slices, volume.shape[axis], where, axis)
    indices = chosen if chosen is not None else range(volume.shape[axis])
    objects: list[tuple[int, np.ndarray, list[int]]] = []
    for index in indices:
        label_slice = np.rint(extract_slice(label_map, axis, index)).astype(np.int64)
        values = _objects(label_slice, labels, "all")
        if values:
            objects.append((index, label_slice, values))
    if not objects:
        which = "slices" if chosen is None else f"slices {chosen}"
        raise InvalidInputError(
            f"None of the chosen {which} of {Path(labels_path).name} holds the label(s) "
            f"{list(labels) if labels else 'any nonzero'}: choose other slices or --label.")
    used = [index for index, _, _ in objects]
    refuse_nonfinite_slices(volume.array, axis, used, where)
    low_high = tuple(window) if window else robust_window(volume.array)
    refuse_constant_slices(volume.array, axis, used, where, low_high)
    unit = normalize(volume.array, low_high)
    return [Sample(f"{where}:axis{axis}:{index}#{value}",
                   np.ascontiguousarray(extract_slice(unit, axis, index)),
                   (label_slice == value).astype(np.int8))
            for index, label_slice, values in objects for value in values]
