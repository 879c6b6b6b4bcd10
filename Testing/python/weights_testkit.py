"""Fixtures and helpers shared by the test_weights_* files (import the fixtures by name)."""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest

from isegformer.weights import DownloadOptions, ModelCache
from weights_http_server import FaultyServer, Route

PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy",
              "NO_PROXY", "no_proxy", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")

# Short timeouts and near-zero backoff keep the fault tests to seconds.
FAST = DownloadOptions(connect_timeout=2.0, read_timeout=0.5, retries=2, backoff=0.01,
                       backoff_max=0.05, chunk_size=64 * 1024)


@pytest.fixture
def isolated(tmp_path, monkeypatch) -> Path:
    """A fresh ISEGFORMER_HOME, and no proxy: requests must talk to 127.0.0.1 directly."""
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    home = tmp_path / "home"
    monkeypatch.setenv("ISEGFORMER_HOME", str(home))
    monkeypatch.delenv("ISEGFORMER_REGISTRY", raising=False)
    return home


@pytest.fixture
def server():
    srv = FaultyServer()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def checkpoint_bytes(request) -> bytes:
    """A real checkpoint: the golden tiny iSegFormer file if present, else one torch.save writes."""
    try:
        golden = request.getfixturevalue("golden_dir")
    except pytest.skip.Exception:
        golden = None
    if golden is not None and (golden / "tiny_isegformer.pth").is_file():
        return (golden / "tiny_isegformer.pth").read_bytes()
    import torch

    torch.manual_seed(0)
    buffer = io.BytesIO()
    torch.save({"state_dict": {"w": torch.randn(256, 256), "b": torch.randn(256)},
                "config": {"note": "test checkpoint"}}, buffer)
    return buffer.getvalue()


def model_entry(name: str, url: str, **extra) -> dict:
    entry = {"name": name, "kind": "click_model", "version": "test", "filename": f"{name}.pth",
             "url": url, "mirrors": [], "size": None, "sha256": None, "license": "test",
             "paper": "test", "citation": "test"}
    entry.update(extra)
    return entry


def write_registry(folder: Path, entries: list[dict]) -> Path:
    path = folder / "registry.json"
    path.write_text(json.dumps({"schema_version": 1, "models": entries}), encoding="utf-8")
    return path


def leftovers(home: Path) -> list[Path]:
    """Anything half-written in the cache: partial downloads or temporary record files."""
    if not home.exists():
        return []
    return sorted(p for p in home.rglob("*")
                  if p.is_file() and (p.name.endswith((".part", ".tmp")) or ".part" in p.name))


def cached_files(home: Path) -> list[Path]:
    models = home / "models"
    return sorted(p for p in models.rglob("*") if p.is_file()) if models.exists() else []


def recorded(home: Path, name: str):
    return ModelCache(home).download_record(name)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def registry_for(tmp_path, server, route_path="/m.pth", **extra) -> Path:
    """A registry with one model "m" served by ``server`` at ``route_path``."""
    return write_registry(tmp_path, [model_entry("m", server.url(route_path), **extra)])


def downloaded(server, tmp_path, data: bytes, **extra) -> tuple[Path, Path]:
    """Model "m" served as ``data`` and downloaded once: (its registry, its cached path)."""
    from isegformer.weights import resolve_model

    server.add("/m.pth", Route(data))
    registry = registry_for(tmp_path, server, **extra)
    return registry, resolve_model("m", registry=registry, options=FAST)
