"""From a model name (or a local file) to a verified path that is safe to load.

A checkpoint is a pickle, so no file reaches a loader before its SHA256 is checked: against the
registry's hash where it has one, else against the hash recorded the first time the file was
seen (trust on first use). A cached file that fails the check is deleted and reported; a local
file given by path is refused but never deleted. Empty files are refused, never recorded.

A cached file whose check passes is used without writing anything and without the lock, so a
read-only cache (a shared, mounted one) serves its verified files. Only when something must be
written (a download, a first-use hash, removing a damaged file) is the model's lock taken; if
the cache cannot be written, a cached file is still verified (its first-use hash is then not
recorded) and anything else fails with a clear error.
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from ..errors import CancelledError, ChecksumMismatchError, WeightsError
from ..progress import ProgressCallback, report
from .cache import (
    EMPTY_SHA256,
    CacheWriteError,
    DownloadRecord,
    LocalRecord,
    ModelCache,
    sha256_file,
    utc_now,
)
from .download import DownloadFailure, DownloadOptions, download_file, new_session
from .registry import ModelEntry, Registry, RegistryError, load_registry

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]
RegistryLike = Union[Registry, PathLike, None]
HomeLike = Union[ModelCache, PathLike, None]

_PATH_SUFFIXES = (".pth", ".pt", ".pkl", ".ckpt", ".bin", ".gz", ".nii", ".nrrd", ".zip")


@dataclass(frozen=True)
class ModelStatus:
    """What ``isegformer models`` shows for one registry entry."""

    entry: ModelEntry
    path: Path
    cached: bool
    size: Optional[int]  # bytes on disk when cached, else the registry's size
    verified: str  # "registry", "first-use", "pending", "mismatch", "unreadable" or "" (not cached)


def resolve_model(
    name_or_path: PathLike,
    *,
    download: bool = True,
    progress: Optional[ProgressCallback] = None,
    model: Optional[str] = None,
    registry: RegistryLike = None,
    home: HomeLike = None,
    options: Optional[DownloadOptions] = None,
) -> Path:
    """A verified local path for a registry name, or for a weights file given by path.

    A name is looked up in the registry and downloaded into the cache if missing (unless
    ``download`` is False). A path (an ``os.PathLike``, or a string that is not a registry name
    and looks like a path) is checked in place; with ``model`` it must match that registry
    entry's SHA256 where the registry knows it. Raises WeightsError and its subclasses.
    """
    if isinstance(name_or_path, os.PathLike):
        return verify_local_file(name_or_path, model=model, registry=registry, home=home)
    text = str(name_or_path)
    reg = _registry(registry)
    if text not in reg and _looks_like_path(text):
        return verify_local_file(text, model=model, registry=reg, home=home)
    entry = reg.get(text)
    return _fetch(entry, _cache(home), download=download, force=False, progress=progress,
                  options=options or DownloadOptions())


def download_model(
    name: str,
    *,
    force: bool = False,
    progress: Optional[ProgressCallback] = None,
    registry: RegistryLike = None,
    home: HomeLike = None,
    options: Optional[DownloadOptions] = None,
) -> Path:
    """Download a registry entry into the cache (if not already there and verified).

    ``force`` deletes the cached file and its recorded hash first, for when the file was
    legitimately replaced upstream.
    """
    entry = _registry(registry).get(name)
    return _fetch(entry, _cache(home), download=True, force=force, progress=progress,
                  options=options or DownloadOptions())


def verify_local_file(
    path: PathLike,
    *,
    model: Optional[str] = None,
    registry: RegistryLike = None,
    home: HomeLike = None,
) -> Path:
    """Check a weights file given by path, the same way as a cached one; return its path."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise WeightsError(f"no file at {file}. Check the path, or give a model name instead "
                           "(`isegformer models` lists them).")
    stat = file.stat()
    if stat.st_size == 0:
        raise WeightsError(f"{file} is empty (0 bytes): it is not a weights file. An interrupted "
                           "copy or download leaves such files; copy or download it again.")
    actual = sha256_file(file)
    if model is not None:
        entry = _registry(registry).get(model)
        if entry.sha256 is not None:
            if actual != entry.sha256:
                raise ChecksumMismatchError(
                    f"{file} is not the official {model} file: its SHA256 is {actual}, the "
                    f"registry expects {entry.sha256}. It was not loaded (and not deleted). "
                    f"Download {entry.url} again and pass the new file, or run "
                    f"`isegformer download {model}`."
                )
            return file
    if _known_hash(actual, registry):
        return file
    cache = _cache(home)
    record = cache.local_record(file)
    same_file = (record is not None and record.size == stat.st_size
                 and record.mtime_ns == stat.st_mtime_ns)
    if same_file and record.sha256 != actual:
        raise ChecksumMismatchError(
            f"{file} changed without its size or modification time changing (SHA256 "
            f"{actual}, recorded {record.sha256} on {record.first_seen}): it is corrupt or was "
            "tampered with, and was not loaded. Replace it with a good copy; a file you changed "
            "on purpose (with a new modification time) is trusted again as a new file."
        )
    if not same_file:
        if record is not None:
            log.info("%s changed since %s; trusting its new content on first use", file,
                     record.first_seen)
        else:
            log.info("first use of %s: recording SHA256 %s", file, actual)
        try:
            cache.remember_local(file, LocalRecord(size=stat.st_size, mtime_ns=stat.st_mtime_ns,
                                                   sha256=actual, first_seen=utc_now()))
        except CacheWriteError as err:
            if not err.read_only:
                raise
            log.warning("%s: not recorded for trust on first use (%s)", file, err)
    return file


