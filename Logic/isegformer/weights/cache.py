"""The weights cache: where downloaded files live, what is known about them, and the locks.

Layout under ``ISEGFORMER_HOME`` (default: the user's cache folder, see :func:`cache_home`)::

    cache.json                      the record: which file came from which URL, when, size, SHA256
    models/<name>/<filename>        a verified file
    models/<name>/<filename>.part   a download in progress (removed when it fails or is cancelled)
    locks/cache.json.lock           held while one process rewrites cache.json
    locks/models/<name>.lock        held while one process downloads or verifies <name>

The model locks have a folder of their own, so that no model name (``cache.json`` is a valid
one) can ever name the record's lock: a process holding a model lock while it writes the record
would otherwise wait for itself forever. Lock files are empty and never removed; the operating
system releases a lock when its holder dies, so files left in ``locks/`` by earlier versions or
by crashed processes lock nothing.

Trust on first use: where the registry gives no SHA256, the hash of the first complete download
(or of a file put in place by hand) is written to ``cache.json``; every later use hashes the file
again and must match it. Local files given by path are recorded the same way, keyed by their
absolute path; a file whose size or modification time changed is a new file and is trusted anew,
while different content under the same path, size and time is refused as corrupt. An empty file
is never recorded.

``cache.json`` is read by one schema-checking reader (:meth:`ModelCache._read`, on
:func:`isegformer.json_io.loads_bounded`): a record that is not a valid document is set aside
(``cache.json.corrupt-<time>``) and a fresh one started; an entry that is malformed is ignored.
Writing it failing (a full disk, a read-only folder) raises :class:`CacheWriteError` and leaves
the previous record exactly as it was. A read-only cache stays usable: its verified files are
used without writing anything (see :mod:`isegformer.weights.resolve`).
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import hashlib
import json
import logging
import os
import re
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from ..atomic import atomic_replace, move_aside
from ..errors import WeightsError
from ..json_io import JSONDocumentError, loads_bounded
from ..os_lock import try_lock, unlock_and_close

log = logging.getLogger(__name__)

HOME_ENV = "ISEGFORMER_HOME"
RECORD_VERSION = 1
_HASH_BLOCK = 1 << 20
_MAX_RECORD_BYTES = 16 << 20
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_SHA256 = re.compile(r"[0-9a-f]{64}")
# What a folder that may not be written answers (a read-only mount, another user's cache).
_READ_ONLY_ERRNOS = frozenset((errno.EROFS, errno.EACCES, errno.EPERM))
# Writing cache.json takes milliseconds; a wait this long means something is wrong, and an
# error says so where waiting forever would not.
_RECORD_LOCK_TIMEOUT = 120.0


def cache_home() -> Path:
    """``ISEGFORMER_HOME``, else the platform's per-user cache folder plus ``isegformer``."""
    override = os.environ.get(HOME_ENV)
    if override:
        return Path(override).expanduser()
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "isegformer"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "isegformer"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "isegformer"


