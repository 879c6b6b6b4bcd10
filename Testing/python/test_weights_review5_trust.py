"""What the weights cache trusts, what it removes, and what it advises (review R5a, items 1-3, 5,
6, 8, 9), against a real HTTP server on 127.0.0.1.

- ``download --force`` keeps the cached file and its record until the new file is verified;
- nothing is trusted on first use before its container is whole (no web page, no cut zip);
- the cache never deletes a non-empty file it rejects: it moves it aside, and a file put there
  by hand and replaced by hand is the user's new file;
- each refusal's advice fits its cause;
- a registry name of the wrong kind is refused before anything is downloaded.
"""
from __future__ import annotations

import pytest

from isegformer.errors import ChecksumMismatchError, DownloadError, WeightsError
from isegformer.weights import download_model, resolve_model
from weights_http_server import Route
from weights_testkit import (  # noqa: F401 (fixtures)
    FAST,
    checkpoint_bytes,
    downloaded,
    isolated,
    leftovers,
    model_entry,
    recorded,
    registry_for,
    server,
    sha,
    write_registry,
)


def _other_checkpoint() -> bytes:
    import io

    import torch

    buffer = io.BytesIO()
    torch.save({"state_dict": {"w": torch.full((4, 4), 7.0)}}, buffer)
    return buffer.getvalue()


# --- item 1: --force never destroys the good file first -----------------------------------------

def test_force_keeps_the_cached_file_and_its_record_when_the_new_download_fails(
        isolated, server, tmp_path, checkpoint_bytes):
    registry, path = downloaded(server, tmp_path, checkpoint_bytes)
    before = recorded(isolated, "m")
    server.add("/m.pth", Route(b"gone", mode="status", status=404))
    with pytest.raises(DownloadError, match="kept as it was"):
        download_model("m", registry=registry, force=True, options=FAST)
    assert path.read_bytes() == checkpoint_bytes
    assert recorded(isolated, "m") == before
    assert resolve_model("m", registry=registry, download=False) == path  # still usable
    assert leftovers(isolated) == []


def test_force_takes_a_file_replaced_upstream_and_records_its_hash(
        isolated, server, tmp_path, checkpoint_bytes):
    registry, path = downloaded(server, tmp_path, checkpoint_bytes)
    new = _other_checkpoint()
    server.add("/m.pth", Route(new))
    assert download_model("m", registry=registry, options=FAST) == path  # verified: no request
    assert path.read_bytes() == checkpoint_bytes
    assert download_model("m", registry=registry, force=True, options=FAST) == path
    assert path.read_bytes() == new and recorded(isolated, "m").sha256 == sha(new)
    assert leftovers(isolated) == []


# --- item 2: nothing is trusted before its container is whole ------------------------------------