def model_status(entry: ModelEntry, *, home: HomeLike = None, verify: bool = True) -> ModelStatus:
    """Whether an entry is cached and whether the cached file passes its check (read-only)."""
    cache = _cache(home)
    path = cache.model_path(entry.name, entry.filename)
    if not path.is_file():
        return ModelStatus(entry, path, False, entry.size, "")
    size = path.stat().st_size
    expected, source = _expected_hash(entry, cache)
    if expected is None:
        return ModelStatus(entry, path, True, size, "pending")
    if not verify:
        return ModelStatus(entry, path, True, size, source)
    try:
        ok = sha256_file(path) == expected and (entry.size is None or size == entry.size)
    except (WeightsError, FileNotFoundError) as err:
        log.warning("%s", err)
        return ModelStatus(entry, path, True, size, "unreadable")
    return ModelStatus(entry, path, True, size, source if ok else "mismatch")


# -- internals ------------------------------------------------------------------------------------

def _fetch(entry: ModelEntry, cache: ModelCache, *, download: bool, force: bool,
           progress: Optional[ProgressCallback], options: DownloadOptions) -> Path:
    final = cache.model_path(entry.name, entry.filename)
    if not force and _verified_as_is(entry, cache, final):
        return final

    def waiting() -> None:
        report(progress, 0, 0, f"waiting for another download of {entry.name}")

    lock = cache.lock(entry.name, on_wait=waiting)
    try:
        lock.acquire()
    except CacheWriteError as err:
        if not err.read_only:
            raise
        return _use_read_only_cache(entry, cache, final, err, force=force)
    try:
        if force:
            with contextlib.suppress(FileNotFoundError):
                final.unlink()
            cache.forget_download(entry.name)
        elif final.is_file():
            return _check_cached(entry, cache, final)
        if not download:
            raise WeightsError(
                f"{entry.name} is not in the cache ({final} does not exist). Run "
                f"`isegformer download {entry.name}`, or download {entry.url} by hand and put it "
                "at that path, or pass a local weights file instead of the name."
            )
        return _download(entry, cache, final, progress, options)
    except OSError as err:  # removing or replacing a file of the cache
        raise cache_write_error_for(entry, err) from None
    finally:
        lock.release()


def cache_write_error_for(entry: ModelEntry, err: OSError) -> CacheWriteError:
    from .cache import cache_write_error

    return cache_write_error(f"update the cache for {entry.name} ({err.filename or ''})", err)


def _verified_as_is(entry: ModelEntry, cache: ModelCache, final: Path) -> bool:
    """True when the cached file passes its check against a known hash: nothing to write."""
    try:
        size = final.stat().st_size
        expected, _source = _expected_hash(entry, cache)
        if expected is None or size == 0 or (entry.size is not None and size != entry.size):
            return False
        return sha256_file(final) == expected
    except (FileNotFoundError, NotADirectoryError):
        return False


