"""Training data for fine-tuning: a few segmented slices, from volumes or from PNG folders.

Every source becomes a list of :class:`TrainingSlice`: a gray slice mapped to [0, 1] and
replicated to 3 channels (exactly as the click engine sees slices), with an integer label map.
Objects are class-agnostic: either one chosen label value is *the* object, or each label value
is an object of its own and training picks one at random per crop.

Everything that can be wrong with the data is checked here, when the slices are loaded, so that
a bad file is reported before any training starts.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..errors import InvalidInputError
from ..volume import read_label_map, read_volume
from ..volume.intensity import gray_to_rgb, normalize, robust_window
from ..volume.png_files import MAX_PNG_PIXELS, read_png_image, read_png_labels  # noqa: F401
from ..volume.png_pairs import png_pairs
from ..volume.slice_choice import PAPER_SLICES, SliceChoice, chosen_slices, parse_slice_choice  # noqa: F401
from ..volume.slice_content import refuse_constant_slices, refuse_nonfinite_slices
from ..volume.slicing import check_axis, extract_slice
from .augment import PADDING_LABEL, Augmenter, center_crop
from .points_sampler import MultiPointSampler

log = logging.getLogger(__name__)

#: Objects smaller than this (in pixels) are not used as training targets (the paper's value).
DEFAULT_MIN_AREA = 20


@dataclass
class TrainingSlice:
    """One annotated 2D slice: ``image`` (H, W, 3) float32 in [0, 1], ``label`` (H, W) int32.

    ``label`` holds 0 for background and positive ids for objects; ``object_ids`` are the ids
    large enough to be training targets.
    """

    image: np.ndarray
    label: np.ndarray
    object_ids: tuple[int, ...]
    name: str

    def object_mask(self, object_id: int) -> np.ndarray:
        return self.label == object_id


# --- labels ---------------------------------------------------------------------------------------
def _integer_labels(array: np.ndarray, what: str) -> np.ndarray:
    """Label maps are integers; floats are accepted when they hold whole numbers (BRATS does)."""
    if np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_:
        return array.astype(np.int32, copy=False)
    if not np.issubdtype(array.dtype, np.floating) or not np.all(np.isfinite(array)):
        raise InvalidInputError(f"{what} is not a label map (dtype {array.dtype}, or NaN/inf values).")
    rounded = np.rint(array)
    if np.max(np.abs(array - rounded)) > 1e-3:
        raise InvalidInputError(
            f"{what} holds non-integer values (e.g. {float(array.flat[np.argmax(np.abs(array - rounded))]):g}): "
            "it looks like an image, not a label map. Give the segmentation (label map) file."
        )
    return rounded.astype(np.int32)


def _select_objects(label: np.ndarray, label_value: Optional[int]) -> np.ndarray:
    """A label map with only the chosen value (as 1), or every positive value, as objects."""
    if label_value is None:
        return np.where(label > 0, label, 0).astype(np.int32)
    return (label == label_value).astype(np.int32)


def _large_objects(label: np.ndarray, min_area: int) -> tuple[int, ...]:
    ids, counts = np.unique(label[label > 0], return_counts=True)
    return tuple(int(i) for i, c in zip(ids, counts) if c >= min_area)


def _check_label_value(values: np.ndarray, label_value: Optional[int], what: str) -> None:
    present = sorted(int(v) for v in values if v > 0)
    if not present:
        raise InvalidInputError(
            f"{what} has no labelled voxel (only background, 0). Segment at least a few slices first."
        )
    if label_value is not None and label_value not in present:
        raise InvalidInputError(
            f"{what} holds label values {present}, not {label_value}. Choose one of them with "
            "--label-value, or leave it out to train on every label as its own object."
        )


# --- volumes --------------------------------------------------------------------------------------
def slices_from_volume(
    volume_path: str | os.PathLike,
    label_path: str | os.PathLike,
    axis: int = 0,
    slices: SliceChoice = "paper",
    label_value: Optional[int] = None,
    min_area: int = DEFAULT_MIN_AREA,
) -> list[TrainingSlice]:
    """The training slices of one volume and its label map (on the same grid).

    ``axis`` 0, 1, 2 slices along k, j, i (``array[index]``, ``array[:, index]``, ...).
    ``slices`` is ``"paper"`` (those of 40, 80, 120 that exist), ``"all"`` (every slice with an
    object of at least ``min_area`` pixels) or explicit indices (each must exist).
    """
    check_axis(axis)
    volume = read_volume(volume_path)
    label_volume = read_label_map(label_path, volume)  # raises if on another grid
    name = f"{Path(volume_path).parent.name}/{Path(volume_path).name}"
    what = f"The label map {Path(label_path).name}"
    labels = _integer_labels(label_volume.array, what)
    _check_label_value(np.unique(labels), label_value, what)
    objects = _select_objects(labels, label_value)
    count = volume.shape[axis]

    chosen = chosen_slices(slices, count, name, axis)
    if chosen is None:  # "all"
        moved = np.moveaxis(objects, axis, 0)
        indices = [i for i in range(count) if moved[i].any()]
    else:
        indices = chosen
    if not indices:
        raise InvalidInputError(
            f"{name} has no slice to train on along axis {axis} ({count} slices). Choose slices "
            "with --slices (e.g. --slices all), or another --axis."
        )

    usable, unlabelled, too_small = [], [], []
    for index in indices:
        label = np.ascontiguousarray(extract_slice(objects, axis, index))
        if not label.any():
            unlabelled.append(index)
            continue
        ids = _large_objects(label, min_area)
        if not ids:
            too_small.append(index)
            continue
        usable.append((index, label, ids))
    # Every training slice is checked before the window (which refuses any NaN without saying where).
    refuse_nonfinite_slices(volume.array, axis, [index for index, _, _ in usable], name)
    window = robust_window(volume.array)
    refuse_constant_slices(volume.array, axis, [index for index, _, _ in usable], name, window)
    result = []
    for index, label, ids in usable:
        image = gray_to_rgb(normalize(extract_slice(volume.array, axis, index), window))
        result.append(TrainingSlice(image.astype(np.float32), label, ids, f"{name} axis {axis} slice {index}"))
    if unlabelled or too_small:
        log.warning("%s: skipped slices %s (no object) and %s (objects under %d pixels).",
                    name, unlabelled, too_small, min_area)
    if not result:
        reason = (
            f"every chosen slice's objects are smaller than {min_area} pixels (slices {too_small})"
            if too_small else f"none of the chosen slices {indices} holds a labelled object"
        )
        raise InvalidInputError(
            f"{name}: no usable training slice along axis {axis}: {reason}. Segment the object in "
            "a few slices first, choose the slices that hold it with --slices (or --slices all), "
            "or check --axis and --label-value."
        )
    return result


def slices_from_volumes(
    volume_paths: Sequence[str | os.PathLike],
    label_paths: Sequence[str | os.PathLike],
    axis: int = 0,
    slices: SliceChoice = "paper",
    label_value: Optional[int] = None,
    min_area: int = DEFAULT_MIN_AREA,
) -> list[TrainingSlice]:
    """:func:`slices_from_volume` for pairs of volumes and label maps (in the same order)."""
    if not volume_paths:
        raise InvalidInputError("No training volume was given: pass --volumes and --labels.")
    if len(volume_paths) != len(label_paths):
        raise InvalidInputError(
            f"{len(volume_paths)} volume(s) but {len(label_paths)} label map(s) were given: pass "
            "one label map per volume, in the same order."
        )
    result: list[TrainingSlice] = []
    for volume_path, label_path in zip(volume_paths, label_paths):
        result += slices_from_volume(volume_path, label_path, axis, slices, label_value, min_area)
    return result


# --- PNG folders ----------------------------------------------------------------------------------
def _image_to_unit_rgb(array: np.ndarray, what: str) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1] from :func:`read_png_image`'s 8-bit RGB or 16/32-bit gray."""
    if array.min() == array.max():
        raise InvalidInputError(
            f"The image {what} is constant (every pixel is {array.flat[0]}) but its mask holds an "
            "object: there is nothing to learn from it. Replace it, or move it and its mask out of "
            "the folders.")
    if array.dtype != np.uint8:
        return gray_to_rgb(normalize(array))  # the robust window of the image itself
    if not (np.array_equal(array[..., 0], array[..., 1]) and np.array_equal(array[..., 0], array[..., 2])):
        log.info("%s is a colour image; training uses it as it is.", what)
    return array.astype(np.float32) / 255.0


