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
from typing import Iterator

from ..atomic import atomic_replace
from ..errors import ISegFormerError


class OutputPathError(ISegFormerError, OSError):
    """An output path that cannot be written (missing folder, no permission, a directory)."""


def check_writable(path: str | os.PathLike) -> Path:
    """Fail early, with a clear message, when ``path`` cannot be written; return it as a Path."""
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
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it atomically replaces ``path``.

    On any exception the temporary file is removed and ``path`` is untouched.
    """
    target = check_writable(path)
    try:
        # The temporary name ends with the target's name, so writers that choose the format
        # from the extension (SimpleITK) write the right one.
        with atomic_replace(target, keep_extension=True) as tmp:
            yield tmp
    except OSError as err:
        if isinstance(err, ISegFormerError):
            raise
        raise OutputPathError(f"Could not write {target}: {err}. Check the disk space and path.") from err
