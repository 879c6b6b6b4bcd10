"""Pairing a folder of PNG images with a folder of PNG masks: the one rule every command uses.

An image and its mask share the full stem: the file name without its last suffix only, so
``case.001.png`` pairs with ``case.001.png`` (never with ``case.002.png``). The ``.png`` suffix is
matched in any case (``B.PNG``). Two files of one folder with the same stem (``a.png`` and
``a.PNG``), an image without a mask, or a folder without a PNG is an InvalidInputError; masks
without an image are left out with a warning that names them.
"""
from __future__ import annotations

import logging
from pathlib import Path

from ..errors import InvalidInputError

log = logging.getLogger(__name__)

PNG_SUFFIX = ".png"


def png_files_by_stem(folder: Path, what: str) -> dict[str, Path]:
    """The ``.png`` files of ``folder`` (any case), keyed by their full stem, in name order.

    ``what`` names the folder in messages ("The image folder").
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise InvalidInputError(f"{what} {folder} is not a folder. Give the folder of PNG files.")
    try:
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() == PNG_SUFFIX and p.is_file())
    except OSError as err:
        raise InvalidInputError(f"Cannot list {what.lower()} {folder}: {err.strerror or err}.") from None
    by_stem: dict[str, Path] = {}
    for path in paths:
        if path.stem in by_stem:
            raise InvalidInputError(
                f"{what} {folder} holds both {by_stem[path.stem].name} and {path.name}, which pair "
                "with the same mask/image name: rename or remove one of them."
            )
        by_stem[path.stem] = path
    return by_stem


def png_pairs(images_dir: Path, masks_dir: Path) -> list[tuple[Path, Path]]:
    """(image, mask) paths matched by full stem, in image-name order; every image needs a mask."""
    images = png_files_by_stem(images_dir, "The image folder")
    masks = png_files_by_stem(masks_dir, "The mask folder")
    if not images:
        raise InvalidInputError(f"The image folder {images_dir} holds no .png image.")
    missing = [p.name for stem, p in images.items() if stem not in masks]
    if missing:
        raise InvalidInputError(
            f"{len(missing)} image(s) have no mask of the same name in {masks_dir} (e.g. "
            f"{missing[:3]}): an image x.png needs the mask x.png. Give every image a mask with the "
            "same file name, or move the unlabelled images out of the folder."
        )
    extra = sorted(p.name for stem, p in masks.items() if stem not in images)
    if extra:
        log.warning("%d mask(s) in %s have no image of the same name and are not used: %s",
                    len(extra), masks_dir, extra[:10])
    return [(path, masks[stem]) for stem, path in images.items()]
