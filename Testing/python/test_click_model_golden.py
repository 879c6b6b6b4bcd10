"""iSegFormer against the reference: forward pass (forward.npz) and the official key layouts."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from isegformer.click_engine.build import (
    UNUSED_PREFIXES,
    build_isegformer,
    detect_config,
    load_click_model,
)
from isegformer.click_engine.disks import click_disks
from isegformer.click_engine.swin import relative_position_index

pytestmark = pytest.mark.golden


@pytest.fixture(scope="module")
def tiny_model(golden_dir):
    # The official-format file (pickled isegm config, cuda:0 storages) through the one loader.
    return load_click_model(golden_dir / "tiny_isegformer.pth", device="cpu")


@pytest.fixture(scope="module")
def forward_cases(golden_dir):
    return np.load(golden_dir / "forward.npz")


def test_forward_matches_reference(tiny_model, forward_cases):
    z = forward_cases
    assert int(z["num_cases"]) >= 1
    for k in range(int(z["num_cases"])):
        image = torch.from_numpy(z[f"case{k}_image"])
        prev = torch.from_numpy(z[f"case{k}_prev_mask"])
        points = torch.from_numpy(z[f"case{k}_points"])
        with torch.no_grad():
            out = tiny_model.forward_intermediates(image, prev, points)
            logits = tiny_model(image, prev, points) if k == 0 else out["logits"]

        assert logits.dtype == torch.float32 and logits.shape == image[:, :1].shape
        assert torch.equal(logits, out["logits"])
        np.testing.assert_array_equal(
            out["disks"].numpy().astype(np.uint8), z[f"case{k}_disks"], err_msg=f"case{k} disks"
        )
        np.testing.assert_allclose(out["head_logits_quarter"].numpy(),
                                   z[f"case{k}_head_logits_quarter"], rtol=0, atol=1e-4,
                                   err_msg=f"case{k} head_logits_quarter")
        np.testing.assert_allclose(logits.numpy(), z[f"case{k}_logits"], rtol=0, atol=1e-4,
                                   err_msg=f"case{k} logits")
        for j, feature in enumerate(out["features"]):
            np.testing.assert_allclose(feature.numpy(), z[f"case{k}_feat{j}"].astype(np.float32),
                                       rtol=0, atol=1.5e-3, err_msg=f"case{k} feat{j}")


def test_disks_accept_float64_and_int_clicks_like_the_reference(forward_cases):
    # After zoom-in the reference feeds float64 clicks, before it int64; the disk must match the
    # float32 path wherever the coordinates are representable in both.
    points = torch.from_numpy(forward_cases["case0_points"])
    h, w = forward_cases["case0_image"].shape[2:]
    expected = torch.from_numpy(forward_cases["case0_disks"]).float()
    assert torch.equal(click_disks(points.double(), h, w), expected)
    integer = points.floor()
    assert torch.equal(click_disks(integer.long(), h, w), click_disks(integer, h, w))


def test_plain_state_dict_and_official_file_give_the_same_model(golden_dir, tiny_model):
    plain = load_click_model(golden_dir / "tiny_isegformer_state_dict.pth", device="cpu")
    assert tiny_model.variant == plain.variant == "tiny"
    a, b = tiny_model.state_dict(), plain.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(t.device.type == "cpu" for t in a.values())


def _manifest_state_dict(golden_dir, weights_formula, name):
    manifest = json.loads((golden_dir / f"manifest_isegformer_{name}.json").read_text())
    arrays = weights_formula.fill(manifest)
    state = {k: torch.from_numpy(v) for k, v in arrays.items()}
    for key, shape, dtype in manifest:
        if key.endswith("relative_position_index"):
            state[key] = relative_position_index(int(np.sqrt(shape[0])))
    return manifest, state


@pytest.mark.parametrize("name", ["swin_base", "swin_large"])
def test_official_layouts_load_with_every_key_accounted_for(golden_dir, weights_formula, name,
                                                           caplog):
    manifest, state = _manifest_state_dict(golden_dir, weights_formula, name)
    assert set(state) == {k for k, _, _ in manifest}, "every manifest entry has a tensor"
    assert detect_config(state).name == name

    with caplog.at_level(logging.INFO, logger="isegformer.click_engine.build"):
        model = load_click_model(state, device="cpu")
    assert model.variant == name
    ours = model.state_dict()
    dropped = {k for k in state if k.startswith(UNUSED_PREFIXES)
               or k.endswith("relative_position_index")}
    assert set(ours) | dropped == set(state)
    assert not set(ours) & dropped
    assert all(torch.equal(ours[k], state[k]) for k in ours)
    assert "patch_embed_coords" in caplog.text and "maps_transform" in caplog.text
    del model, ours, state


def test_tiny_manifest_matches_the_tiny_checkpoint(golden_dir, tiny_model):
    manifest = json.loads((golden_dir / "manifest_tiny_isegformer.json").read_text())
    manifest_keys = {k for k, _, _ in manifest}
    ours = tiny_model.state_dict()
    assert set(ours) <= manifest_keys
    for key, shape, _ in manifest:
        if key in ours:
            assert list(ours[key].shape) == shape, key
