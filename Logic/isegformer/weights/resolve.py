"""From a model name (or a local file) to a verified path that is safe to load.

A checkpoint is a pickle, so no file reaches a loader before its SHA256 is checked: against the
registry's hash where it has one, else against the hash recorded the first time the file was
seen (trust on first use). Before a first-use hash is recorded, the file must look like what its
name says (:mod:`isegformer.weights.content`: no web page, no zip or gzip cut short), so an
interrupted or refused download is never trusted. A cached file that fails a check is moved
aside (``<file>.rejected-<time>``) and reported, never deleted: it may be the user's own copy.
A file put in the cache by hand and later replaced by hand is trusted anew, as a local file with
a new modification time is. A local file given by path is refused but never moved. Empty files
are refused, never recorded. ``download --force`` keeps the cached file and its record until the
new download has been verified.

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

from ..atomic import move_aside
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
from .content import content_problem
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
    kind: Union[str, tuple[str, ...], None] = None,
) -> Path:
    """A verified local path for a registry name, or for a weights file given by path.

    A name is looked up in the registry and downloaded into the cache if missing (unless
    ``download`` is False); with ``kind`` (a registry kind, or several) a name of another kind
    is refused before anything is downloaded. A path (an ``os.PathLike``, or a string that is
    not a registry name and looks like a path) is checked in place; with ``model`` it must
    match that registry entry's SHA256 where the registry knows it. Raises WeightsError and
    its subclasses.
    """
    if isinstance(name_or_path, os.PathLike):
        return verify_local_file(name_or_path, model=model, registry=registry, home=home)
    text = str(name_or_path)
    reg = _registry(registry)
    if is_weights_path(text, reg):
        return verify_local_file(text, model=model, registry=reg, home=home)
    entry = reg.get(text)
    _check_kind(entry, kind, reg)
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

    ``force`` downloads again and accepts a file whose hash differs from the recorded first-use
    hash (for a file legitimately replaced upstream); the cached file and its record stay as
    they are until the new file has been downloaded and verified.
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
        except CacheWriteError as err:  # bookkeeping only: the file itself was checked
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
        if not force and final.is_file():
            try:
                return _check_cached(entry, cache, final)
            except ChecksumMismatchError as err:
                if not download or final.exists():
                    raise
                # The bad file was moved aside: fetch the file again (checked against the hash
                # recorded at its first download, which the set-aside kept).
                log.warning("%s; downloading it again", err)
        if not download:
            raise WeightsError(
                f"{entry.name} is not in the cache ({final} does not exist). Run "
                f"`isegformer download {entry.name}`, or download {entry.url} by hand and put it "
                "at that path, or pass a local weights file instead of the name."
            )
        return _download(entry, cache, final, progress, options, replace_record=force)
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


_PLACED_BY_HAND = "(placed by hand)"


def _check_cached(entry: ModelEntry, cache: ModelCache, final: Path) -> Path:
    actual = sha256_file(final)
    size = final.stat().st_size
    expected, source = _expected_hash(entry, cache)
    if size == 0:  # nothing to keep: an empty file holds no one's work
        _discard_empty(cache, entry, final)
        raise ChecksumMismatchError(
            f"{final} is empty (0 bytes); it was deleted and not loaded. Run `isegformer "
            f"download {entry.name}` to fetch it again. {_manual_hint(entry, final)}"
        )
    record = cache.download_record(entry.name)
    replaced_by_hand = (source == "first-use" and record is not None and record.url == _PLACED_BY_HAND
                        and actual != expected and _replaced_since(cache, final, record))
    if expected is None or replaced_by_hand:
        if entry.size is not None and size != entry.size:
            aside = _set_aside(cache, entry, final)
            raise ChecksumMismatchError(
                f"{final} has {size} bytes, the registry expects {entry.size}: it is not the "
                f"official file. It was not loaded, and was moved to {aside}. "
                f"{_manual_hint(entry, final)}"
            )
        problem = content_problem(final, entry.filename)
        if problem is not None:
            raise WeightsError(
                f"{final} was put in the cache by hand, but {problem}. It was not loaded, and "
                f"was left where it is. Replace it with the complete file ({entry.url}), or "
                f"delete it and run `isegformer download {entry.name}`."
            )
        if replaced_by_hand:
            log.warning("%s was replaced by hand since %s; trusting the new file on first use "
                        "(SHA256 %s)", final, record.downloaded_at, actual)
        else:
            log.warning("%s was put in the cache by hand; trusting it on first use (SHA256 %s)",
                        final, actual)
        try:
            cache.remember_download(entry.name, DownloadRecord(
                filename=entry.filename, url=_PLACED_BY_HAND, downloaded_at=utc_now(),
                size=size, sha256=actual, trust="first-use"))
            # Its size and time, as for a local file: a later change in place with both kept is
            # corruption, a file copied over it (a new time) is the user's new file.
            stat = final.stat()
            cache.remember_local(final, LocalRecord(size=stat.st_size, mtime_ns=stat.st_mtime_ns,
                                                    sha256=actual, first_seen=utc_now()))
        except CacheWriteError as err:  # bookkeeping only: the file itself was checked
            log.warning("%s: its first-use hash was not recorded (%s)", final, err)
        return final
    if actual != expected or (entry.size is not None and size != entry.size):
        aside = _set_aside(cache, entry, final)
        if actual == expected:  # the file is the one recorded; only the registry's size differs
            raise ChecksumMismatchError(
                f"{final} has {size} bytes, the registry expects {entry.size}, while its content is "
                f"the one recorded on {record.downloaded_at if record else 'its first use'}: it is "
                f"not the file the registry describes. It was not loaded, and was moved to {aside}. "
                f"{_rejection_advice(entry, final, {'registry'})}"
            )
        if record is not None and record.url == _PLACED_BY_HAND and source == "first-use":
            raise ChecksumMismatchError(
                f"{final} changed without its size or modification time changing (SHA256 "
                f"{actual}, recorded {expected} when it was put there by hand on "
                f"{record.downloaded_at}): it is corrupt or was tampered with. It was not loaded, "
                f"and was moved to {aside}. Put a good copy there (a file copied in is trusted "
                f"anew), or run `isegformer download {entry.name}`."
            )
        if source == "registry":
            found = (f"its SHA256 is {actual}, the registry's is {expected}" if actual != expected
                     else f"it has {size} bytes, the registry expects {entry.size}")
            raise ChecksumMismatchError(
                f"{final} is not the official {entry.name} file ({found}): it is damaged, was "
                f"altered, or is another file. It was not loaded, and was moved to {aside}. Run "
                f"`isegformer download {entry.name}` to fetch it again; a copy put there by "
                f"hand must be the exact official file. {_manual_hint(entry, final)}"
            )
        raise ChecksumMismatchError(
            f"{final} is damaged or was altered: its SHA256 is {actual}, the hash recorded when "
            f"it was downloaded ({record.downloaded_at if record else 'earlier'}) is {expected}. "
            f"It was not loaded, and was moved to {aside}. Run `isegformer download "
            f"{entry.name}` to fetch it again. {_manual_hint(entry, final)}"
        )
    return final


def _download(entry: ModelEntry, cache: ModelCache, final: Path,
              progress: Optional[ProgressCallback], options: DownloadOptions, *,
              replace_record: bool = False) -> Path:
    """Download ``entry`` to its ``.part`` file, check it, and only then put it in place of
    ``final`` (an existing file and its record stay until that moment). ``replace_record``
    (``download --force``): a file whose hash differs from the recorded first-use hash is
    accepted as the new file."""
    part = cache.part_path(entry.name, entry.filename)
    with contextlib.suppress(FileNotFoundError):
        part.unlink()  # left by a process that was killed: its origin is unknown, start afresh
    previous = None if replace_record else cache.download_record(entry.name)
    trusted = entry.sha256 or (previous.sha256 if previous and
                               previous.filename == entry.filename else None)
    failures: list[DownloadFailure] = []
    rejected: list[tuple[str, str]] = []  # (why: "registry", "recorded" or "content", what)
    with new_session() as session:
        for url in entry.urls:
            log.info("downloading %s from %s", entry.name, url)
            try:
                sha256, size = download_file(url, part, label=entry.name,
                                             expected_size=entry.size, progress=progress,
                                             options=options, session=session)
            except DownloadFailure as err:
                log.warning("%s: %s", entry.name, err)
                if err.reason == "wrong_size":
                    rejected.append(("registry", str(err)))
                else:
                    failures.append(err)
                continue
            except CancelledError as err:
                raise CancelledError(
                    f"the download of {entry.name} was cancelled; nothing was kept (no partial "
                    f"file in {final.parent}{_kept(final)}). Start it again to download from the "
                    "beginning."
                ) from err
            problem = None
            if size == 0 or sha256 == EMPTY_SHA256:
                problem = ("content", f"{url} sent an empty file")
            elif entry.size is not None and size != entry.size:
                problem = ("registry", f"{url} gave {size} bytes, the registry expects {entry.size}")
            elif entry.sha256 and sha256 != entry.sha256:
                problem = ("registry", f"{url} gave a file with SHA256 {sha256}, the registry "
                                       f"expects {entry.sha256}")
            elif trusted is not None and sha256 != trusted:
                problem = ("recorded", f"{url} gave a file with SHA256 {sha256}, expected {trusted} "
                                       f"(recorded at its first download, {previous.downloaded_at})")
            elif not entry.sha256:
                # Nothing vouches for these bytes but their shape: check it before trusting them.
                found = content_problem(part, entry.filename)
                if found is not None:
                    problem = ("content", f"{url} sent {size} bytes, but {found}")
            if problem:
                log.warning("%s: %s", entry.name, problem[1])
                with contextlib.suppress(OSError):
                    part.unlink()
                rejected.append(problem)
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
            try:
                cache.remember_download(entry.name, DownloadRecord(
                    filename=entry.filename, url=url, downloaded_at=utc_now(), size=size,
                    sha256=sha256, trust="registry" if entry.sha256 else "first-use"))
            except CacheWriteError as err:  # the file was checked; only the record is missing
                log.warning("%s: downloaded and checked, but its hash was not recorded (%s); the "
                            "next use trusts the file on first use again", entry.name, err)
            if not entry.sha256:
                log.info("%s: no SHA256 in the registry; recorded %s (trust on first use)",
                         entry.name, sha256)
            return final
    if rejected:
        raise ChecksumMismatchError(
            f"the download of {entry.name} does not match its expected content: "
            f"{'; '.join(what for _, what in rejected)}. Nothing was kept{_kept(final)}. "
            f"{_rejection_advice(entry, final, {why for why, _ in rejected})}"
        )
    raise _combined_failure(entry, final, failures)


def _kept(final: Path) -> str:
    return f"; the cached file {final} was kept as it was" if final.is_file() else ""


def _rejection_advice(entry: ModelEntry, final: Path, reasons: set[str]) -> str:
    """What to do about downloads refused for ``reasons``: each cause has its own remedy."""
    advice = []
    if "registry" in reasons:
        advice.append(
            "The registry's size or SHA256 for this file disagrees with what the server sends: "
            "the registry (or the server's file) is wrong or out of date. Use a newer isegformer "
            "release, or a registry that points to a correct mirror (ISEGFORMER_REGISTRY); a copy "
            "downloaded by hand would fail the same check.")
    if "recorded" in reasons:
        advice.append(
            f"If the file was legitimately replaced upstream, run `isegformer download "
            f"{entry.name} --force` to take the new file (the cached one stays until the new "
            "one is verified).")
    if "content" in reasons:
        advice.append(
            "The server sent something other than the file (a web page, or a download cut "
            "short); try again later. " + _ADVICE["bad_content"])
    if reasons - {"registry"}:
        advice.append(_manual_hint(entry, final))
    return " ".join(advice)


def _check_kind(entry: ModelEntry, kind: Union[str, tuple[str, ...], None], registry: Registry) -> None:
    if kind is None:
        return
    kinds = (kind,) if isinstance(kind, str) else tuple(kind)
    if entry.kind in kinds:
        return
    names = [e.name for e in registry if e.kind in kinds]
    raise WeightsError(
        f"{entry.name} is a {entry.kind.replace('_', ' ')} entry of the registry, not a "
        f"{' or '.join(k.replace('_', ' ') for k in kinds)}; nothing was downloaded. Use "
        + (", ".join(names) if names else "a weights file given by path") + " instead."
    )


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
    "insecure_redirect": "The https address sent the download on to plain http, where anyone on "
                         "the network could alter the file, so nothing was downloaded from it; use "
                         "a mirror or registry that serves it over https, or download it by hand "
                         "from a source you trust.",
}


def _combined_failure(entry: ModelEntry, final: Path,
                      failures: list[DownloadFailure]) -> DownloadFailure:
    primary = failures[0]
    details = "; ".join(f"{f.url}: {f}" for f in failures)
    advice = " ".join(dict.fromkeys(_ADVICE.get(f.reason, "") for f in failures))
    kept = f" The cached file {final} was kept as it was." if final.is_file() else ""
    return DownloadFailure(
        f"could not download {entry.name}: {details}.{kept} {advice} {_manual_hint(entry, final)}",
        reason=primary.reason, url=primary.url, status=primary.status,
    )


def _manual_hint(entry: ModelEntry, final: Path) -> str:
    return (f"To install it by hand, download {entry.url} (in a browser) and put it at {final}; "
            "or pass the file's path instead of the model name (for example with --weights).")


def _set_aside(cache: ModelCache, entry: ModelEntry, final: Path) -> Path:
    """Move a cached file that failed its check out of the way (never delete it: it may be the
    user's own copy; never over an earlier one) and return where it went. The hash recorded at
    a download is kept, so that the next download must match it (only ``--force`` forgets it);
    a hand-placed file's record goes with the file."""
    try:
        aside = move_aside(final, "rejected")
    except OSError as err:
        raise ChecksumMismatchError(
            f"{final} failed its check and could not be moved aside ({err.strerror or err}); it "
            f"was not loaded. Move or delete it by hand, then run `isegformer download "
            f"{entry.name}`."
        ) from None
    record = cache.download_record(entry.name)
    if record is not None and record.url == _PLACED_BY_HAND:
        _forget(cache, entry)
    return aside


def _replaced_since(cache: ModelCache, final: Path, record: DownloadRecord) -> bool:
    """Whether a hand-placed cache file was replaced (a new size or modification time) since its
    hash was recorded, rather than changed in place (corruption)."""
    stat = final.stat()
    local = cache.local_record(final)
    if local is None:  # recorded by an older version, without its time: go by the size
        return stat.st_size != record.size
    return (local.size, local.mtime_ns) != (stat.st_size, stat.st_mtime_ns)


def _discard_empty(cache: ModelCache, entry: ModelEntry, final: Path) -> None:
    try:
        final.unlink()
    except FileNotFoundError:
        pass
    except OSError as err:
        raise ChecksumMismatchError(
            f"{final} is empty and could not be deleted ({err.strerror or err}); it was not "
            f"loaded. Delete it by hand, then run `isegformer download {entry.name}`."
        ) from None
    _forget(cache, entry)


def _forget(cache: ModelCache, entry: ModelEntry) -> None:
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


def is_weights_path(text: str, registry: RegistryLike = None) -> bool:
    """Whether a model setting names a file (True) rather than a registry entry: a registry
    name is never a path; anything else with a separator, a weights or image suffix, or naming
    an existing file is. The one rule for the package, the CLI and the Slicer module."""
    text = str(text)
    if "/" in text or os.sep in text:
        return True  # no registry name holds a separator: no need to read the registry
    try:
        if text in _registry(registry):
            return False
    except RegistryError as err:  # a broken registry must not make a file unusable
        log.warning("model registry unavailable (%s); judging %r by its name alone", err, text)
    return text.lower().endswith(_PATH_SUFFIXES) or Path(text).expanduser().exists()


def _registry(registry: RegistryLike) -> Registry:
    return registry if isinstance(registry, Registry) else load_registry(registry)


def _cache(home: HomeLike) -> ModelCache:
    return home if isinstance(home, ModelCache) else ModelCache(home)
