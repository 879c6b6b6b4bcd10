"""Replacing a file all at once: the one temp-file-then-rename primitive of this package.

Whoever writes a file that must never be seen half-written (outputs, sessions, checkpoints, the
training state, the weights cache record) writes a temporary file beside the target through
:func:`atomic_replace`; only a complete, checked file is renamed over the target, so a crash, a
full disk or an exception in the writer leaves the previous file exactly as it was.

Temporary files are named ``.isegformer-tmp.<host>.<pid>.<token>.<target name>`` (with ``.tmp``
appended unless the writer needs the target's extension last), so that they can be told apart
from the user's files and from each other. A process killed mid-write cannot remove its own
temporary file; the next write into the same folder does (:func:`remove_stale_temporaries`):
a temporary of a process of this machine that no longer runs is removed at once, any other one
(another machine on a shared folder, a living process) once it is older than
:data:`STALE_AFTER_SECONDS`. Files of the older naming (``.tmp-XXXXXXXX-name``,
``.name.XXXXXXXX.tmp``) carry no owner and are removed only by age.

Errors are re-raised as they are: each caller turns them into its own error type
(:mod:`isegformer.output.atomic` adds the user-facing checks and ``OutputPathError``).
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import secrets
import socket
import stat
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

log = logging.getLogger(__name__)

#: A temporary file that is this old is abandoned whoever made it (no write takes hours).
STALE_AFTER_SECONDS = 6 * 3600

TEMP_PREFIX = ".isegformer-tmp."
_TEMP_NAME = re.compile(r"^\.isegformer-tmp\.([A-Za-z0-9-]{1,64})\.(\d{1,10})\.([0-9a-f]{8,32})\..+$")
# The mkstemp names of earlier versions, ".tmp-XXXXXXXX-<name>" (outputs) and
# ".<name>.XXXXXXXX.tmp" (checkpoints, records), limited to the kinds of file this package wrote
# so that a user's own hidden file is never taken for one.
_LEGACY_NAMES = (
    re.compile(r"^\.tmp-[a-z0-9_]{8}-.+\.(isegsession|nrrd|nhdr|nii|nii\.gz|mha|mhd|png|json)$", re.I),
    re.compile(r"^\..+\.(pth|pt|json)\.[a-z0-9_]{8}\.tmp$", re.I),
)


class IncompleteWriteError(OSError):
    """The writer returned, but what it left is not the complete file (empty, or failed its check)."""


def _owner_host() -> str:
    """This machine (and, on Linux, this PID namespace), as a name-safe tag: a PID is only
    meaningful where it was issued."""
    host = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:24] or "host"
    try:
        host += f"-{os.stat('/proc/self/ns/pid').st_ino:x}"
    except OSError:
        pass
    return host


def temporary_name(target_name: str, *, keep_extension: bool) -> str:
    """A fresh temporary file name for ``target_name`` owned by this process."""
    name = f"{TEMP_PREFIX}{_owner_host()}.{os.getpid()}.{secrets.token_hex(4)}.{target_name}"
    return name if keep_extension else name + ".tmp"


def _process_is_gone(pid: int) -> bool:
    if sys.platform == "win32":
        return False  # os.kill(pid, 0) would signal it there; rely on age alone
    if pid == os.getpid():
        return False  # another thread of this process may be writing it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OSError):
        return False  # it exists (another user's) or cannot be told: keep the file
    return False


def is_stale_temporary(name: str, age_seconds: float, *, host: Optional[str] = None) -> bool:
    """True when a file named ``name`` is a temporary file of this package that nobody will
    finish: its owner process on this machine is gone, or it is older than STALE_AFTER_SECONDS."""
    match = _TEMP_NAME.match(name)
    if match is None:
        return any(p.match(name) for p in _LEGACY_NAMES) and age_seconds > STALE_AFTER_SECONDS
    if age_seconds > STALE_AFTER_SECONDS:
        return True
    return match.group(1) == (host or _owner_host()) and _process_is_gone(int(match.group(2)))


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the abandoned temporary files of this package in ``folder`` (see the module
    docstring); returns those removed. Never raises: a file that cannot be removed stays."""
    removed: list[Path] = []
    host = _owner_host()
    now = time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith("."):
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            if is_stale_temporary(entry.name, now - entry.stat(follow_symlinks=False).st_mtime, host=host):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError as err:
            log.debug("Could not remove the stale temporary file %s: %s", entry.path, err)
    if removed:
        log.info("Removed %d abandoned temporary file(s) in %s", len(removed), folder)
    return removed