def _use_read_only_cache(entry: ModelEntry, cache: ModelCache, final: Path,
                         err: CacheWriteError, *, force: bool) -> Path:
    """The cache cannot be written: verify a cached file without recording, or say why not."""
    if force or not final.is_file():
        what = "downloaded again" if force else f"downloaded ({final} does not exist)"
        raise WeightsError(
            f"{entry.name} cannot be {what}: the cache {cache.home} cannot be written ({err}) "
            f"{_manual_hint(entry, final)}"
        )
    size = final.stat().st_size
    actual = sha256_file(final)
    expected, source = _expected_hash(entry, cache)
    wrong_size = size == 0 or (entry.size is not None and size != entry.size)
    if wrong_size or (expected is not None and actual != expected):
        reason = (f"it has {size} bytes, the registry expects {entry.size}" if wrong_size
                  else f"its SHA256 is {actual}, {'the registry' if source == 'registry' else 'the recorded first-use hash'} is {expected}")
        raise ChecksumMismatchError(
            f"{final} is damaged or was altered ({reason}); it was not loaded, and not deleted "
            f"because the cache is read-only. Ask whoever maintains {cache.home} to replace it, "
            f"or set ISEGFORMER_HOME to a writable folder and download it there."
        )
    if expected is None:
        log.warning("%s is in a read-only cache without a recorded hash; trusting it on first "
                    "use without recording it (SHA256 %s)", final, actual)
    return final


def _check_cached(entry: ModelEntry, cache: ModelCache, final: Path) -> Path:
    actual = sha256_file(final)
    size = final.stat().st_size
    expected, source = _expected_hash(entry, cache)
    if size == 0:
        _discard(cache, entry, final)
        raise ChecksumMismatchError(
            f"{final} is empty (0 bytes); it was deleted and not loaded. Run `isegformer "
            f"download {entry.name}` to fetch it again. {_manual_hint(entry, final)}"
        )
    if expected is None:
        if entry.size is not None and size != entry.size:
            _discard(cache, entry, final)
            raise ChecksumMismatchError(
                f"{final} has {size} bytes, the registry expects {entry.size}; it was deleted "
                f"and not loaded. {_manual_hint(entry, final)}"
            )
        log.warning("%s was put in the cache by hand; trusting it on first use (SHA256 %s)",
                    final, actual)
        try:
            cache.remember_download(entry.name, DownloadRecord(
                filename=entry.filename, url="(placed by hand)", downloaded_at=utc_now(),
                size=size, sha256=actual, trust="first-use"))
        except CacheWriteError as err:
            if not err.read_only:
                raise
            log.warning("%s: its first-use hash was not recorded (%s)", final, err)
        return final
    if actual != expected or (entry.size is not None and size != entry.size):
        _discard(cache, entry, final)
        origin = ("the registry's" if source == "registry"
                  else "the hash recorded when it was first downloaded")
        raise ChecksumMismatchError(
            f"{final} is damaged or was altered: its SHA256 is {actual}, {origin} is {expected}. "
            f"The file was deleted and not loaded. Run `isegformer download {entry.name}` to "
            f"fetch it again. {_manual_hint(entry, final)}"
        )
    return final


def _download(entry: ModelEntry, cache: ModelCache, final: Path,
              progress: Optional[ProgressCallback], options: DownloadOptions) -> Path:
    part = cache.part_path(entry.name, entry.filename)
    with contextlib.suppress(FileNotFoundError):
        part.unlink()  # left by a process that was killed: its origin is unknown, start afresh
    previous = cache.download_record(entry.name)
    trusted = entry.sha256 or (previous.sha256 if previous and
                               previous.filename == entry.filename else None)
    failures: list[DownloadFailure] = []
    mismatches: list[str] = []
    with new_session() as session:
        for url in entry.urls:
            log.info("downloading %s from %s", entry.name, url)
            try:
                sha256, size = download_file(url, part, label=entry.name,
                                             expected_size=entry.size, progress=progress,
                                             options=options, session=session)
            except DownloadFailure as err:
                log.warning("%s: %s", entry.name, err)
                (mismatches if err.reason == "wrong_size" else failures).append(
                    str(err) if err.reason == "wrong_size" else err)
                continue
            except CancelledError as err:
                raise CancelledError(
                    f"the download of {entry.name} was cancelled; nothing was kept (no partial "
                    f"file in {final.parent}). Start it again to download from the beginning."
                ) from err
            problem = None
            if size == 0 or sha256 == EMPTY_SHA256:
                problem = f"{url} sent an empty file"
            elif entry.size is not None and size != entry.size:
                problem = f"{url} gave {size} bytes, the registry expects {entry.size}"
            elif trusted is not None and sha256 != trusted:
                problem = (f"{url} gave a file with SHA256 {sha256}, expected {trusted}"
                           + ("" if entry.sha256 else " (recorded at its first download)"))
            if problem:
                log.warning("%s: %s", entry.name, problem)
                with contextlib.suppress(OSError):
                    part.unlink()
                mismatches.append(problem)
                continue
            try:
                os.replace(part, final)
            except OSError as err:
                with contextlib.suppress(OSError):
                    part.unlink()
                raise DownloadFailure(
                    f"{entry.name} was downloaded but could not be put in place at {final}: "
                    f"{err.strerror or err}. Check the cache folder, or set ISEGFORMER_HOME to a "
                    "writable folder.", reason="write_error", url=url) from None
            cache.remember_download(entry.name, DownloadRecord(
                filename=entry.filename, url=url, downloaded_at=utc_now(), size=size,
                sha256=sha256, trust="registry" if entry.sha256 else "first-use"))
            if not entry.sha256:
                log.info("%s: no SHA256 in the registry; recorded %s (trust on first use)",
                         entry.name, sha256)
            return final
    if mismatches:
        forced = ("" if entry.sha256 else f" If the file was legitimately replaced upstream, run "
                  f"`isegformer download {entry.name} --force` to forget the recorded hash.")
        raise ChecksumMismatchError(
            f"the download of {entry.name} does not match its expected content: "
            f"{'; '.join(mismatches)}. The file was deleted and not loaded.{forced} "
            f"{_manual_hint(entry, final)}"
        )
    raise _combined_failure(entry, final, failures)


