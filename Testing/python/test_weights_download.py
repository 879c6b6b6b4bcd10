"""Downloads against a real HTTP server on 127.0.0.1 that injects faults.

Every test ends in one of two states: a verified file in the cache, or a clean failure with
nothing half-written left behind (no .part file, no temporary record, no cached file).
"""
from __future__ import annotations

import errno
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import isegformer
from isegformer.errors import CancelledError, ChecksumMismatchError, DownloadError, WeightsError
from isegformer.weights import (
    DiskFullError,
    DownloadFailure,
    DownloadOptions,
    download_model,
    resolve_model,
)
from isegformer.weights import download as download_module
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


def assert_clean_failure(home: Path) -> None:
    assert leftovers(home) == []
    assert cached_files(home) == []
    assert recorded(home, "m") is None


def test_download_is_verified_recorded_and_reported(isolated, server, tmp_path, checkpoint_bytes):
    server.add("/m.pth", Route(checkpoint_bytes))
    calls = []
    path = resolve_model("m", registry=registry_for(tmp_path, server), options=FAST,
                         progress=lambda done, total, msg: calls.append((done, total)))
    assert path == isolated / "models" / "m" / "m.pth"
    assert path.read_bytes() == checkpoint_bytes
    record = recorded(isolated, "m")
    assert record.sha256 == sha(checkpoint_bytes)
    assert record.size == len(checkpoint_bytes)
    assert record.url == server.url("/m.pth")
    assert record.trust == "first-use"
    dones = [done for done, _ in calls]
    assert dones == sorted(dones) and dones[-1] == len(checkpoint_bytes)
    assert calls[-1][1] == len(checkpoint_bytes)
    assert leftovers(isolated) == []


