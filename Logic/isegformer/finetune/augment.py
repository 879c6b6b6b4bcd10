"""Training augmentation: random resize, horizontal flip, pad, random crop, brightness/contrast.

The paper's recipe (resize 0.75-1.4, flip, 320x480 crops, brightness and contrast), done with
numpy and torch only and driven by an explicit ``numpy.random.Generator`` so that a seed fixes
every crop. Images are (H, W, 3) float32 in [0, 1]; label maps are (H, W) integers whose
padding is marked :data:`PADDING_LABEL` so that neither the loss nor the click sampler treats
the padded border as background.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InvalidInputError

PADDING_LABEL = -1
CROP_ATTEMPTS = 10


@dataclass(frozen=True)
class AugmentSettings:
    crop_size: tuple[int, int] = (320, 480)  # (rows, cols)
    scale_range: tuple[float, float] = (0.75, 1.40)
    flip_prob: float = 0.5
    brightness_range: tuple[float, float] = (-0.25, 0.25)  # added, in units of the [0, 1] range
    contrast_range: tuple[float, float] = (-0.15, 0.40)  # the gain is 1 + this
    color_prob: float = 0.75


def resize_pair(image: np.ndarray, label: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear resize of the image and nearest-neighbour resize of the label map."""
    rows, cols = label.shape
    size = (max(1, int(round(rows * scale))), max(1, int(round(cols * scale))))
    if size == (rows, cols):
        return image, label
    img_t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)[None]
    img_t = F.interpolate(img_t, size=size, mode="bilinear", align_corners=False)
    lab_t = torch.from_numpy(np.ascontiguousarray(label, dtype=np.int32)).float()[None, None]
    lab_t = F.interpolate(lab_t, size=size, mode="nearest")
    return (img_t[0].permute(1, 2, 0).numpy().clip(0.0, 1.0),
            lab_t[0, 0].numpy().astype(label.dtype))


def pad_to(image: np.ndarray, label: np.ndarray, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad evenly on both sides up to (rows, cols): zeros in the image, padding in the label."""
    pad_r, pad_c = max(0, rows - label.shape[0]), max(0, cols - label.shape[1])
    if pad_r == 0 and pad_c == 0:
        return image, label
    spec = ((pad_r // 2, pad_r - pad_r // 2), (pad_c // 2, pad_c - pad_c // 2))
    return (np.pad(image, spec + ((0, 0),), constant_values=0.0),
            np.pad(label, spec, constant_values=PADDING_LABEL))


class Augmenter:
    """Random resize, flip, pad and crop, then brightness/contrast, on an image and its labels."""

    def __init__(self, settings: AugmentSettings = AugmentSettings()) -> None:
        rows, cols = settings.crop_size
        if rows < 8 or cols < 8:
            raise InvalidInputError(f"The crop size must be at least 8x8, got {settings.crop_size}.")
        low, high = settings.scale_range
        if not 0 < low <= high:
            raise InvalidInputError(f"The scale range must satisfy 0 < low <= high, got {settings.scale_range}.")
        self.settings = settings

    def __call__(
        self,
        image: np.ndarray,
        label: np.ndarray,
        rng: np.random.Generator,
        accept: Optional[Callable[[np.ndarray], bool]] = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """An augmented crop ``(image, label)`` of the crop size.

        ``accept(label_crop)`` says whether a crop shows enough of an object; random crops are
        tried a few times, then a crop centred on a random object pixel is taken.
        """
        if image.shape[:2] != label.shape:
            raise InvalidInputError(f"Image {image.shape[:2]} and label map {label.shape} differ in size.")
        s = self.settings
        image, label = resize_pair(image, label, float(rng.uniform(*s.scale_range)))
        if rng.random() < s.flip_prob:
            image, label = image[:, ::-1], label[:, ::-1]
        rows, cols = s.crop_size
        image, label = pad_to(image, label, rows, cols)
        image, label = self._crop(image, label, rng, accept)
        image = self._color(np.array(image, dtype=np.float32), rng)
        return image, np.ascontiguousarray(label)

    def _crop(self, image, label, rng, accept):
        rows, cols = self.settings.crop_size
        max_r, max_c = label.shape[0] - rows, label.shape[1] - cols
        for _ in range(CROP_ATTEMPTS):
            r0, c0 = int(rng.integers(max_r + 1)), int(rng.integers(max_c + 1))
            crop = label[r0:r0 + rows, c0:c0 + cols]
            if accept is None or accept(crop):
                return image[r0:r0 + rows, c0:c0 + cols], crop
        # Random crops kept missing the objects (small objects in a large slice): centre one.
        # (With no object pixel at all, the last random crop is kept.)
        ys, xs = np.nonzero(label > 0)
        if len(ys):
            pick = int(rng.integers(len(ys)))
            r0 = int(np.clip(ys[pick] - rows // 2, 0, max_r))
            c0 = int(np.clip(xs[pick] - cols // 2, 0, max_c))
        return image[r0:r0 + rows, c0:c0 + cols], label[r0:r0 + rows, c0:c0 + cols]

    def _color(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        s = self.settings
        if rng.random() >= s.color_prob:
            return image
        gain = 1.0 + float(rng.uniform(*s.contrast_range))
        offset = float(rng.uniform(*s.brightness_range))
        return np.clip(image * gain + offset, 0.0, 1.0, out=image)


def center_crop(image: np.ndarray, label: np.ndarray, crop_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic pad-and-centre-crop (validation): keeps the objects' centre in view."""
    rows, cols = crop_size
    image, label = pad_to(image, label, rows, cols)
    ys, xs = np.nonzero(label > 0)
    centre_r = int(ys.mean()) if len(ys) else label.shape[0] // 2
    centre_c = int(xs.mean()) if len(xs) else label.shape[1] // 2
    r0 = int(np.clip(centre_r - rows // 2, 0, label.shape[0] - rows))
    c0 = int(np.clip(centre_c - cols // 2, 0, label.shape[1] - cols))
    return image[r0:r0 + rows, c0:c0 + cols], label[r0:r0 + rows, c0:c0 + cols]