_ADVICE = {
    "offline": "This computer seems to be offline, or a firewall blocks the connection; if your "
               "site uses a proxy, set HTTPS_PROXY (and HTTP_PROXY).",
    "timeout": "The server or the network is too slow right now; try again later, or relax the "
               "limits (`isegformer download --timeout`, `--min-rate`, `--deadline`).",
    "interrupted": "The connection kept breaking; try again later.",
    "server_error": "The server is failing (HTTP 5xx or 429); try again later.",
    "not_found": "The file is no longer at that address; look for a newer isegformer release "
                 "or a registry that points to a mirror (ISEGFORMER_REGISTRY).",
    "bad_content": "Open the URL in a browser: Google Drive shows a page instead of the file "
                   "when its download quota is exceeded or the file is not shared.",
    "tls": "A proxy that inspects HTTPS needs its CA certificate in REQUESTS_CA_BUNDLE.",
    "http_error": "The server refused the request.",
    "write_error": "The cache folder is not writable; set ISEGFORMER_HOME to a writable folder.",
}


def _combined_failure(entry: ModelEntry, final: Path,
                      failures: list[DownloadFailure]) -> DownloadFailure:
    primary = failures[0]
    details = "; ".join(f"{f.url}: {f}" for f in failures)
    advice = " ".join(dict.fromkeys(_ADVICE.get(f.reason, "") for f in failures))
    return DownloadFailure(
        f"could not download {entry.name}: {details}. {advice} {_manual_hint(entry, final)}",
        reason=primary.reason, url=primary.url, status=primary.status,
    )


def _manual_hint(entry: ModelEntry, final: Path) -> str:
    return (f"To install it by hand, download {entry.url} (in a browser) and put it at {final}; "
            "or pass the file's path instead of the model name (for example with --weights).")


def _discard(cache: ModelCache, entry: ModelEntry, final: Path) -> None:
    try:
        final.unlink()
    except FileNotFoundError:
        pass
    except OSError as err:
        raise ChecksumMismatchError(
            f"{final} failed its check and could not be deleted ({err.strerror or err}); it was "
            f"not loaded. Delete it by hand, then run `isegformer download {entry.name}`."
        ) from None
    try:
        cache.forget_download(entry.name)
    except CacheWriteError as err:
        log.warning("%s: its record could not be updated (%s)", entry.name, err)


def _expected_hash(entry: ModelEntry, cache: ModelCache) -> tuple[Optional[str], str]:
    if entry.sha256:
        return entry.sha256, "registry"
    record = cache.download_record(entry.name)
    if record is not None and record.filename == entry.filename:
        return record.sha256, "first-use"
    return None, ""


def _known_hash(sha256: str, registry: RegistryLike) -> bool:
    try:
        reg = _registry(registry)
    except RegistryError as err:
        log.warning("model registry unavailable (%s); checking the file by first use only", err)
        return False
    return any(entry.sha256 == sha256 for entry in reg)


def _looks_like_path(text: str) -> bool:
    return ("/" in text or os.sep in text or text.lower().endswith(_PATH_SUFFIXES)
            or Path(text).expanduser().exists())


def _registry(registry: RegistryLike) -> Registry:
    return registry if isinstance(registry, Registry) else load_registry(registry)


def _cache(home: HomeLike) -> ModelCache:
    return home if isinstance(home, ModelCache) else ModelCache(home)
