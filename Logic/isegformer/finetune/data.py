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
from typing import Optional, Sequence, Union

import numpy as np

from ..errors import InvalidInputError
from ..volume import read_label_map, read_volume
from ..volume.intensity import gray_to_rgb, normalize, robust_window
from ..volume.slicing import check_axis, extract_slice
from .augment import PADDING_LABEL, Augmenter, center_crop
from .points_sampler import MultiPointSampler

log = logging.getLogger(__name__)

#: The slices the paper annotated in each OAI-ZIB training volume.
PAPER_SLICES: tuple[int, ...] = (40, 80, 120)
#: Objects smaller than this (in pixels) are not used as training targets (the paper's value).
DEFAULT_MIN_AREA = 20
PNG_SUFFIXES = (".png",)

SliceChoice = Union[str, Sequence[int]]  # "paper", "all", or explicit indices


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


def parse_slice_choice(text: str) -> SliceChoice:
    """``"paper"`` (40, 80, 120), ``"all"`` (every labelled slice) or ``"12,40,77"``."""
    value = text.strip().lower()
    if value in ("paper", "all"):
        return value
    try:
        indices = [int(v) for v in value.replace(" ", "").split(",") if v]
    except ValueError:
        indices = []
    if not indices or min(indices) < 0:
        raise InvalidInputError(
            f"--slices must be 'paper' (slices {', '.join(map(str, PAPER_SLICES))}), 'all' (every "
            f"labelled slice) or a comma-separated list of slice indices such as 40,80,120; got {text!r}."
        )
    return sorted(set(indices))


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

    if slices == "all":
        moved = np.moveaxis(objects, axis, 0)
        indices = [i for i in range(count) if moved[i].any()]
    elif slices == "paper":
        indices = [i for i in PAPER_SLICES if i < count]
        if len(indices) < len(PAPER_SLICES):
            log.warning("%s has %d slices along axis %d: using the paper's slices %s only.",
                        name, count, axis, indices)
    else:
        indices = list(slices)  # type: ignore[arg-type]
        outside = [i for i in indices if not 0 <= i < count]
        if outside:
            raise InvalidInputError(
                f"Slices {outside} do not exist in {name}: it has slices 0..{count - 1} along axis "
                f"{axis}. Choose indices in that range (or --slices all)."
            )
    if not indices:
        raise InvalidInputError(
            f"{name} has no slice to train on along axis {axis} ({count} slices). Choose slices "
            "with --slices (e.g. --slices all), or another --axis."
        )

    window = robust_window(volume.array)
    result, unlabelled, too_small = [], [], []
    for index in indices:
        label = np.ascontiguousarray(extract_slice(objects, axis, index))
        if not label.any():
            unlabelled.append(index)
            continue
        ids = _large_objects(label, min_area)
        if not ids:
            too_small.append(index)
            continue
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
    if array.ndim == 3 and array.shape[2] in (3, 4):
        array = array[..., :3]
        if not (np.array_equal(array[..., 0], array[..., 1]) and np.array_equal(array[..., 0], array[..., 2])):
            log.info("%s is a colour image; training uses it as it is.", what)
    elif array.ndim == 3 and array.shape[2] in (1, 2):
        array = array[..., 0]
    if array.ndim == 2:
        array = gray_to_rgb(array)
    if array.ndim != 3 or array.shape[2] != 3:
        raise InvalidInputError(f"{what} has shape {array.shape}; expected a gray or RGB image.")
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if np.issubdtype(array.dtype, np.floating) and array.min() >= 0.0 and array.max() <= 1.0:
        return array.astype(np.float32)
    return normalize(array)  # 16-bit and other ranges: the robust window of the image itself


#: Larger than any slice of a medical volume; PIL's own bomb limit is ~179 megapixels.
MAX_PNG_PIXELS = 64 * 1024 * 1024


def read_png(path: Path, what: str) -> np.ndarray:
    """The pixels of a PNG file, or InvalidInputError saying which file is unusable and why.

    A damaged or truncated file makes the image libraries raise SyntaxError, OSError,
    ValueError or a decompression-bomb warning turned error; all of them mean the same to the
    user.
    """
    from PIL import Image
    from skimage.io import imread

    try:
        with Image.open(path) as image:  # reads the header only: the size before the pixels
            width, height = image.size
        if width < 1 or height < 1 or width * height > MAX_PNG_PIXELS:
            raise InvalidInputError(
                f"{what} {path.name} is {width}x{height} pixels; slices must have between 1 "
                f"and {MAX_PNG_PIXELS} pixels."
            )
        array = np.asarray(imread(path))
    except InvalidInputError:
        raise
    except MemoryError:
        raise InvalidInputError(f"{what} {path.name} is too large to load.") from None
    except Exception as err:  # noqa: BLE001 - PIL raises SyntaxError, OSError, ValueError, ...
        raise InvalidInputError(
            f"{what} {path} cannot be read as a PNG image ({type(err).__name__}: {err}). It is "
            "damaged or not a PNG: replace it, or remove it from the folder."
        ) from None
    if array.ndim not in (2, 3) or array.dtype.kind not in "biuf":
        raise InvalidInputError(
            f"{what} {path.name} has pixels of shape {array.shape} and type {array.dtype}; "
            "expected a gray or RGB(A) image."
        )
    return array


def slices_from_png_folders(
    images_dir: str | os.PathLike,
    masks_dir: str | os.PathLike,
    label_value: Optional[int] = None,
    min_area: int = DEFAULT_MIN_AREA,
) -> list[TrainingSlice]:
    """Image/mask pairs matched by file name (``images/x.png`` with ``masks/x.png``).

    Masks are label images (0 background); for a colour mask the first channel is used.
    """
    images_dir, masks_dir = Path(images_dir).expanduser(), Path(masks_dir).expanduser()
    for folder, flag in ((images_dir, "--images"), (masks_dir, "--masks")):
        if not folder.is_dir():
            raise InvalidInputError(f"{flag} {folder} is not a folder. Give the folder of PNG files.")
    try:
        images = sorted(p for p in images_dir.iterdir()
                        if p.suffix.lower() in PNG_SUFFIXES and p.is_file())
        masks = {p.stem: p for p in masks_dir.iterdir()
                 if p.suffix.lower() in PNG_SUFFIXES and p.is_file()}
    except OSError as err:
        raise InvalidInputError(f"Cannot list the PNG folders: {err.strerror or err}.") from None
    if not images:
        raise InvalidInputError(f"{images_dir} holds no .png image.")
    missing = [p.name for p in images if p.stem not in masks]
    if missing:
        raise InvalidInputError(
            f"{len(missing)} image(s) have no mask of the same name in {masks_dir} (e.g. {missing[:3]}). "
            "Give every image a mask with the same file name."
        )
    result, skipped = [], []
    values_seen: set[int] = set()
    for path in images:
        image = _image_to_unit_rgb(read_png(path, "The image"), path.name)
        raw = read_png(masks[path.stem], "The mask")
        if raw.ndim == 3:
            raw = raw[..., 0]
        labels = _integer_labels(raw, f"The mask {masks[path.stem].name}")
        if labels.shape != image.shape[:2]:
            raise InvalidInputError(
                f"The mask {masks[path.stem].name} is {labels.shape[1]}x{labels.shape[0]} but its image is "
                f"{image.shape[1]}x{image.shape[0]}: they must have the same size."
            )
        values_seen.update(int(v) for v in np.unique(labels) if v > 0)
        label = _select_objects(labels, label_value)
        ids = _large_objects(label, min_area)
        if not ids:
            skipped.append(path.name)
            continue
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
