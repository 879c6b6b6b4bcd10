"""Writing output files so that a failure never leaves a half-written or clobbered file.

Every output writer of this package goes through :func:`atomic_write`: the bytes go to a
temporary file beside the target, which replaces the target only once it is complete. A crash,
a full disk or a cancelled export therefore leaves the previous file exactly as it was. This
module adds the user-facing checks and ``OutputPathError`` to the package's one primitive,
:func:`isegformer.atomic.atomic_replace` (also used for checkpoints and caches).
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np

from ..atomic import atomic_replace
from ..errors import ISegFormerError


class OutputPathError(ISegFormerError, OSError):
    """An output path that cannot be written (missing folder, no permission, a directory)."""


def check_writable(path: str | os.PathLike) -> Path:
    """Fail early, with a clear message, when ``path`` cannot be written; return it as a Path."""
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path) or "\x00" in str(os.fspath(path)):
        raise OutputPathError(f"{path!r} is not a usable output path: give a file name (text or a pathlib.Path).")
    target = Path(path).expanduser()
    if target.is_dir():
        raise OutputPathError(f"Cannot write {target}: it is a folder. Give a file name instead.")
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise OutputPathError(
            f"Cannot write {target}: the folder {folder} does not exist. Create it first, or "
            "choose another output path."
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputPathError(
            f"Cannot write {target}: no permission to write in {folder}. Choose a folder you can "
            "write to."
        )
    if target.exists() and not os.access(target, os.W_OK):
        raise OutputPathError(
            f"Cannot write {target}: the file exists and is read-only. Remove it or choose "
            "another name."
        )
    return target


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, *, verify: Optional[Callable[[Path], None]] = None) -> Iterator[Path]:
    """Yield a temporary path to write; on success it atomically replaces ``path``.

    ``verify(tmp)`` checks the finished file before the rename (see ``atomic_replace``); an
    empty file never replaces ``path``. On any exception the temporary file is removed and
    ``path`` is untouched.
    """
    target = check_writable(path)
    try:
        # The temporary name ends with the target's name, so writers that choose the format
        # from the extension (SimpleITK) write the right one.
        with atomic_replace(target, keep_extension=True, verify=verify) as tmp:
            yield tmp
    except OSError as err:
        if isinstance(err, ISegFormerError):
            raise
        raise OutputPathError(f"Could not write {target}: {err}. Check the disk space and path.") from err


#: Formats whose header names a separate data file (written beside it by SimpleITK).
DETACHED_HEADER_SUFFIXES = (".nhdr", ".mhd", ".hdr")


def write_image_verified(image: Any, path: str | os.PathLike, *, compress: bool = True) -> Path:
    """Write a SimpleITK image to ``path`` atomically, and read it back before the rename.

    SimpleITK reports no error when the disk fills up during a write: it leaves a short or
    empty file. Every SimpleITK write of this package goes through here, so that only a file
    that reads back as the same voxels on the same grid ever replaces ``path``.
    """
    import SimpleITK as sitk

    from ..errors import InvalidInputError
    from ..volume.sitk_path import sitk_path

    # Before the temporary file (named after the target) exists: SimpleITK would abort on its name.
    sitk_path(check_writable(path), "The output")
    if Path(path).name.lower().endswith(DETACHED_HEADER_SUFFIXES):
        raise InvalidInputError(
            f"Cannot write {Path(path).name}: a detached header (.nhdr, .mhd) keeps its voxels in "
            "a second file, which cannot be replaced together with it. Use .nrrd, .mha or .nii.gz."
        )

    def same_image(tmp: Path) -> None:
        try:
            back = sitk.ReadImage(sitk_path(tmp))
        except RuntimeError as err:
            raise OSError(f"the written file does not read back ({_last_line(err)}); is the disk full?") from None
        same_grid = (
            back.GetSize() == image.GetSize()
            and back.GetNumberOfComponentsPerPixel() == image.GetNumberOfComponentsPerPixel()
            and back.GetPixelID() == image.GetPixelID()
            and np.allclose(back.GetSpacing(), image.GetSpacing(), rtol=1e-6, atol=1e-9)
            and np.allclose(back.GetOrigin(), image.GetOrigin(), rtol=1e-6, atol=1e-6)
            and np.allclose(back.GetDirection(), image.GetDirection(), atol=1e-6)
        )
        if not same_grid or not np.array_equal(
            sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(image), equal_nan=True
        ):
            raise OSError("the written file reads back different from what was written; is the disk full?")

    with atomic_write(path, verify=same_image) as tmp:
        try:
            sitk.WriteImage(image, sitk_path(tmp), useCompression=compress)
        except RuntimeError as err:
            raise OSError(_last_line(err)) from err
    return Path(path)


def _last_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[-1] if lines else type(err).__name__
