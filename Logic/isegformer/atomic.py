"""Replacing a file all at once: the one temp-file-then-rename primitive of this package.

Whoever writes a file that must never be seen half-written (outputs, checkpoints, the training
state, the weights cache record) writes a temporary file beside the target through
:func:`atomic_replace`; only a complete file is renamed over the target, so a crash, a full
disk or an exception in the writer leaves the previous file exactly as it was.

Errors are re-raised as they are: each caller turns them into its own error type
(:mod:`isegformer.output.atomic` adds the user-facing checks and ``OutputPathError``).
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_replace(
    path: str | os.PathLike, *, fsync: bool = False, keep_extension: bool = False
) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; once the block succeeds it replaces ``path``.

    ``fsync``: force the bytes to disk before the rename, for files whose loss after a power
    cut costs much (checkpoints, training state). ``keep_extension``: the temporary name ends
    with the target's name (``.tmp-XXXX-name.nii.gz``) for writers that choose the format from
    the extension; otherwise it is ``.name.XXXX.tmp``. On any exception the temporary file is
    removed, ``path`` is untouched and the exception propagates unchanged.
    """
    target = Path(path)
    folder = target.parent
    if keep_extension:
        fd, tmp_name = tempfile.mkstemp(prefix=".tmp-", suffix=f"-{target.name}", dir=folder)
    else:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp creates the file 0600; give the result the usual permissions (umask applies).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        if fsync:
            _fsync(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fsync(path: Path) -> None:
    # A writable descriptor: Windows refuses to flush a read-only one.
    fd = os.open(path, os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