def slices_from_png_folders(
    images_dir: str | os.PathLike,
    masks_dir: str | os.PathLike,
    label_value: Optional[int] = None,
    min_area: int = DEFAULT_MIN_AREA,
) -> list[TrainingSlice]:
    """Image/mask pairs matched by full stem (``images/x.png`` with ``masks/x.png``).

    Pairing and reading follow the package's one PNG rule (:mod:`isegformer.volume.png_pairs`,
    :mod:`isegformer.volume.png_files`), the same as ``evaluate-clicks``'s: masks keep their
    stored values (a palette mask its indices), and a colour mask whose channels differ is refused.
    """
    pairs = png_pairs(images_dir, masks_dir)
    result, skipped = [], []
    values_seen: set[int] = set()
    for path, mask_path in pairs:
        pixels = read_png_image(path)
        labels = _integer_labels(read_png_labels(mask_path), f"The mask {mask_path.name}")
        if labels.shape != pixels.shape[:2]:
            raise InvalidInputError(
                f"The mask {mask_path} is {labels.shape[1]}x{labels.shape[0]} pixels but its image "
                f"{path.name} is {pixels.shape[1]}x{pixels.shape[0]}: a mask must have its image's "
                "size. Give the mask made on this image (or resize it with nearest-neighbour "
                "interpolation, which keeps its label values)."
            )
        values_seen.update(int(v) for v in np.unique(labels) if v > 0)
        label = _select_objects(labels, label_value)
        ids = _large_objects(label, min_area)
        if not ids:
            skipped.append(path.name)
            continue
        image = _image_to_unit_rgb(pixels, path.name)
        result.append(TrainingSlice(image.astype(np.float32), label, ids, path.name))
    if skipped:
        log.warning("Skipped %d image(s) without an object of %d pixels or more: %s",
                    len(skipped), min_area, skipped[:10])
    if not result:
        if not values_seen:
            raise InvalidInputError(f"Every mask in {masks_dir} is empty (all 0): nothing to train on.")
        if label_value is not None and label_value not in values_seen:
            raise InvalidInputError(
                f"No mask in {masks_dir} holds the value {label_value}; the masks hold {sorted(values_seen)}."
            )
        raise InvalidInputError(
            f"Every object in {masks_dir} is smaller than {min_area} pixels: nothing to train on."
        )
    return result