def sha256_file(path: Path) -> str:
    """The SHA256 of a file's bytes, as 64 lower-case hex digits (WeightsError if unreadable)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as stream:
            for block in iter(lambda: stream.read(_HASH_BLOCK), b""):
                digest.update(block)
    except FileNotFoundError:
        raise
    except OSError as err:
        raise WeightsError(f"cannot read {path}: {err.strerror or err}. Check the file's "
                           "permissions and the disk.") from None
    return digest.hexdigest()


class CacheWriteError(WeightsError):
    """The cache folder could not be written. ``read_only``: the folder may not be written at
    all (a read-only mount, no permission), as opposed to a full disk or a failing device."""

    def __init__(self, message: str, *, read_only: bool) -> None:
        super().__init__(message)
        self.read_only = read_only


def cache_write_error(action: str, err: OSError) -> CacheWriteError:
    """The error for an ``OSError`` raised while ``action`` ("create the lock file x")."""
    read_only = err.errno in _READ_ONLY_ERRNOS
    if read_only:
        advice = (f"The cache is read-only: files already verified there are used as they are; "
                  f"to download or record anything, set {HOME_ENV} to a writable folder.")
    elif err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        advice = f"The disk is full: free some space, or set {HOME_ENV} to a folder on another disk."
    else:
        advice = f"Check the disk, or set {HOME_ENV} to another folder."
    return CacheWriteError(f"cannot {action}: {err.strerror or err}. {advice}",
                           read_only=read_only)


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class LockTimeoutError(WeightsError):
    """Another process held a cache lock for longer than we were willing to wait."""


class FileLock:
    """An exclusive lock on a file, between threads and between processes.

    The operating system drops the lock when its holder dies, so a crashed download never leaves
    a stale lock behind. ``flock`` (POSIX) and ``msvcrt.locking`` (Windows) both treat two
    separate opens of the lock file as competitors, so threads of one process exclude each other
    too. While waiting, ``on_wait`` is called every ``poll`` seconds; it may raise (for example
    CancelledError) to give up.
    """

    def __init__(self, path: Path, *, timeout: Optional[float] = None, poll: float = 0.05,
                 on_wait: Optional[Callable[[], None]] = None,
                 timeout_advice: str = "Wait for its download to finish, or stop that process "
                                       "and retry."):
        self.path = Path(path)
        self.timeout = timeout
        self.poll = poll
        self.on_wait = on_wait
        self.timeout_advice = timeout_advice
        self._fd: Optional[int] = None

    def acquire(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise cache_write_error(f"create the lock file {self.path}", err) from None
        start = time.monotonic()
        try:
            while not try_lock(fd):
                if self.timeout is not None and time.monotonic() - start > self.timeout:
                    raise LockTimeoutError(
                        f"another process has held {self.path} for more than {self.timeout:.0f} s. "
                        f"{self.timeout_advice}"
                    )
                if self.on_wait is not None:
                    self.on_wait()
                time.sleep(self.poll)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            unlock_and_close(fd)

    def __enter__(self) -> "FileLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@dataclass(frozen=True)
class DownloadRecord:
    """What the cache knows about one downloaded (or hand-placed) model file."""

    filename: str
    url: str
    downloaded_at: str
    size: int
    sha256: str
    trust: str  # "registry": matched the registry's hash; "first-use": recorded by us

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def problem(self) -> Optional[str]:
        from .registry import filename_problem

        if filename_problem(self.filename):
            return f"filename {self.filename!r} {filename_problem(self.filename)}"
        if self.trust not in ("registry", "first-use"):
            return f"trust {self.trust!r} is neither 'registry' nor 'first-use'"
        return None


@dataclass(frozen=True)
class LocalRecord:
    """What the cache knows about one local file given by path (trust on first use)."""

    size: int
    mtime_ns: int
    sha256: str
    first_seen: str

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class ModelCache:
    """One cache folder: file paths, the ``cache.json`` record, and per-model locks."""

    def __init__(self, home: str | os.PathLike[str] | None = None):
        self.home = Path(home).expanduser() if home is not None else cache_home()

    @property
    def record_path(self) -> Path:
        return self.home / "cache.json"

    @property
    def record_lock_path(self) -> Path:
        return self.home / "locks" / "cache.json.lock"

    def model_lock_path(self, name: str) -> Path:
        return self.home / "locks" / "models" / f"{name}.lock"

    def model_dir(self, name: str) -> Path:
        return self.home / "models" / name

    def model_path(self, name: str, filename: str) -> Path:
        return self.model_dir(name) / filename

    def part_path(self, name: str, filename: str) -> Path:
        return self.model_dir(name) / (filename + ".part")

    def lock(self, name: str, *, timeout: Optional[float] = None,
             on_wait: Optional[Callable[[], None]] = None) -> FileLock:
        return FileLock(self.model_lock_path(name), timeout=timeout, on_wait=on_wait)

    def _record_lock(self, timeout: float = _RECORD_LOCK_TIMEOUT) -> FileLock:
        return FileLock(self.record_lock_path, timeout=timeout, timeout_advice=(
            f"Writing {self.record_path} takes a moment, so that process is stuck: stop it "
            "and retry."))

    # -- the record -----------------------------------------------------------------------

    def download_record(self, name: str) -> Optional[DownloadRecord]:
        raw = self._read().get("models", {}).get(name)
        return _parse(DownloadRecord, raw)

    def local_record(self, path: Path) -> Optional[LocalRecord]:
        raw = self._read().get("local_files", {}).get(str(Path(path).resolve()))
        return _parse(LocalRecord, raw)

    def remember_download(self, name: str, record: DownloadRecord) -> None:
        if record.size <= 0 or record.sha256 == EMPTY_SHA256:
            raise WeightsError(f"refusing to record an empty file as {name}")
        with self._editing() as data:
            data.setdefault("models", {})[name] = record.to_json()

    def forget_download(self, name: str) -> None:
        with self._editing() as data:
            data.setdefault("models", {}).pop(name, None)

    def remember_local(self, path: Path, record: LocalRecord) -> None:
        if record.size <= 0 or record.sha256 == EMPTY_SHA256:
            raise WeightsError(f"refusing to record the empty file {path}")
        with self._editing() as data:
            data.setdefault("local_files", {})[str(Path(path).resolve())] = record.to_json()

    def forget_local(self, path: Path) -> None:
        with self._editing() as data:
            data.setdefault("local_files", {}).pop(str(Path(path).resolve()), None)

    def _read(self, *, locked: bool = False) -> dict[str, Any]:
        """The record, checked: a dict whose "models" and "local_files" are dicts of entries.

        Entries themselves are checked when used (:func:`_parse`), so that one bad entry costs
        only itself. A document that fails the check is set aside and a fresh one returned.
        """
        try:
            with open(self.record_path, "rb") as stream:
                raw = stream.read(_MAX_RECORD_BYTES + 1)
        except FileNotFoundError:
            return {"version": RECORD_VERSION}
        except OSError as err:
            raise WeightsError(f"cannot read the cache record {self.record_path}: "
                               f"{err.strerror or err}. Check the folder's permissions, or set "
                               f"{HOME_ENV} to another folder.") from None
        try:
            data = loads_bounded(raw, f"the cache record {self.record_path}",
                                 max_bytes=_MAX_RECORD_BYTES)
            problem = _record_problem(data)
        except JSONDocumentError as err:
            problem = str(err)
        if problem is None:
            return data
        where = self._set_aside(raw, locked)
        log.warning("the cache record %s was unreadable (%s); %s and started a new one",
                    self.record_path, problem, where)
        return {"version": RECORD_VERSION}

    def _set_aside(self, raw: bytes, locked: bool) -> str:
        """Move the damaged record aside (kept for inspection; starting afresh only costs
        re-hashing), under the record's lock and only if it is still the bytes we judged."""
        def move() -> str:
            try:
                with open(self.record_path, "rb") as stream:
                    if stream.read(_MAX_RECORD_BYTES + 1) != raw:
                        return "left it (another process rewrote it meanwhile)"
                backup = move_aside(self.record_path, "corrupt")
            except OSError:
                return "left it in place (the folder is not writable)"
            return f"moved it to {backup}"

        if locked:
            return move()
        try:
            with self._record_lock(timeout=5):
                return move()
        except WeightsError:  # a read-only cache, or a writer holding the lock for long
            return "left it in place"

    @contextlib.contextmanager
    def _editing(self) -> Iterator[dict[str, Any]]:
        """Read-modify-write of cache.json under its own lock, replaced atomically.

        Raises :class:`CacheWriteError` when the record cannot be written; the previous record
        is then left exactly as it was.
        """
        with self._record_lock():
            data = self._read(locked=True)
            data["version"] = RECORD_VERSION
            yield data
            try:
                self.home.mkdir(parents=True, exist_ok=True)
                with atomic_replace(self.record_path) as tmp, \
                        open(tmp, "w", encoding="utf-8") as stream:
                    json.dump(data, stream, indent=2, sort_keys=True)
                    stream.write("\n")
            except OSError as err:
                raise cache_write_error(f"write the cache record {self.record_path} (it was "
                                        "left as it was)", err) from None