@pytest.mark.parametrize("body_of", [
    lambda data: data[: len(data) // 2],  # a download cut short, sent as if complete
    lambda data: b"<!DOCTYPE html><html><body>Sign in to continue</body></html>",
])
def test_a_body_that_is_not_the_checkpoint_is_never_recorded_or_kept(
        isolated, server, tmp_path, checkpoint_bytes, body_of):
    server.add("/m.pth", Route(body_of(checkpoint_bytes), content_type="application/octet-stream"))
    registry = registry_for(tmp_path, server)
    with pytest.raises(ChecksumMismatchError, match="something other than the file") as caught:
        resolve_model("m", registry=registry, options=FAST)
    assert "incomplete" in str(caught.value) or "web page" in str(caught.value)
    assert recorded(isolated, "m") is None
    assert not (isolated / "models" / "m" / "m.pth").exists() and leftovers(isolated) == []
    # Once the server sends the real file, the advised command works.
    server.add("/m.pth", Route(checkpoint_bytes))
    assert resolve_model("m", registry=registry, options=FAST).read_bytes() == checkpoint_bytes


def test_a_truncated_copy_put_in_the_cache_by_hand_is_refused_left_in_place_then_replaced(
        isolated, server, tmp_path, checkpoint_bytes):
    target = isolated / "models" / "m" / "m.pth"
    target.parent.mkdir(parents=True)
    target.write_bytes(checkpoint_bytes[: len(checkpoint_bytes) // 2])  # an interrupted copy
    registry = registry_for(tmp_path, server)
    with pytest.raises(WeightsError, match="by hand, but .*incomplete.*left where it is"):
        resolve_model("m", registry=registry, download=False)
    assert target.read_bytes() == checkpoint_bytes[: len(checkpoint_bytes) // 2]
    assert recorded(isolated, "m") is None
    target.write_bytes(checkpoint_bytes)  # the user copies the complete file in its place
    assert resolve_model("m", registry=registry, download=False) == target
    assert target.read_bytes() == checkpoint_bytes
    assert recorded(isolated, "m").sha256 == sha(checkpoint_bytes)


# --- item 3: a rejected file is moved aside, never deleted ---------------------------------------

def test_a_hand_placed_file_that_fails_the_registry_hash_is_moved_aside(
        isolated, server, tmp_path, checkpoint_bytes):
    target = isolated / "models" / "m" / "m.pth"
    target.parent.mkdir(parents=True)
    target.write_bytes(checkpoint_bytes)
    registry = registry_for(tmp_path, server, sha256="0" * 64)
    with pytest.raises(ChecksumMismatchError, match="moved to") as caught:
        resolve_model("m", registry=registry, download=False)
    assert "the registry's is " + "0" * 64 in str(caught.value)
    aside = list(target.parent.glob("m.pth.rejected-*"))
    assert not target.exists() and len(aside) == 1 and aside[0].read_bytes() == checkpoint_bytes


# --- item 5: advice that fits the cause -----------------------------------------------------------

def test_a_registry_that_disagrees_with_the_server_is_blamed_not_the_user(
        isolated, server, tmp_path, checkpoint_bytes):
    server.add("/m.pth", Route(checkpoint_bytes))
    for extra in ({"sha256": "a" * 64}, {"size": len(checkpoint_bytes) + 5}):
        registry = registry_for(tmp_path, server, **extra)
        with pytest.raises(ChecksumMismatchError) as caught:
            resolve_model("m", registry=registry, options=FAST)
        message = str(caught.value)
        assert "registry (or the server's file) is wrong or out of date" in message
        assert "--force" not in message and "put it at" not in message
        assert leftovers(isolated) == []


def test_a_file_changed_upstream_is_offered_force(isolated, server, tmp_path, checkpoint_bytes):
    registry, cached = downloaded(server, tmp_path, checkpoint_bytes)
    cached.unlink()
    server.add("/m.pth", Route(_other_checkpoint()))
    with pytest.raises(ChecksumMismatchError, match=r"download m --force` to take the new file"):
        resolve_model("m", registry=registry, options=FAST)


# --- item 9: the kind of a name is checked before anything is downloaded --------------------------

def test_a_name_of_another_kind_is_refused_before_any_request(isolated, server, tmp_path,
                                                              checkpoint_bytes):
    server.add("/d.zip", Route(b"PK\x05\x06" + b"\0" * 18))
    server.add("/c.pth", Route(checkpoint_bytes))
    registry = write_registry(tmp_path, [
        model_entry("data", server.url("/d.zip"), kind="dataset", filename="d.zip"),
        model_entry("clicker", server.url("/c.pth")),
    ])
    with pytest.raises(WeightsError, match="data is a dataset entry.*not a click model.*Use clicker"):
        resolve_model("data", registry=registry, kind="click_model", options=FAST)
    assert server.requests_for("/d.zip") == []
    assert resolve_model("clicker", registry=registry, kind="click_model", options=FAST).is_file()


def test_session_refuses_a_dataset_as_click_model_before_downloading(
        isolated, server, tmp_path, monkeypatch):
    import numpy as np

    from isegformer.session import Session

    server.add("/d.zip", Route(b"PK\x05\x06" + b"\0" * 18))
    registry = write_registry(tmp_path, [
        model_entry("data", server.url("/d.zip"), kind="dataset", filename="d.zip")])
    monkeypatch.setenv("ISEGFORMER_REGISTRY", str(registry))
    session = Session.open((np.zeros((3, 16, 16), np.float32), np.eye(4)), click_model="data",
                           device="cpu")
    session.add_segment("s")
    with pytest.raises(WeightsError, match="not a click model"):
        session.click_slice(0, 1, 8.0, 8.0)
    assert server.requests_for("/d.zip") == []
    assert not session.segment("s").has_annotations


# --- review R6: the fixes above, attacked ---------------------------------------------------------

def _place_by_hand(isolated, data: bytes):
    target = isolated / "models" / "m" / "m.pth"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return target


def test_a_hand_placed_file_changed_in_place_is_corruption_not_a_new_file(
        isolated, server, tmp_path, checkpoint_bytes):
    import os

    target = _place_by_hand(isolated, checkpoint_bytes)
    registry = registry_for(tmp_path, server)
    resolve_model("m", registry=registry, download=False)  # trusted on first use
    stat = target.stat()
    damaged = bytearray(checkpoint_bytes)
    damaged[len(damaged) // 2] ^= 0xFF  # a bit flip in place: same size, same time
    target.write_bytes(bytes(damaged))
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(ChecksumMismatchError, match="changed without its size or modification time"):
        resolve_model("m", registry=registry, download=False)
    assert not target.exists()
    [aside] = target.parent.glob("m.pth.rejected-*")
    assert aside.read_bytes() == bytes(damaged)


def test_two_files_set_aside_in_one_second_both_survive(isolated, server, tmp_path, checkpoint_bytes):
    registry = registry_for(tmp_path, server, sha256="0" * 64)
    copies = []
    for marker in (b"first", b"second"):
        target = _place_by_hand(isolated, checkpoint_bytes + marker)
        copies.append(target.read_bytes())
        with pytest.raises(ChecksumMismatchError, match="moved to"):
            resolve_model("m", registry=registry, download=False)
    kept = sorted(p.read_bytes() for p in target.parent.glob("m.pth.rejected-*"))
    assert kept == sorted(copies)


def test_a_damaged_download_is_fetched_again_and_must_match_its_first_hash(
        isolated, server, tmp_path, checkpoint_bytes):
    registry, path = downloaded(server, tmp_path, checkpoint_bytes)
    first = recorded(isolated, "m")
    path.write_bytes(checkpoint_bytes[:-1] + b"!")  # damaged on disk
    # `isegformer download m`, as the advice says: the bad file goes aside and is fetched again
    assert download_model("m", registry=registry, options=FAST) == path
    assert path.read_bytes() == checkpoint_bytes and recorded(isolated, "m").sha256 == first.sha256
    assert len(list(path.parent.glob("m.pth.rejected-*"))) == 1
    # The recorded hash survived the set-aside: another upstream file needs --force.
    path.write_bytes(checkpoint_bytes[:-1] + b"?")
    server.add("/m.pth", Route(_other_checkpoint()))
    with pytest.raises(ChecksumMismatchError, match="--force"):
        download_model("m", registry=registry, options=FAST)


def test_a_checkpoint_path_needs_no_readable_registry(tmp_path, monkeypatch):
    from isegformer.weights.resolve import is_weights_path

    broken = tmp_path / "broken.json"
    broken.write_text("{ not json")
    monkeypatch.setenv("ISEGFORMER_REGISTRY", str(broken))
    assert is_weights_path(str(tmp_path / "my.pth")) and is_weights_path("weights.pkl")
    assert not is_weights_path("some_name")


def test_a_hand_placed_file_the_registry_now_sizes_otherwise_is_blamed_on_the_size(
        isolated, server, tmp_path, checkpoint_bytes):
    target = _place_by_hand(isolated, checkpoint_bytes)
    resolve_model("m", registry=registry_for(tmp_path, server), download=False)  # trusted
    resized = registry_for(tmp_path, server, size=len(checkpoint_bytes) + 1)
    with pytest.raises(ChecksumMismatchError) as caught:
        resolve_model("m", registry=resized, download=False)
    assert "without its size or modification time changing" not in str(caught.value)
    assert "registry expects" in str(caught.value)
    assert len(list(target.parent.glob("m.pth.rejected-*"))) == 1
