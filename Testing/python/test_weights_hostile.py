"""Hostile servers, registries and caches: each gets the package's own error, nothing is spliced,
nothing empty is trusted, a read-only cache still serves its verified files, and a full disk
leaves the cache record as it was.

Real parts: the fault-injecting HTTP server on 127.0.0.1 (weights_http_server.py), and real
tmpfs mounts (full, read-only) where this process may mount them (root on Linux); where it may
not, the same cases run with the OS call monkeypatched at its boundary.
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from isegformer.cli.main import main
from isegformer.errors import ChecksumMismatchError, DownloadError, WeightsError
from isegformer.weights import DownloadOptions, ModelCache, download_model, resolve_model
from isegformer.weights import cache as cache_module
from isegformer.weights.registry import RegistryError, load_registry, parse_registry
from isegformer.weights.resolve import model_status, verify_local_file
from weights_http_server import Route
from weights_testkit import (  # noqa: F401 (fixtures)
    FAST,
    cached_files,
    checkpoint_bytes,
    isolated,
    leftovers,
    model_entry,
    recorded,
    registry_for,
    server,
    sha,
    write_registry,
)


def other_version(data: bytes) -> bytes:
    """The same length, other bytes: what a file replaced upstream looks like. Its start and
    its zip end records stay, so it is still a whole zip container (a download is checked for
    that before it is trusted); the bytes in between differ."""
    changed = np.frombuffer(data, np.uint8).copy()
    changed[64:-8192] ^= 0x5A
    return changed.tobytes()


# --- item 3: a resumed download never splices two versions -------------------------------------

def test_file_replaced_between_attempts_is_downloaded_whole_again(isolated, server, tmp_path,
                                                                   checkpoint_bytes):
    new = other_version(checkpoint_bytes)
    route = server.add("/m.pth", Route(checkpoint_bytes, mode="drop", times=1, next_body=new,
                                       switch_after=1))
    first_etag = route.etag()
    path = resolve_model("m", registry=registry_for(tmp_path, server), options=FAST)
    assert path.read_bytes() == new  # not the first half of the old one and the rest of the new
    assert recorded(isolated, "m").sha256 == sha(new)
    resumed = [s for s in server.requests_for("/m.pth") if s.range]
    assert resumed and resumed[0].if_range == first_etag


def test_server_ignoring_if_range_is_caught_by_its_new_validator(isolated, server, tmp_path,
                                                                 checkpoint_bytes):
    new = other_version(checkpoint_bytes)
    server.add("/m.pth", Route(checkpoint_bytes, mode="drop", times=1, next_body=new,
                               switch_after=1, if_range_ok=False))
    path = resolve_model("m", registry=registry_for(tmp_path, server), options=FAST)
    assert path.read_bytes() == new
    assert server.full_downloads("/m.pth") == 2  # the 206 of the new version was not spliced


def test_last_modified_serves_as_the_validator_without_an_etag(isolated, server, tmp_path,
                                                               checkpoint_bytes):
    route = server.add("/m.pth", Route(checkpoint_bytes, mode="drop", times=1,
                                       validators="last-modified"))
    path = resolve_model("m", registry=registry_for(tmp_path, server), options=FAST)
    assert path.read_bytes() == checkpoint_bytes
    resumed = [s for s in server.requests_for("/m.pth") if s.range]
    assert resumed and resumed[0].if_range == route.last_modified()


def test_server_naming_no_version_is_not_resumed(isolated, server, tmp_path, checkpoint_bytes):
    server.add("/m.pth", Route(checkpoint_bytes, mode="drop", times=1, validators="none"))
    path = resolve_model("m", registry=registry_for(tmp_path, server), options=FAST)
    assert path.read_bytes() == checkpoint_bytes
    assert [s.range for s in server.requests_for("/m.pth")] == [None, None]


# --- item 4: empty answers are never cached or trusted ---------------------------------------------

def test_empty_200_is_refused_and_nothing_is_recorded(isolated, server, tmp_path):
    server.add("/m.pth", Route(b"", mode="empty"))
    registry = registry_for(tmp_path, server)
    with pytest.raises(DownloadError, match="empty"):
        resolve_model("m", registry=registry, options=FAST)
    assert cached_files(isolated) == [] and recorded(isolated, "m") is None
    assert leftovers(isolated) == []
    assert model_status(load_registry(registry).get("m")).cached is False


def test_a_previously_trusted_empty_file_is_discarded_and_fetched_again(
        isolated, server, tmp_path, checkpoint_bytes):
    server.add("/m.pth", Route(checkpoint_bytes))
    registry = registry_for(tmp_path, server)
    # The state an older version left: an empty file, with the hash of nothing recorded.
    final = isolated / "models" / "m" / "m.pth"
    final.parent.mkdir(parents=True)
    final.write_bytes(b"")
    isolated.joinpath("cache.json").write_text(json.dumps({"version": 1, "models": {"m": {
        "filename": "m.pth", "url": server.url("/m.pth"), "downloaded_at": "2024-01-01T00:00:00Z",
        "size": 0, "sha256": sha(b""), "trust": "first-use"}}}))
    with pytest.raises(ChecksumMismatchError, match="empty"):
        resolve_model("m", registry=registry, download=False)
    assert not final.exists()
    final.write_bytes(b"")
    # Where a download is allowed, the empty file is discarded and fetched again at once.
    assert resolve_model("m", registry=registry, options=FAST).read_bytes() == checkpoint_bytes


def test_announced_size_other_than_the_registry_size_is_refused_before_the_body(
        isolated, server, tmp_path, checkpoint_bytes):
    server.add("/m.pth", Route(checkpoint_bytes))
    registry = registry_for(tmp_path, server, size=len(checkpoint_bytes) * 2)
    with pytest.raises(ChecksumMismatchError, match="announces a file of"):
        resolve_model("m", registry=registry, options=FAST)
    assert cached_files(isolated) == [] and leftovers(isolated) == []


@pytest.mark.parametrize("length", ["-5", "abc", "1e3", "9" * 30])
def test_a_malformed_content_length_is_refused(isolated, server, tmp_path, checkpoint_bytes,
                                               length):
    server.add("/m.pth", Route(checkpoint_bytes, length_header=length))
    with pytest.raises(DownloadError, match="not a number of bytes"):
        resolve_model("m", registry=registry_for(tmp_path, server), options=FAST)
    assert cached_files(isolated) == [] and leftovers(isolated) == []


def test_empty_local_file_is_refused_not_recorded(isolated, tmp_path):
    empty = tmp_path / "weights.pth"
    empty.write_bytes(b"")
    with pytest.raises(WeightsError, match="empty"):
        verify_local_file(empty, registry=write_registry(tmp_path, []))
    assert ModelCache(isolated).local_record(empty) is None


# --- item 16: the registry reader ------------------------------------------------------------------

def _entry(**change) -> dict:
    entry = model_entry("m", "https://example.org/m.pth")
    entry.update(change)
    return entry


@pytest.mark.parametrize("change, message", [
    ({"name": "stcn\n"}, "name"),
    ({"sha256": "ab" * 32 + "\n"}, "sha256"),
    ({"filename": "m\x00.pth"}, "control characters"),
    ({"filename": "m\n.pth"}, "control characters"),
    ({"filename": ".."}, "must not start with '.'"),
    ({"filename": ".hidden.pth"}, "must not start with '.'"),
    ({"filename": "sub/m.pth"}, "separators"),
    ({"filename": "sub\\m.pth"}, "separators"),
    ({"filename": "C:m.pth"}, "separators"),
    ({"filename": "nul.pth"}, "device name"),
    ({"filename": "m.pth "}, "space or a dot"),
    ({"filename": "m" * 300}, "longer than"),
    ({"filename": "m.pth.tmp"}, ".tmp"),
    ({"url": "http://[::1"}, "malformed"),
    ({"url": "https://example.org/m.pth\n"}, "control characters"),
    ({"url": "http:///m.pth"}, "no host"),
    ({"url": "http://example.org:99999/m.pth"}, "malformed"),
    ({"mirrors": ["https://ok.org/m.pth", "file:///etc/passwd"]}, "http"),
    ({"version": ""}, "version"),
    ({"size": 10**30}, "size"),
])
def test_registry_fields_are_validated_whole(change, message):
    with pytest.raises(RegistryError, match=message):
        parse_registry({"schema_version": 1, "models": [_entry(**change)]}, "r.json")


@pytest.mark.parametrize("content, message", [
    (b"\xff\xfe{\x00}", "not UTF-8"),
    (b'{"schema_version": 1, "models": ' + b"[" * 5000 + b"]" * 5000 + b"}", "deeper than"),
    (b'{"schema_version": 1e999, "models": []}', "out of range|not valid JSON"),
])
def test_registry_files_that_are_not_valid_documents(tmp_path, content, message):
    path = tmp_path / "r.json"
    path.write_bytes(content)
    with pytest.raises(RegistryError, match=message):
        load_registry(path)


def test_registry_cli_reports_a_bad_registry_as_an_error(isolated, tmp_path, capsys):
    path = tmp_path / "r.json"
    path.write_bytes(b"\x80not text")
    assert main(["models", "--registry", str(path)]) == 1
    assert "not UTF-8" in capsys.readouterr().err


# --- item 17: tampered cache records ------------------------------------------------------------------

@pytest.mark.parametrize("content", [
    json.dumps({"version": 1, "models": []}).encode(),
    json.dumps({"version": 1, "local_files": "x"}).encode(),
    json.dumps([1, 2]).encode(),
    b"\xff\xfe\x00garbage",
    b'{"models": ' + b"[" * 3000 + b"]" * 3000 + b"}",
    json.dumps({"version": "one"}).encode(),
])
def test_tampered_cache_record_is_set_aside_and_the_model_still_resolves(
        isolated, server, tmp_path, checkpoint_bytes, content, capsys):
    server.add("/m.pth", Route(checkpoint_bytes))
    registry = registry_for(tmp_path, server)
    isolated.mkdir(parents=True)
    isolated.joinpath("cache.json").write_bytes(content)
    assert main(["models", "--registry", str(registry)]) == 0
    assert "m " in capsys.readouterr().out
    assert resolve_model("m", registry=registry, options=FAST).read_bytes() == checkpoint_bytes
    assert list(isolated.glob("cache.json.corrupt-*"))  # the damaged record was kept aside
    assert recorded(isolated, "m").sha256 == sha(checkpoint_bytes)


@pytest.mark.parametrize("entry", [
    [],
    {"filename": "m.pth"},
    {"filename": "m.pth", "url": "u", "downloaded_at": "t", "size": "big", "sha256": "ab" * 32,
     "trust": "first-use"},
    {"filename": "../../m.pth", "url": "u", "downloaded_at": "t", "size": 5, "sha256": "ab" * 32,
     "trust": "first-use"},
    {"filename": "m.pth", "url": "u", "downloaded_at": "t", "size": 5, "sha256": "xyz",
     "trust": "first-use"},
    {"filename": "m.pth", "url": "u", "downloaded_at": "t", "size": 5, "sha256": "ab" * 32,
     "trust": "everyone", "extra": 1},
])
def test_malformed_cache_entries_are_ignored_one_by_one(isolated, entry):
    good = {"filename": "g.pth", "url": "u", "downloaded_at": "t", "size": 5,
            "sha256": "cd" * 32, "trust": "first-use"}
    isolated.mkdir(parents=True)
    isolated.joinpath("cache.json").write_text(json.dumps(
        {"version": 1, "models": {"m": entry, "g": good}}))
    cache = ModelCache(isolated)
    assert cache.download_record("m") is None
    assert cache.download_record("g").sha256 == "cd" * 32


# --- item 18: a read-only cache ---------------------------------------------------------------------

def _mount(target: Path, size: str) -> bool:
    target.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(target)],
                          capture_output=True)
    return done.returncode == 0


@contextlib.contextmanager
def tmpfs(target: Path, size: str):
    if not _mount(target, size):
        pytest.skip("cannot mount a tmpfs here (needs root on Linux); the monkeypatched "
                    "variant of this test covers the same code")
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


def _remount_read_only(target: Path) -> None:
    done = subprocess.run(["mount", "-o", "remount,ro", str(target)], capture_output=True)
    if done.returncode != 0:
        pytest.skip("cannot remount read-only here")


def test_read_only_cache_serves_verified_files(isolated, server, tmp_path, checkpoint_bytes,
                                               monkeypatch, capsys):
    server.add("/m.pth", Route(checkpoint_bytes))
    server.add("/h.pth", Route(checkpoint_bytes))
    registry = write_registry(tmp_path, [model_entry("m", server.url("/m.pth")),
                                         model_entry("h", server.url("/h.pth")),
                                         model_entry("n", server.url("/n.pth"))])
    with tmpfs(tmp_path / "shared", "48m") as home:
        monkeypatch.setenv("ISEGFORMER_HOME", str(home))
        path = download_model("m", registry=registry, options=FAST)
        hand = home / "models" / "h" / "h.pth"  # placed by hand, never recorded
        hand.parent.mkdir(parents=True)
        hand.write_bytes(checkpoint_bytes)
        _remount_read_only(home)
        with pytest.raises(OSError):
            (home / "probe").write_bytes(b"x")  # really read-only, even for root

        assert resolve_model("m", registry=registry, options=FAST) == path
        assert resolve_model("h", registry=registry, options=FAST) == hand  # verified, unrecorded
        assert main(["download", "m", "--registry", str(registry), "--no-progress"]) == 0
        assert capsys.readouterr().out.strip() == f"m: {path}"
        with pytest.raises(WeightsError, match="cannot be written.*ISEGFORMER_HOME"):
            resolve_model("n", registry=registry, options=FAST)
        local = tmp_path / "mine.pth"
        local.write_bytes(checkpoint_bytes[::-1])
        assert verify_local_file(local, registry=registry) == local


def test_unwritable_lock_folder_still_serves_verified_files(isolated, server, tmp_path,
                                                            checkpoint_bytes, monkeypatch):
    """The same as above without a mount: the OS refuses the lock file with EROFS."""
    server.add("/m.pth", Route(checkpoint_bytes))
    server.add("/h.pth", Route(checkpoint_bytes))
    registry = write_registry(tmp_path, [model_entry("m", server.url("/m.pth")),
                                         model_entry("h", server.url("/h.pth"))])
    path = download_model("m", registry=registry, options=FAST)
    hand = isolated / "models" / "h" / "h.pth"
    hand.parent.mkdir(parents=True)
    hand.write_bytes(checkpoint_bytes)
    real_open = os.open

    def read_only_open(file, flags, *args, **kwargs):
        if str(file).endswith(".lock") and flags & os.O_CREAT:
            raise OSError(errno.EROFS, "Read-only file system", str(file))
        return real_open(file, flags, *args, **kwargs)

    monkeypatch.setattr(cache_module.os, "open", read_only_open)
    assert resolve_model("m", registry=registry, options=FAST) == path
    assert resolve_model("h", registry=registry, options=FAST) == hand
    assert recorded(isolated, "h") is None
    with pytest.raises(WeightsError, match="cannot be downloaded again"):
        download_model("m", registry=registry, options=FAST, force=True)
    path.write_bytes(checkpoint_bytes[:-1] + b"!")  # damaged: it fails its recorded hash
    with pytest.raises(ChecksumMismatchError, match="not deleted because the cache is read-only"):
        resolve_model("m", registry=registry, options=FAST)
    assert path.is_file()


# --- item 19: a full disk while the record is written -------------------------------------------------

def _record_with_one_local_file(home: Path, tmp_path: Path, data: bytes) -> Path:
    first = tmp_path / "first.pth"
    first.write_bytes(data)
    verify_local_file(first, registry=write_registry(tmp_path, []))
    assert home.joinpath("cache.json").is_file()
    return first


def test_full_disk_while_writing_the_record_leaves_it_intact(isolated, tmp_path,
                                                             checkpoint_bytes, monkeypatch, caplog):
    _record_with_one_local_file(isolated, tmp_path, checkpoint_bytes)
    before = isolated.joinpath("cache.json").read_bytes()
    second = tmp_path / "second.pth"
    second.write_bytes(checkpoint_bytes[::-1])
    real_dump = json.dump

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_module.json, "dump", disk_full)
    # The file was hashed; only its bookkeeping failed: it is still usable, with a warning.
    with caplog.at_level(logging.WARNING, logger="isegformer.weights.resolve"):
        assert verify_local_file(second, registry=write_registry(tmp_path, [])) == second
    assert "disk is full" in caplog.text and "left as it was" in caplog.text
    monkeypatch.setattr(cache_module.json, "dump", real_dump)
    assert isolated.joinpath("cache.json").read_bytes() == before
    assert leftovers(isolated) == []


def test_full_tmpfs_while_writing_the_record_leaves_it_intact(tmp_path, checkpoint_bytes,
                                                             monkeypatch, caplog):
    with tmpfs(tmp_path / "small", "64k") as home:
        monkeypatch.setenv("ISEGFORMER_HOME", str(home))
        _record_with_one_local_file(home, tmp_path, checkpoint_bytes)
        before = home.joinpath("cache.json").read_bytes()
        filler = os.open(home / "filler", os.O_WRONLY | os.O_CREAT)  # fill the disk up
        with contextlib.suppress(OSError):
            while True:
                os.write(filler, b"\0" * 4096)
        os.close(filler)
        second = tmp_path / "second.pth"
        second.write_bytes(checkpoint_bytes[::-1])
        with caplog.at_level(logging.WARNING, logger="isegformer.weights.resolve"):
            assert verify_local_file(second, registry=write_registry(tmp_path, [])) == second
        assert "disk is full" in caplog.text
        assert home.joinpath("cache.json").read_bytes() == before
        assert [p.name for p in home.iterdir() if p.name.endswith(".tmp")] == []


# --- item 20: every malformed answer is a DownloadError -----------------------------------------------

@pytest.mark.parametrize("location", [
    "http://[::1",
    "http://127.0.0.1:99999/m.pth",
    "http://\x00bad/m.pth",
    "ftp://127.0.0.1/m.pth",
    "http://",
    "//[::1/m.pth",
])
def test_malformed_redirects_are_download_errors(isolated, server, tmp_path, location):
    server.add("/m.pth", Route(b"", mode="redirect", location=location))
    with pytest.raises(DownloadError):
        download_model("m", registry=registry_for(tmp_path, server), options=FAST)
    assert cached_files(isolated) == [] and leftovers(isolated) == []


# --- item 21: a trickling server ends -------------------------------------------------------------

def test_trickling_server_gives_up_soon_with_the_cli_timeout(isolated, server, tmp_path,
                                                             checkpoint_bytes, capsys):
    server.add("/m.pth", Route(checkpoint_bytes, mode="trickle", delay=0.5))
    registry = registry_for(tmp_path, server)
    start = time.monotonic()
    assert main(["download", "m", "--registry", str(registry), "--timeout", "2",
                 "--no-progress"]) == 1
    elapsed = time.monotonic() - start
    assert elapsed < 20, elapsed
    assert "slower than the minimum" in capsys.readouterr().err
    assert cached_files(isolated) == [] and leftovers(isolated) == []


def test_a_trickled_web_page_is_ended_by_the_minimum_rate_too(isolated, server, tmp_path):
    page = b"<html><body>" + b"x" * 4000 + b"</body></html>"
    server.add("/m.pth", Route(page, mode="trickle", delay=0.2, content_type="text/html"))
    options = DownloadOptions(connect_timeout=2, read_timeout=1, retries=5, backoff=0.01)
    start = time.monotonic()
    with pytest.raises(DownloadError, match="slower than the minimum"):
        download_model("m", registry=registry_for(tmp_path, server), options=options)
    assert time.monotonic() - start < 10
    assert cached_files(isolated) == [] and leftovers(isolated) == []


def test_deadline_bounds_the_whole_download(isolated, server, tmp_path, checkpoint_bytes):
    server.add("/m.pth", Route(checkpoint_bytes, mode="trickle", delay=0.2))
    options = DownloadOptions(connect_timeout=2, read_timeout=1, min_rate=0, deadline=2.5,
                              retries=50, backoff=0.01)
    start = time.monotonic()
    with pytest.raises(DownloadError, match="deadline"):
        download_model("m", registry=registry_for(tmp_path, server), options=options)
    assert time.monotonic() - start < 8
    assert cached_files(isolated) == [] and leftovers(isolated) == []