def _record_problem(data: Any) -> Optional[str]:
    if not isinstance(data, dict):
        return f"it holds a {type(data).__name__}, not an object"
    for key in ("models", "local_files"):
        if key in data and not isinstance(data[key], dict):
            return f"its {key!r} is a {type(data[key]).__name__}, not an object"
    if "version" in data and (type(data["version"]) is not int or data["version"] > RECORD_VERSION):
        return f"its version is {data['version']!r:.40}, this isegformer writes {RECORD_VERSION}"
    return None


def _parse(cls, raw: Any):
    """A record entry, or None (with a warning) when it is not exactly a valid one."""
    if raw is None:
        return None
    expected = {f.name: f.type for f in fields(cls)}
    problem = None
    if not isinstance(raw, dict) or set(raw) != set(expected):
        problem = "its fields are not " + ", ".join(expected)
    else:
        for name, kind in expected.items():
            value = raw[name]
            if kind == "int" and (type(value) is not int or (value < 0 and name != "mtime_ns")):
                problem = f"{name} is {value!r:.40}, not a non-negative integer"
            elif kind == "str" and (not isinstance(value, str) or not value.isprintable()):
                problem = f"{name} is {value!r:.40}, not a line of text"
            if problem:
                break
        if problem is None and not _SHA256.fullmatch(raw["sha256"]):
            problem = "its sha256 is not 64 lower-case hexadecimal digits"
        if problem is None and (raw["size"] == 0 or raw["sha256"] == EMPTY_SHA256):
            problem = "it records an empty file"
        if problem is None:
            record = cls(**raw)
            problem = record.problem() if hasattr(record, "problem") else None
            if problem is None:
                return record
    log.warning("ignoring a malformed cache record entry (%s): %.200r", problem, raw)
    return None
