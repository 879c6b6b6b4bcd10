"""Where NoC samples come from: PNG folders (like the released OAI-ZIB test slices) or volumes.

A sample is one image and one object's ground truth. A mask with several labels (the OAI-ZIB
test slices hold femoral and tibial cartilage) gives one sample per label.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

from ..errors import InvalidInputError
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


def _read_png(path: Path) -> np.ndarray:
    # Pillow is not a direct dependency; matplotlib and scikit-image (which are) require it.
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("L", "P", "I", "I;16", "I;16B", "I;16L", "F"):
                return np.array(img)
            return np.array(img.convert("RGB"))
    except OSError as err:
        raise InvalidInputError(f"Could not read {path} as an image: {err}") from err


def _as_model_image(array: np.ndarray, path: Path) -> np.ndarray:
    """uint8 (H, W, 3) as the reference reads it, or a gray image scaled to [0, 1]."""
    if array.dtype == np.uint8:
        return np.repeat(array[..., None], 3, axis=2) if array.ndim == 2 else array
    array = array.astype(np.float64)
    lo, hi = np.percentile(array, [0.1, 99.9])
    if hi <= lo:
        lo, hi = array.min(), array.max()
    if hi <= lo:
        raise InvalidInputError(f"{path.name} is a constant image: nothing to segment.")
    log.info("%s is not 8-bit; scaled by its 0.1-99.9 percentiles.", path.name)
    return np.clip((array - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def _as_label_image(array: np.ndarray, path: Path) -> np.ndarray:
    if array.ndim == 3:
        if not (array == array[..., :1]).all():
            raise InvalidInputError(
                f"The mask {path.name} has differing colour channels: give a single-channel "
                "label image (0 background, 1, 2, ... objects).")
        array = array[..., 0]
    return array.astype(np.int64)


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
    """One sample per image and object; masks are matched to images by file stem."""
    image_paths = sorted(images_dir.glob("*.png"))
    if not image_paths:
        raise InvalidInputError(f"No PNG images in {images_dir}.")
    masks = {p.name.split(".")[0]: p for p in masks_dir.glob("*.png")}
    samples: list[Sample] = []
    for path in image_paths:
        stem = path.name.split(".")[0]
        if stem not in masks:
            raise InvalidInputError(
                f"No mask for {path.name} in {masks_dir}: masks must share the image's name.")
        image = _as_model_image(_read_png(path), path)
        label_map = _as_label_image(_read_png(masks[stem]), masks[stem])
        if label_map.shape != image.shape[:2]:
            raise InvalidInputError(
                f"{masks[stem].name} is {label_map.shape}, its image {image.shape[:2]}.")
        for value in _objects(label_map, labels, objects):
            samples.append(Sample(f"{path.name}#{value}", image, (label_map == value).astype(np.int8)))
    if not samples:
        raise InvalidInputError(f"No mask in {masks_dir} holds an object (a nonzero label).")
    return samples


def parse_slices(spec: Optional[str], count: int) -> Optional[list[int]]:
    """'10,20,30-40' -> [10, 20, 30, ..., 40]; None -> None (every slice with the object)."""
    if not spec:
        return None
    out: list[int] = []
    try:
        for part in spec.split(","):
            part = part.strip()
            if "-" in part:
                first, last = (int(v) for v in part.split("-", 1))
                out.extend(range(first, last + 1))
            elif part:
                out.append(int(part))
    except ValueError as err:
        raise InvalidInputError(
            f"Could not read slices {spec!r}: use numbers and ranges, e.g. '10,20,30-40'.") from err
    bad = [s for s in out if not 0 <= s < count]
    if bad:
        raise InvalidInputError(f"Slices {bad} are outside the volume: it has slices 0..{count - 1}.")
    return out


def volume_samples(volume_path: Path, labels_path: Path, axis: int,
                   slices: Optional[str] = None, labels: Optional[Sequence[int]] = None,
                   window: Optional[Sequence[float]] = None) -> Iterator[Sample]:
    """One sample per chosen slice and label present in it; intensities by the volume's window."""
    from ..volume import read_label_map, read_volume
    from ..volume.intensity import normalize
    from ..volume.slicing import check_axis, extract_slice

    check_axis(axis)
    volume = read_volume(volume_path)
    label_map = read_label_map(labels_path, volume).array
    unit = normalize(volume.array, tuple(window) if window else None)
    chosen = parse_slices(slices, volume.shape[axis])
    indices = chosen if chosen is not None else range(volume.shape[axis])
    found = False
    for index in indices:
        label_slice = np.rint(extract_slice(label_map, axis, index)).astype(np.int64)
        for value in _objects(label_slice, labels, "all"):
            found = True
            yield Sample(f"{Path(volume_path).name}:axis{axis}:{index}#{value}",
                         np.ascontiguousarray(extract_slice(unit, axis, index)),
                         (label_slice == value).astype(np.int8))
    if not found:
        raise InvalidInputError(
            f"None of the chosen slices of {Path(labels_path).name} holds the label(s) "
            f"{list(labels) if labels else 'any nonzero'}: choose other slices or --label.")