@contextlib.contextmanager
def atomic_replace(
    path: str | os.PathLike,
    *,
    fsync: bool = False,
    keep_extension: bool = False,
    verify: Optional[Callable[[Path], None]] = None,
) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; once the block succeeds it replaces ``path``.

    ``fsync``: force the bytes to disk before the rename, for files whose loss after a power
    cut costs much (checkpoints, training state). ``keep_extension``: the temporary name ends
    with the target's name, for writers that choose the format from the extension; otherwise
    it ends in ``.tmp``. ``verify(tmp)``: a check of the finished temporary file (e.g. read it
    back) that raises when it is not what was meant; it runs before the rename. An empty
    temporary file is never renamed (IncompleteWriteError): no writer of this package means it.
    On any exception the temporary file is removed, ``path`` is untouched and the exception
    propagates. Abandoned temporary files of earlier writes in the folder are removed first.
    """
    target = Path(path)
    folder = target.parent
    remove_stale_temporaries(folder)
    tmp = _create_temporary(folder, target.name, keep_extension)
    try:
        yield tmp
        size = tmp.stat().st_size
        if size == 0:
            raise IncompleteWriteError(
                errno.EIO, f"the writer left an empty file instead of {target.name} (is the disk full?)")
        if verify is not None:
            verify(tmp)
        _give_permissions(tmp, target)
        if fsync:
            _fsync(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _give_permissions(tmp: Path, target: Path) -> None:
    """The temporary file was created 0600. A rewrite keeps the target's own mode (and group,
    where allowed): a file the user made private stays private. A new file gets the usual
    permissions, 0666 less the umask."""
    try:
        existing = os.stat(target)
    except OSError:
        existing = None
    if existing is None or not stat.S_ISREG(existing.st_mode):
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        return
    if hasattr(os, "chown") and existing.st_gid != os.stat(tmp).st_gid:
        try:
            os.chown(tmp, -1, existing.st_gid)
        except OSError:
            # Not a member of that group: the file goes to ours, so no group may read it that
            # could not before.
            os.chmod(tmp, stat.S_IMODE(existing.st_mode) & ~0o070)
            return
    os.chmod(tmp, stat.S_IMODE(existing.st_mode))


def _create_temporary(folder: Path, target_name: str, keep_extension: bool) -> Path:
    for _ in range(100):
        tmp = folder / temporary_name(target_name, keep_extension=keep_extension)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(errno.EEXIST, f"no free temporary name for {target_name} in {folder}")


def _fsync(path: Path) -> None:
    # A writable descriptor: Windows refuses to flush a read-only one.
    fd = os.open(path, os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def move_aside(path: str | os.PathLike, label: str) -> Path:
    """Move ``path`` to a free ``<name>.<label>-<UTC time>[-N]`` beside it and return that.

    Never over an existing file: two files set aside within one second (or by two processes)
    both survive. A hard link claims the new name atomically (it fails if the name exists), then
    the old name is removed; where hard links are not possible (some network or FAT folders), a
    rename to a name checked free just before is the fallback.
    """
    import datetime as _dt

    source = Path(path)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    for number in range(1, 10_000):
        target = source.with_name(f"{source.name}.{label}-{stamp}" + ("" if number == 1 else f"-{number}"))
        try:
            os.link(source, target)
        except FileExistsError:
            continue
        except OSError as err:
            if err.errno not in (errno.EPERM, errno.EXDEV, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            if target.exists() or target.is_symlink():
                continue
            os.rename(source, target)
            return target
        os.unlink(source)
        return target
    raise FileExistsError(errno.EEXIST, "no free name to set the file aside", str(source))