def test_second_use_reads_the_cache_and_a_tampered_file_is_moved_aside(
        isolated, server, tmp_path, checkpoint_bytes):
    server.add("/m.pth", Route(checkpoint_bytes))
    registry = registry_for(tmp_path, server)
    path = resolve_model("m", registry=registry, options=FAST)
    assert resolve_model("m", registry=registry, download=False) == path
    assert len(server.requests_for("/m.pth")) == 1

    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatchError, match="not loaded, and was moved to"):
        resolve_model("m", registry=registry, download=False)
    assert not path.exists()
    aside = list(path.parent.glob("m.pth.rejected-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == bytes(data)  # kept, never deleted
    # The hash of the download stays recorded: a new download must match it.
    assert recorded(isolated, "m").sha256 == sha(checkpoint_bytes)


def test_a_known_registry_hash_is_enforced(isolated, server, tmp_path, checkpoint_bytes):
    server.add("/good.pth", Route(checkpoint_bytes))
    server.add("/bad.pth", Route(checkpoint_bytes[:-10] + b"0123456789"))
    good = write_registry(tmp_path, [model_entry("m", server.url("/good.pth"),
                                                 sha256=sha(checkpoint_bytes),
                                                 size=len(checkpoint_bytes))])
    assert resolve_model("m", registry=good, options=FAST).read_bytes() == checkpoint_bytes
    assert recorded(isolated, "m").trust == "registry"

    download_model("m", registry=good, force=True, options=FAST)  # force re-downloads
    assert len(server.requests_for("/good.pth")) == 2

    other_home = tmp_path / "other"
    bad = write_registry(tmp_path, [model_entry("m", server.url("/bad.pth"),
                                                sha256=sha(checkpoint_bytes))])
    with pytest.raises(ChecksumMismatchError, match="Nothing was kept.*registry.*wrong or out of date"):
        resolve_model("m", registry=bad, home=other_home, options=FAST)
    assert_clean_failure(other_home)


def test_wrong_size_is_rejected(isolated, server, tmp_path, checkpoint_bytes):
    server.add("/m.pth", Route(checkpoint_bytes))
    registry = registry_for(tmp_path, server, size=len(checkpoint_bytes) + 1)
    with pytest.raises(ChecksumMismatchError, match="expects"):
        resolve_model("m", registry=registry, options=FAST)
    assert_clean_failure(isolated)


def test_first_use_hash_protects_later_downloads(isolated, server, tmp_path, checkpoint_bytes):
    route = server.add("/m.pth", Route(checkpoint_bytes))
    registry = registry_for(tmp_path, server)
    path = resolve_model("m", registry=registry, options=FAST)
    path.unlink()  # the cache lost the file, but remembers its hash
    route.body = checkpoint_bytes + b"tampered"
    with pytest.raises(ChecksumMismatchError, match="--force"):
        resolve_model("m", registry=registry, options=FAST)
    assert leftovers(isolated) == [] and not path.exists()
    # The user confirms the upstream change: the new file is trusted from now on.
    assert download_model("m", registry=registry, force=True, options=FAST).read_bytes() == \
        route.body
    assert recorded(isolated, "m").sha256 == sha(route.body)


def test_dropped_connection_is_resumed_with_range(isolated, server, tmp_path, checkpoint_bytes):
    server.add("/m.pth", Route(checkpoint_bytes, mode="drop", times=1))
    path = resolve_model("m", registry=registry_for(tmp_path, server), options=FAST)
    assert path.read_bytes() == checkpoint_bytes
    seen = server.requests_for("/m.pth")
    assert len(seen) == 2
    assert seen[0].range is None
    resumed_at = int(seen[1].range.removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= len(checkpoint_bytes) // 2
    assert recorded(isolated, "m").sha256 == sha(checkpoint_bytes)
    assert leftovers(isolated) == []


def test_truncated_body_restarts_when_the_server_cannot_resume(
        isolated, server, tmp_path, checkpoint_bytes):
    server.add("/m.pth", Route(checkpoint_bytes, mode="drop", times=1, range_ok=False))
    path = resolve_model("m", registry=registry_for(tmp_path, server), options=FAST)
    assert path.read_bytes() == checkpoint_bytes
    assert len(server.requests_for("/m.pth")) == 2


def test_always_truncated_body_fails_cleanly(isolated, server, tmp_path, checkpoint_bytes):
    server.add("/m.pth", Route(checkpoint_bytes, mode="drop", range_ok=False))
    with pytest.raises(DownloadFailure) as info:
        resolve_model("m", registry=registry_for(tmp_path, server), options=FAST)
    assert info.value.reason == "interrupted"
    # The first attempt got further than ever before, so it does not use up a retry.
    assert len(server.requests_for("/m.pth")) == FAST.retries + 2
    assert_clean_failure(isolated)


def test_404_fails_at_once_and_says_where_to_put_the_file(
        isolated, server, tmp_path, checkpoint_bytes):
    registry = registry_for(tmp_path, server, route_path="/missing.pth")
    with pytest.raises(DownloadFailure) as info:
        resolve_model("m", registry=registry, options=FAST)
    err = info.value
    assert err.reason == "not_found" and err.status == 404
    assert len(server.requests_for("/missing.pth")) == 1  # a 404 is not retried
    message = str(err)
    assert server.url("/missing.pth") in message
    assert str(isolated / "models" / "m" / "m.pth") in message
    assert "--weights" in message
    assert_clean_failure(isolated)


def test_500_is_retried_then_fails_cleanly(isolated, server, tmp_path, checkpoint_bytes):
    server.add("/m.pth", Route(checkpoint_bytes, mode="status", status=500))
    with pytest.raises(DownloadFailure) as info:
        resolve_model("m", registry=registry_for(tmp_path, server), options=FAST)
    assert info.value.reason == "server_error" and info.value.status == 500
    assert len(server.requests_for("/m.pth")) == FAST.retries + 1
    assert "try again later" in str(info.value)
    assert_clean_failure(isolated)


def test_503_then_recovery_gives_a_verified_file(isolated, server, tmp_path, checkpoint_bytes):
    server.add("/m.pth", Route(checkpoint_bytes, mode="status", status=503, times=2))
    path = resolve_model("m", registry=registry_for(tmp_path, server), options=FAST)
    assert path.read_bytes() == checkpoint_bytes
    assert len(server.requests_for("/m.pth")) == 3


def test_a_mirror_is_used_when_the_primary_fails(isolated, server, tmp_path, checkpoint_bytes):
    server.add("/mirror.pth", Route(checkpoint_bytes))
    registry = registry_for(tmp_path, server, route_path="/gone.pth",
                            mirrors=[server.url("/mirror.pth")])
    assert resolve_model("m", registry=registry, options=FAST).read_bytes() == checkpoint_bytes
    assert recorded(isolated, "m").url == server.url("/mirror.pth")


def test_server_too_slow_for_the_read_timeout_fails_cleanly(
        isolated, server, tmp_path, checkpoint_bytes):
    server.add("/m.pth", Route(checkpoint_bytes, mode="slow", delay=5.0))
    start = time.monotonic()
    with pytest.raises(DownloadFailure) as info:
        resolve_model("m", registry=registry_for(tmp_path, server), options=FAST)
    assert info.value.reason == "timeout"
    assert "timeout" in str(info.value).lower() or "too slow" in str(info.value)
    assert time.monotonic() - start < 4 * (FAST.retries + 1) * FAST.read_timeout + 2
    assert_clean_failure(isolated)


def test_stall_in_the_middle_of_the_body_is_resumed(isolated, server, tmp_path, checkpoint_bytes):
    server.add("/m.pth", Route(checkpoint_bytes, mode="stall", delay=5.0, times=1))
    path = resolve_model("m", registry=registry_for(tmp_path, server), options=FAST)
    assert path.read_bytes() == checkpoint_bytes
    assert server.requests_for("/m.pth")[1].range is not None


def test_offline_says_so(isolated, tmp_path):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    registry = write_registry(tmp_path, [model_entry("m", f"http://127.0.0.1:{port}/m.pth")])
    with pytest.raises(DownloadFailure) as info:
        resolve_model("m", registry=registry, options=FAST)
    assert info.value.reason == "offline"
    assert "offline" in str(info.value) and "HTTPS_PROXY" in str(info.value)
    assert_clean_failure(isolated)


@pytest.mark.parametrize("style", ["form", "link", "cookie"])
def test_drive_confirmation_page_is_followed(isolated, server, tmp_path, checkpoint_bytes, style):
    route = server.add("/uc", Route(checkpoint_bytes, mode="drive", drive_style=style))
    registry = registry_for(tmp_path, server, route_path="/uc?export=download&id=FILEID")
    path = resolve_model("m", registry=registry, options=FAST)
    assert path.read_bytes() == checkpoint_bytes
    seen = server.requests_for("/uc")
    assert len(seen) == 2
    assert "confirm" not in seen[0].query
    assert seen[1].query["confirm"] == route.token
    assert seen[1].query["id"] == "FILEID"


def test_drive_quota_page_is_never_saved_as_the_model(isolated, server, tmp_path,
                                                      checkpoint_bytes):
    server.add("/uc", Route(checkpoint_bytes, mode="drive_quota"))
    with pytest.raises(DownloadFailure) as info:
        resolve_model("m", registry=registry_for(tmp_path, server, route_path="/uc"),
                      options=FAST)
    assert info.value.reason == "bad_content"
    assert "browser" in str(info.value)
    assert_clean_failure(isolated)


def test_cancel_leaves_nothing_behind(isolated, server, tmp_path, checkpoint_bytes):
    server.add("/m.pth", Route(checkpoint_bytes))

    def cancel_midway(done, total, message):
        if done > len(checkpoint_bytes) // 3:
            raise CancelledError("user pressed Cancel")

    with pytest.raises(CancelledError, match="cancelled"):
        resolve_model("m", registry=registry_for(tmp_path, server), options=FAST,
                      progress=cancel_midway)
    assert_clean_failure(isolated)


def test_disk_full_while_writing(isolated, server, tmp_path, checkpoint_bytes, monkeypatch):
    server.add("/m.pth", Route(checkpoint_bytes))
    written = []

    def fill_up(stream, chunk):
        if written:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(len(chunk))
        stream.write(chunk)

    monkeypatch.setattr(download_module, "write_chunk", fill_up)
    with pytest.raises(DiskFullError, match="ISEGFORMER_HOME"):
        resolve_model("m", registry=registry_for(tmp_path, server), options=FAST)
    assert len(server.requests_for("/m.pth")) == 1  # a full disk is not retried
    assert_clean_failure(isolated)


def test_disk_without_room_is_refused_before_writing(isolated, server, tmp_path, checkpoint_bytes,
                                                     monkeypatch):
    server.add("/m.pth", Route(checkpoint_bytes))
    almost_full = shutil._ntuple_diskusage(total=10**9, used=10**9 - 1000, free=1000)
    monkeypatch.setattr(download_module.shutil, "disk_usage", lambda path: almost_full)
    with pytest.raises(DiskFullError, match="free"):
        resolve_model("m", registry=registry_for(tmp_path, server), options=FAST)
    assert_clean_failure(isolated)


def test_proxy_environment_variables_are_honoured(isolated, server, tmp_path, checkpoint_bytes,
                                                  monkeypatch):
    # The server doubles as the proxy; the model's host does not exist, so only a request
    # sent through the proxy can succeed.
    server.add("/m.pth", Route(checkpoint_bytes))
    monkeypatch.delenv("NO_PROXY")
    monkeypatch.delenv("no_proxy")
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{server.port}")
    registry = write_registry(tmp_path, [model_entry("m", "http://weights.example.invalid/m.pth")])
    path = resolve_model("m", registry=registry, options=FAST)
    assert path.read_bytes() == checkpoint_bytes
    (seen,) = server.requests_for("/m.pth")
    assert seen.absolute and seen.host == "weights.example.invalid"


def test_stale_partial_file_from_a_killed_process_is_not_trusted(
        isolated, server, tmp_path, checkpoint_bytes):
    server.add("/m.pth", Route(checkpoint_bytes))
    part = isolated / "models" / "m" / "m.pth.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"garbage from an earlier crash")
    path = resolve_model("m", registry=registry_for(tmp_path, server), options=FAST)
    assert path.read_bytes() == checkpoint_bytes
    assert server.requests_for("/m.pth")[0].range is None
    assert leftovers(isolated) == []


def test_not_cached_and_download_disabled(isolated, server, tmp_path):
    with pytest.raises(WeightsError, match="isegformer download m"):
        resolve_model("m", registry=registry_for(tmp_path, server), download=False)
    assert server.seen == []


def test_file_placed_by_hand_is_trusted_on_first_use(isolated, server, tmp_path,
                                                     checkpoint_bytes):
    target = isolated / "models" / "m" / "m.pth"
    target.parent.mkdir(parents=True)
    target.write_bytes(checkpoint_bytes)
    registry = registry_for(tmp_path, server)
    assert resolve_model("m", registry=registry, download=False) == target
    record = recorded(isolated, "m")
    assert record.sha256 == sha(checkpoint_bytes) and record.url == "(placed by hand)"
    # Put there by hand, replaced by hand: the new file is the user's, trusted anew (as a local
    # file with a new modification time is), never deleted.
    target.write_bytes(checkpoint_bytes[:-10] + b"0123456789")
    assert resolve_model("m", registry=registry, download=False) == target
    assert recorded(isolated, "m").sha256 == sha(checkpoint_bytes[:-10] + b"0123456789")


def test_concurrent_downloads_in_threads_fetch_once(isolated, server, tmp_path, checkpoint_bytes):
    route = server.add("/m.pth", Route(checkpoint_bytes, mode="gate"))
    registry = registry_for(tmp_path, server)
    options = DownloadOptions(connect_timeout=2, read_timeout=20, retries=1, backoff=0.01)
    second_waits = threading.Event()
    results: dict[str, object] = {}

    def worker(key, progress=None):
        try:
            results[key] = resolve_model("m", registry=registry, options=options,
                                         progress=progress)
        except Exception as err:  # surfaced by the assertions below
            results[key] = err

    def note_wait(done, total, message):
        if message.startswith("waiting"):
            second_waits.set()

    first = threading.Thread(target=worker, args=("first",))
    first.start()
    _wait_for(lambda: server.requests_for("/m.pth"), "the first download to start")
    second = threading.Thread(target=worker, args=("second", note_wait))
    second.start()
    assert second_waits.wait(20), "the second download did not wait for the first"
    route.gate.set()
    first.join(30)
    second.join(30)
    assert results["first"] == results["second"]
    assert Path(results["first"]).read_bytes() == checkpoint_bytes
    assert len(server.requests_for("/m.pth")) == 1
    assert leftovers(isolated) == []


_CHILD = """
import sys, pathlib
from isegformer.weights import DownloadOptions, resolve_model
marker = pathlib.Path(sys.argv[1])
def progress(done, total, message):
    if message.startswith("waiting"):
        marker.touch()
options = DownloadOptions(connect_timeout=5, read_timeout=30, retries=1, backoff=0.01)
print(resolve_model("m", progress=progress, options=options))
"""


def test_concurrent_downloads_in_processes_fetch_once(isolated, server, tmp_path, monkeypatch,
                                                      checkpoint_bytes):
    route = server.add("/m.pth", Route(checkpoint_bytes, mode="gate"))
    monkeypatch.setenv("ISEGFORMER_REGISTRY", str(registry_for(tmp_path, server)))
    logic = Path(isegformer.__file__).resolve().parents[1]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(logic),
                                                                  os.environ.get("PYTHONPATH")])))
    first_marker, second_marker = tmp_path / "first.waited", tmp_path / "second.waited"

    def spawn(marker):
        return subprocess.Popen([sys.executable, "-c", _CHILD, str(marker)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace")

    first = spawn(first_marker)
    try:
        _wait_for(lambda: server.requests_for("/m.pth"), "the first process to start downloading")
        second = spawn(second_marker)
        try:
            _wait_for(second_marker.exists, "the second process to wait for the lock")
        finally:
            route.gate.set()
            out2, err2 = second.communicate(timeout=60)
    finally:
        route.gate.set()
        out1, err1 = first.communicate(timeout=60)
    assert first.returncode == 0, err1
    assert second.returncode == 0, err2
    assert out1.strip() == out2.strip() == str(isolated / "models" / "m" / "m.pth")
    assert Path(out1.strip()).read_bytes() == checkpoint_bytes
    assert len(server.requests_for("/m.pth")) == 1
    assert not first_marker.exists()
    assert leftovers(isolated) == []


def _wait_for(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_download_errors_are_package_errors():
    assert issubclass(DownloadFailure, DownloadError)
    assert issubclass(DiskFullError, DownloadError)
