"""The checkpoint reader/writer: bad files get clear errors, pickled code never runs."""
from __future__ import annotations

import io
import json
import os
import pickle
import sys

import numpy as np
import pytest
import torch

from isegformer.checkpoint import _plain, _RestrictedUnpickler, load_checkpoint, save_checkpoint
from isegformer.click_engine.build import build_isegformer, load_click_model, save_click_model
from isegformer.errors import CheckpointError, InvalidInputError


@pytest.fixture(scope="module")
def tiny_state():
    torch.manual_seed(0)
    return build_isegformer("tiny").state_dict()


class _RunsAShellCommand:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_empty_file(tmp_path):
    path = tmp_path / "model.pth"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint(path)


def test_missing_file_says_how_to_get_it(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist.*isegformer download"):
        load_checkpoint(tmp_path / "nope.pth")


def test_random_bytes(tmp_path):
    path = tmp_path / "model.pth"
    path.write_bytes(np.random.default_rng(1).integers(1, 255, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_checkpoint(path)


def test_html_page_instead_of_weights(tmp_path):
    path = tmp_path / "stcn.pth"
    path.write_text("<!DOCTYPE html><html><body>Google Drive can't scan this file</body></html>")
    with pytest.raises(CheckpointError, match="HTML page"):
        load_checkpoint(path)


@pytest.mark.golden
def test_truncated_official_checkpoint(tmp_path, golden_dir):
    data = (golden_dir / "tiny_isegformer.pth").read_bytes()
    for cut in (len(data) // 2, len(data) - 100):
        path = tmp_path / "tiny.pth"
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="truncated"):
            load_checkpoint(path)


def test_truncated_legacy_pickle(tmp_path, tiny_state):
    path = tmp_path / "legacy.pth"
    torch.save(tiny_state, path, _use_new_zipfile_serialization=False)
    assert load_checkpoint(path)["layout"] == "state_dict"  # the legacy format itself reads
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="truncated, damaged"):
        load_checkpoint(path)


@pytest.mark.parametrize("container", ["zip", "raw pickle"])
def test_pickled_code_is_refused_not_run(tmp_path, container):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    if container == "zip":
        torch.save({"state_dict": {"w": torch.zeros(2)}, "config": _RunsAShellCommand(marker)},
                   path)
    else:
        path.write_bytes(pickle.dumps({"config": _RunsAShellCommand(marker)}, protocol=2))
    with pytest.raises(CheckpointError, match=r"refused without running it.*system"):
        load_checkpoint(path)
    assert not marker.exists()


def test_tensors_pickled_outside_torch_save_are_refused(tmp_path):
    # pickle.dumps(tensor) goes through torch.storage._load_from_bytes, an unrestricted load.
    path = tmp_path / "raw.pth"
    path.write_bytes(pickle.dumps({"w": torch.zeros(2)}, protocol=2))
    with pytest.raises(CheckpointError, match="_load_from_bytes"):
        load_checkpoint(path)


def _pickle_with_fake_isegm() -> bytes:
    """A protocol-2 pickle like the reference's config: an isegm object (NEWOBJ + BUILD) holding
    an isegm function, and an isegm function called at load time (REDUCE)."""
    import types

    names = ["isegm", "isegm.model", "isegm.model.losses"]
    for name in names:
        sys.modules[name] = types.ModuleType(name)
    try:
        module = sys.modules["isegm.model.losses"]

        def cross_entropy():  # would run at load time if the unpickler called isegm code
            raise AssertionError("isegm code ran")

        cross_entropy.__module__ = "isegm.model.losses"
        cross_entropy.__qualname__ = "cross_entropy"
        loss_cls = type("CrossEntropyLoss", (), {"__module__": "isegm.model.losses"})
        module.cross_entropy, module.CrossEntropyLoss = cross_entropy, loss_cls
        loss = loss_cls()
        loss.cls_criterion = cross_entropy
        call = type("Call", (), {"__reduce__": lambda self: (cross_entropy, ())})()
        return pickle.dumps({"loss": loss, "made": call, "w": []}, protocol=2)
    finally:
        for name in names:
            del sys.modules[name]


def test_reference_config_objects_become_inert_placeholders():
    data = _pickle_with_fake_isegm()
    # The unpickler torch.load is given (the official tiny checkpoint covers the zip route).
    obj = _RestrictedUnpickler(io.BytesIO(data)).load()
    loss = obj["loss"]
    assert _plain(loss.state) == {
        "cls_criterion": {"placeholder": "isegm.model.losses.cross_entropy"}}
    assert _plain(obj) == {
        "loss": {"placeholder": "isegm.model.losses.CrossEntropyLoss"},
        "made": {"placeholder": "isegm.model.losses.cross_entropy"},
        "w": [],
    }
    assert "isegm" not in sys.modules


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "x.pth"
    torch.save({"epoch": 3, "notes": "hello"}, path)
    with pytest.raises(CheckpointError, match="no model weights.*epoch"):
        load_checkpoint(path)


def test_save_round_trip_is_the_official_layout(tmp_path, tiny_state):
    path = tmp_path / "sub" / "finetuned.pth"
    config = {"class": "x", "params": {"depths": [2, 2], "radius": 5.0, "t": (1, 2)}}
    assert save_checkpoint(path, tiny_state, config) == path
    raw = torch.load(path, map_location="cpu", weights_only=True)  # plain data only
    assert set(raw) == {"state_dict", "config"}
    loaded = load_checkpoint(path)
    assert loaded["layout"] == "official" and loaded["config"] == config
    assert loaded["state_dict"].keys() == tiny_state.keys()
    assert all(torch.equal(loaded["state_dict"][k], v) for k, v in tiny_state.items())
    assert [p.name for p in path.parent.iterdir()] == ["finetuned.pth"]  # no temp files left

    # Overwriting replaces the file as a whole.
    save_checkpoint(path, {"only": torch.zeros(1)})
    assert list(load_checkpoint(path)["state_dict"]) == ["only"]


def test_save_refuses_objects_in_the_config(tmp_path, tiny_state):
    with pytest.raises(InvalidInputError, match="config"):
        save_checkpoint(tmp_path / "a.pth", tiny_state, {"loss": torch.nn.MSELoss()})
    with pytest.raises(InvalidInputError):
        save_checkpoint(tmp_path / "b.pth", {})
    assert not list(tmp_path.iterdir())


def test_saved_click_model_loads_back_identically(tmp_path):
    torch.manual_seed(3)
    model = build_isegformer("tiny")
    path = save_click_model(model, tmp_path / "m.pth")
    again = load_click_model(path, device="cpu")
    assert again.config == model.config and again.variant == "tiny"
    image = torch.rand(1, 3, 45, 61)
    prev = torch.zeros(1, 1, 45, 61)
    points = torch.tensor([[[10.5, 20.0, 0], [-1, -1, -1]]])
    with torch.no_grad():
        assert torch.equal(model(image, prev, points), again(image, prev, points))


def test_module_prefix_and_model_key_variants(tmp_path, tiny_state):
    path = tmp_path / "dp.pth"
    torch.save({"model": {f"module.{k}": v for k, v in tiny_state.items()}}, path)
    loaded = load_checkpoint(path)
    assert loaded["layout"] == "model" and loaded["state_dict"].keys() == tiny_state.keys()


# ---- the click-model loader on weights of the wrong model -------------------------------------

def test_stcn_weights_are_named_as_such():
    stcn_like = {"key_encoder.conv1.weight": torch.zeros(64, 3, 7, 7),
                 "value_encoder.conv1.weight": torch.zeros(64, 5, 7, 7),
                 "decoder.pred.weight": torch.zeros(1, 256, 3, 3)}
    with pytest.raises(CheckpointError, match=r"not an iSegFormer.*STCN.*key_encoder"):
        load_click_model(stcn_like, device="cpu")


@pytest.mark.golden
def test_stcn_manifest_given_to_the_click_loader(golden_dir):
    manifest = json.loads((golden_dir / "manifest_stcn.json").read_text())
    fake = {key: torch.zeros(1) for key, _, _ in manifest}
    with pytest.raises(CheckpointError, match="not an iSegFormer.*STCN"):
        load_click_model(fake, device="cpu")


def test_missing_unexpected_and_misshaped_keys_are_named(tiny_state):
    bad = dict(tiny_state)
    del bad["head.conv_seg.bias"]
    bad["head.extra.weight"] = torch.zeros(3)
    bad["backbone.norm2.weight"] = torch.zeros(7)
    with pytest.raises(CheckpointError) as info:
        load_click_model(bad, device="cpu")
    message = str(info.value)
    assert "missing: head.conv_seg.bias" in message
    assert "unexpected: head.extra.weight" in message
    assert "mis-shaped: backbone.norm2.weight (7,) (expected (128,))" in message


def test_wrong_relative_position_index_is_refused(tiny_state):
    bad = dict(tiny_state)
    bad["backbone.layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(144, 144,
                                                                                 dtype=torch.long)
    with pytest.raises(CheckpointError, match="relative position"):
        load_click_model(bad, device="cpu")


@pytest.mark.golden
def test_reference_config_with_other_click_encoding_is_refused(golden_dir):
    checkpoint = load_checkpoint(golden_dir / "tiny_isegformer.pth")
    checkpoint["config"]["params"]["use_disks"]["value"] = False
    with pytest.raises(CheckpointError, match="use_disks=False"):
        load_click_model(checkpoint, device="cpu")


@pytest.mark.golden
def test_reference_checkpoint_of_another_model_class_is_named(golden_dir):
    checkpoint = load_checkpoint(golden_dir / "tiny_isegformer.pth")
    checkpoint["config"]["class"] = "isegm.model.is_hrnet_model.HRNetModel"
    with pytest.raises(CheckpointError, match="HRNetModel, not an iSegFormer"):
        load_click_model(checkpoint, device="cpu")