# --- examples ---------------------------------------------------------------------------------------
@dataclass
class TrainingExample:
    """One network input: ``image`` (3, H, W), ``target`` (1, H, W) (1/0/-1), ``points`` (2N, 3)."""

    image: np.ndarray
    target: np.ndarray
    points: np.ndarray


AUGMENT_ATTEMPTS = 5


def _example(label: np.ndarray, image: np.ndarray, ids: Sequence[int], sampler: MultiPointSampler,
             rng: np.random.Generator) -> TrainingExample:
    valid = label != PADDING_LABEL
    target, points = sampler.sample([label == i for i in ids], rng, valid=valid)
    target = np.where(valid, target, float(PADDING_LABEL)).astype(np.float32)
    return TrainingExample(
        np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32), target[None], points
    )


def training_example(
    slice_: TrainingSlice,
    augmenter: Augmenter,
    sampler: MultiPointSampler,
    rng: np.random.Generator,
    min_area: int = DEFAULT_MIN_AREA,
) -> TrainingExample:
    """An augmented crop of ``slice_`` with a target object and its simulated clicks."""

    def big_objects(label: np.ndarray, area: int) -> list[int]:
        return [i for i in slice_.object_ids if np.count_nonzero(label == i) >= area]

    for _ in range(AUGMENT_ATTEMPTS):
        image, label = augmenter(slice_.image, slice_.label, rng,
                                 accept=lambda crop: bool(big_objects(crop, min_area)))
        ids = big_objects(label, min_area) or big_objects(label, 1)
        if ids:
            return _example(label, image, ids, sampler, rng)
    # Shrinking made the object vanish every time: fall back to the slice at its own size.
    image, label = center_crop(slice_.image, slice_.label, augmenter.settings.crop_size)
    ids = big_objects(label, 1)
    if not ids:
        raise InvalidInputError(
            f"{slice_.name}: its object does not fit in a {augmenter.settings.crop_size} crop; "
            "use a larger crop size."
        )
    return _example(label, image, ids, sampler, rng)
