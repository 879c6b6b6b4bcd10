"""The cache folder, its record, its locks, and local files given by path (trust on first use)."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import isegformer
from isegformer.errors import CancelledError, ChecksumMismatchError, WeightsError
from isegformer.weights import ModelCache, cache_home, model_status, resolve_model
from isegformer.weights.cache import FileLock, LockTimeoutError
from isegformer.weights.registry import load_registry
from weights_testkit import (  # noqa: F401 (fixtures)
    checkpoint_bytes,
    isolated,
    model_entry,
    write_registry,
)


def test_home_comes_from_the_environment_or_the_platform(monkeypatch, tmp_path):
    monkeypatch.setenv("ISEGFORMER_HOME", str(tmp_path / "h"))
    assert cache_home() == tmp_path / "h"
    monkeypatch.delenv("ISEGFORMER_HOME")
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_home() == tmp_path / "xdg" / "isegformer"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_home() == Path.home() / ".cache" / "isegformer"
    monkeypatch.setattr(sys, "platform", "darwin")
    assert cache_home() == Path.home() / "Library" / "Caches" / "isegformer"
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "local"))
    assert cache_home() == tmp_path / "local" / "isegformer"


def test_lock_excludes_other_threads(tmp_path):
    lock_path = tmp_path / "x.lock"
    inside = []
    overlaps = []

    def worker():
        with FileLock(lock_path, poll=0.005):
            inside.append(1)
            if len(inside) > 1:
                overlaps.append(1)
            time.sleep(0.02)
            inside.pop()

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlaps == []


_HOLDER = """
import sys, time
from isegformer.weights.cache import FileLock
lock = FileLock(sys.argv[1]); lock.acquire()
print("held", flush=True)
time.sleep(60)
"""


def _hold_in_child(lock_path: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(Path(isegformer.__file__).resolve().parents[1]))
    child = subprocess.Popen([sys.executable, "-c", _HOLDER, str(lock_path)],
                             stdout=subprocess.PIPE, text=True, encoding="utf-8", errors="replace", env=env)
    assert child.stdout.readline().strip() == "held"
    return child


@pytest.mark.skipif(sys.platform == "win32", reason="uses SIGKILL")
def test_lock_held_by_another_process_and_released_when_it_dies(tmp_path):
    lock_path = tmp_path / "m.lock"
    child = _hold_in_child(lock_path)
    try:
        with pytest.raises(LockTimeoutError, match="another process"):
            FileLock(lock_path, timeout=0.2).acquire()
        waits = []

        def cancel_on_second_wait():
            waits.append(1)
            if len(waits) == 2:
                raise CancelledError("stop waiting")

        with pytest.raises(CancelledError):
            FileLock(lock_path, on_wait=cancel_on_second_wait).acquire()
    finally:
        child.send_signal(signal.SIGKILL)  # a crashed downloader: no clean-up runs
        child.wait()
    with FileLock(lock_path, timeout=5):  # the stale lock file does not block us
        pass


def test_corrupt_record_is_set_aside(tmp_path, caplog):
    cache = ModelCache(tmp_path)
    cache.record_path.write_text("{ not json")
    assert cache.download_record("m") is None
    assert list(tmp_path.glob("cache.json.corrupt-*"))
    assert "unreadable" in caplog.text


# -- local files given by path -----------------------------------------------------------------

def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_local_file_is_recorded_on_first_use_and_checked_later(isolated, tmp_path,
                                                               checkpoint_bytes):
    registry = write_registry(tmp_path, [model_entry("m", "http://127.0.0.1:9/m.pth")])
    weights = _write(tmp_path / "finetuned.pth", checkpoint_bytes)
    assert resolve_model(str(weights), registry=registry) == weights
    record = ModelCache(isolated).local_record(weights)
    assert record.sha256 == hashlib.sha256(checkpoint_bytes).hexdigest()
    assert resolve_model(weights, registry=registry) == weights  # os.PathLike works too

    # Same size and timestamp, other bytes: bit rot or tampering.
    stat = weights.stat()
    damaged = bytearray(checkpoint_bytes)
    damaged[100] ^= 0x01
    weights.write_bytes(bytes(damaged))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(ChecksumMismatchError, match="not loaded"):
        resolve_model(weights, registry=registry)
    assert weights.exists()  # the user's own file is never deleted

    # A deliberate change (new modification time) is a new file, trusted anew.
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert resolve_model(weights, registry=registry) == weights
    assert ModelCache(isolated).local_record(weights).sha256 == \
        hashlib.sha256(bytes(damaged)).hexdigest()


def test_local_file_must_match_a_known_registry_hash_when_named(isolated, tmp_path,
                                                                checkpoint_bytes):
    good_sha = hashlib.sha256(checkpoint_bytes).hexdigest()
    registry = write_registry(tmp_path, [model_entry("m", "http://127.0.0.1:9/m.pth",
                                                     sha256=good_sha)])
    good = _write(tmp_path / "good.pth", checkpoint_bytes)
    bad = _write(tmp_path / "bad.pth", checkpoint_bytes + b"!")
    assert resolve_model(good, model="m", registry=registry) == good
    with pytest.raises(ChecksumMismatchError, match="not the official m file"):
        resolve_model(bad, model="m", registry=registry)
    assert bad.exists()


def test_missing_local_file_is_a_clear_error(isolated, tmp_path):
    registry = write_registry(tmp_path, [model_entry("m", "http://127.0.0.1:9/m.pth")])
    with pytest.raises(WeightsError, match="no file at"):
        resolve_model(str(tmp_path / "nothere.pth"), registry=registry)


def test_status_reports_cached_and_verified(isolated, tmp_path, checkpoint_bytes):
    registry_path = write_registry(tmp_path, [model_entry("m", "http://127.0.0.1:9/m.pth")])
    (entry,) = list(load_registry(registry_path))
    status = model_status(entry)
    assert not status.cached and status.verified == ""
    target = isolated / "models" / "m" / "m.pth"
    target.parent.mkdir(parents=True)
    target.write_bytes(checkpoint_bytes)
    assert model_status(entry).verified == "pending"  # placed by hand, not yet used
    resolve_model("m", registry=registry_path, download=False)
    status = model_status(entry)
    assert status.cached and status.verified == "first-use" and status.size == len(
        checkpoint_bytes)
    target.write_bytes(checkpoint_bytes[:-1] + bytes([checkpoint_bytes[-1] ^ 0xFF]))
    assert model_status(entry).verified == "mismatch"
    assert target.exists()  # listing never deletes
