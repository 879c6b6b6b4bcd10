"""Reading one PNG file: an image's pixels, or a label mask's stored values.

Both ``evaluate-clicks`` and ``finetune`` read their PNG folders through this module, so that the
same file means the same thing to both:

- a label mask keeps the values it stores: a palette (indexed, mode ``P``) mask gives its indices,
  never the palette's colours; 8-bit, 16-bit and 32-bit gray give their values; a 1-bit mask gives
  0 and 1. A colour mask is accepted only when its channels agree (a gray image saved as RGB);
- an image comes back as 8-bit RGB (palette, 1-bit, gray+alpha and colour files are converted)
  or, for 16-bit and 32-bit gray, as its own integer values, which each consumer scales;
- a damaged file, a mode a PNG does not hold, a file that is not a PNG, or one over
  :data:`MAX_PNG_PIXELS` pixels is an :class:`InvalidInputError` that names the file.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import InvalidInputError

#: Larger than any slice of a medical volume; PIL's own bomb limit is ~179 megapixels.
MAX_PNG_PIXELS = 64 * 1024 * 1024

#: Modes whose pixel values are the stored numbers (gray or palette indices).
_VALUE_MODES = ("L", "P", "I", "I;16", "I;16B", "I;16L")
_HIGH_BIT_GRAY = ("I", "I;16", "I;16B", "I;16L")
_REPLACE = "replace it, or remove it from the folder"


def _decode(path: Path, what: str, to_array: Callable[[Any], np.ndarray]) -> np.ndarray:
    """``to_array`` of the decoded PIL image, or InvalidInputError for a file that cannot be one."""
    # Pillow is not a direct dependency; matplotlib and scikit-image (which are) require it.
    from PIL import Image

    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # formats=["PNG"]: only the PNG decoder ever sees these bytes, whatever they are.
            with Image.open(path, formats=["PNG"]) as image:  # the header only: size before pixels
                width, height = image.size
                if width < 1 or height < 1 or width * height > MAX_PNG_PIXELS:
                    raise InvalidInputError(
                        f"{what} {path} is {width}x{height} pixels; slices must have between 1 "
                        f"and {MAX_PNG_PIXELS} pixels: {_REPLACE}."
                    )
                image.load()
                return to_array(image)  # inside: closing the file also drops the pixels
    except InvalidInputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise InvalidInputError(
            f"{what} {path} declares more pixels than a slice can have ({err}): {_REPLACE}."
        ) from None
    except MemoryError:
        raise InvalidInputError(f"{what} {path} is too large to load: {_REPLACE}.") from None
    except Exception as err:  # noqa: BLE001 - PIL raises SyntaxError, OSError, ValueError, ...
        raise InvalidInputError(
            f"{what} {path} cannot be read as a PNG image ({type(err).__name__}: {err}). It is "
            f"damaged or not a PNG: {_REPLACE}."
        ) from None


def read_png_image(path: Path, what: str = "The image") -> np.ndarray:
    """An image's pixels: (H, W, 3) uint8, or (H, W) integers for a 16/32-bit gray PNG.

    Palette colours, 1-bit (as 0/255), gray with alpha and RGBA (alpha dropped) all become 8-bit
    RGB; 8-bit gray is replicated to 3 channels.
    """
    def pixels(image) -> np.ndarray:
        if image.mode in _HIGH_BIT_GRAY:
            return np.array(image)
        if image.mode not in ("1", "L", "LA", "P", "PA", "RGB", "RGBA"):
            raise InvalidInputError(
                f"{what} {path} has pixel mode {image.mode!r}, which this reader does not take: "
                "save it as an 8-bit or 16-bit gray, or an RGB, PNG."
            )
        return np.array(image.convert("RGB"))

    return _decode(path, what, pixels)


def read_png_labels(path: Path, what: str = "The mask") -> np.ndarray:
    """A label mask's stored values, (H, W) int64: 0 background, positive values objects."""
    return _decode(path, what, lambda image: _label_values(image, path, what))


def _label_values(image, path: Path, what: str) -> np.ndarray:
    if image.mode in _VALUE_MODES:
        return np.array(image).astype(np.int64)  # P: the palette indices, not their colours
    if image.mode == "1":
        return np.array(image).astype(np.int64)  # 0 and 1
    if image.mode in ("LA", "PA"):
        return np.array(image.getchannel(0)).astype(np.int64)
    if image.mode in ("RGB", "RGBA"):
        rgb = np.array(image.convert("RGB"))
        if not (rgb == rgb[..., :1]).all():
            raise InvalidInputError(
                f"{what} {path} has differing colour channels, so it holds no label values: give a "
                "single-channel label image (0 background, 1, 2, ... objects), or a palette PNG."
            )
        return rgb[..., 0].astype(np.int64)
    raise InvalidInputError(
        f"{what} {path} has pixel mode {image.mode!r}, which is not a label image: save it as an "
        "8-bit or 16-bit gray (or palette) PNG holding 0 for background and 1, 2, ... for objects."
    )
