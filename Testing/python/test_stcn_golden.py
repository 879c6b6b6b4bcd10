"""STCN / MiVOS propagation against the reference's own outputs (golden README section 3).

Weights come from the golden folder's documented formula and manifests, loaded strictly.
Tolerances are the README's: float32 units within 1e-4 + 1e-5*|ref|, fp16 probabilities
within 1.5e-3, argmax masks exact outside the flagged near-ties.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from isegformer.propagation.stcn import STCNPropagator, load_fusion, load_stcn
from isegformer.propagation.stcn.network import read_memory, soft_aggregate
from isegformer.propagation.stcn.preprocess import (
    normalize_frames, pad_to_multiple, padding_for, unpad, volume_to_frames,
)



def _formula_weights(weights_formula, golden_dir, manifest_name):
    manifest = json.loads((golden_dir / manifest_name).read_text())
    return manifest, {k: torch.from_numpy(v) for k, v in weights_formula.fill(manifest).items()}


pytestmark = [pytest.mark.golden, pytest.mark.usefixtures("one_torch_thread")]

@pytest.fixture(scope="module")
def stcn(weights_formula, golden_dir):
    _, state = _formula_weights(weights_formula, golden_dir, "manifest_stcn.json")
    return load_stcn(state)


@pytest.fixture(scope="module")
def fusion(weights_formula, golden_dir):
    _, state = _formula_weights(weights_formula, golden_dir, "manifest_fusion.json")
    return load_fusion(state)


@pytest.fixture(scope="module")
def units(golden_dir):
    return dict(np.load(golden_dir / "units.npz"))


@pytest.fixture(scope="module")
def propagate(golden_dir):
    return dict(np.load(golden_dir / "propagate.npz"))


def _close(name, actual, reference):
    actual = actual.detach().cpu().numpy() if isinstance(actual, torch.Tensor) else actual
    assert actual.shape == reference.shape, name
    excess = np.abs(actual - reference) - (1e-4 + 1e-5 * np.abs(reference))
    assert excess.max() <= 0, f"{name}: max |diff| {np.abs(actual - reference).max():.3g}"


@pytest.mark.parametrize("manifest_name, network_factory", [
    ("manifest_stcn.json", "STCNNetwork"), ("manifest_fusion.json", "FusionNet")])
def test_state_dict_layout_is_the_checkpoints(golden_dir, manifest_name, network_factory):
    import isegformer.propagation.stcn as stcn_package

    manifest = json.loads((golden_dir / manifest_name).read_text())
    state = getattr(stcn_package, network_factory)().state_dict()
    assert [k for k, _, _ in manifest] == list(state)
    assert all(list(state[k].shape) == shape for k, shape, _ in manifest)


def test_units(stcn, fusion, units):
    u = {k: torch.from_numpy(v) for k, v in units.items()}
    frames = normalize_frames(units["frames_u8"])
    _close("frames_norm", frames, units["frames_norm"])
    with torch.inference_mode():
        keys = stcn.encode_key(frames)
        q = slice(2, 3)
        _close("key_k16", keys.k16[q], units["key_k16"])
        _close("key_f16_thin", keys.f16_thin[q], units["key_f16_thin"])
        _close("key_f16", keys.f16[q], units["key_f16"])
        _close("key_f8", keys.f8[q], units["key_f8"])
        _close("key_f4", keys.f4[q], units["key_f4"])

        masks, masks2 = u["masks"], u["masks_obj2"]
        _close("value_1obj", stcn.encode_value(frames[q], keys.f16[q], masks[2][None, None]),
               units["value_1obj"])
        two = torch.stack([masks[2], masks2[2]])[:, None]
        _close("value_2obj_masks", two, units["value_2obj_masks"])
        _close("value_2obj", stcn.encode_value(frames[q], keys.f16[q], two), units["value_2obj"])

        mem_keys = keys.k16[0:2].permute(1, 0, 2, 3)  # (64, T=2, h, w)
        _close("mem_keys", mem_keys[None], units["mem_keys"])
        mem_values = torch.cat(
            [stcn.encode_value(frames[i:i + 1], keys.f16[i:i + 1], masks[i][None, None]) for i in range(2)], 2)
        _close("mem_values", mem_values, units["mem_values"])

        h, w = keys.k16.shape[-2:]
        affinity = stcn.memory_affinity(mem_keys.reshape(64, -1), keys.k16[2].reshape(64, -1))
        _close("readout_affinity", affinity.dense(2 * h * w)[None], units["readout_affinity"])
        readout = read_memory(affinity, mem_values.reshape(1, 512, -1)).reshape(1, 512, h, w)
        _close("readout", readout, units["readout"])
        x16 = torch.cat([readout, keys.f16_thin[q]], 1)
        _close("decoder_logits", stcn.decoder(x16, keys.f8[q], keys.f4[q]), units["decoder_logits"])
        skip8, skip4 = stcn.decoder.project_skips(keys.f8[q], keys.f4[q])
        prob = stcn.segment(mem_keys.reshape(64, -1), mem_values.reshape(1, 512, -1), keys.k16[q],
                            keys.f16_thin[q], skip8, skip4)
        _close("decoder_prob", prob, units["decoder_prob"])
        _close("aggregate_wbg", soft_aggregate(prob), units["aggregate_wbg"])

        attention = stcn.attention(keys.k16[0:1], u["fusion_pos_diff"], u["fusion_neg_diff"], keys.k16[q])
        _close("fusion_attn", attention, units["fusion_attn"])
        logits = fusion(frames[q], u["fusion_prev"], u["fusion_curr"], u["fusion_attn"][1:2], u["fusion_dist"])
        _close("fusion_logits", logits, units["fusion_logits"])


def _cases(propagate):
    return range(int(propagate["num_cases"]))


def test_preprocessing_reproduces_the_reference_frames(propagate):
    for c in _cases(propagate):
        frames = volume_to_frames(propagate[f"case{c}_int_volume"])
        np.testing.assert_array_equal(frames, propagate[f"case{c}_frames_u8"])
        height, width = frames.shape[1:3]
        pad = padding_for(height, width)
        assert pad == tuple(int(v) for v in propagate[f"case{c}_pad"])
        padded = pad_to_multiple(normalize_frames(frames[:1]), pad)
        assert tuple(padded.shape[-2:]) == tuple(int(v) for v in propagate[f"case{c}_padded_hw"])
        np.testing.assert_array_equal(unpad(padded, pad).numpy(), normalize_frames(frames[:1]).numpy())


def test_propagation_matches_the_reference_after_every_interaction(stcn, fusion, propagate):
    for c in _cases(propagate):
        frames = propagate[f"case{c}_frames_u8"]
        propagator = STCNPropagator(frames, 1, stcn, fusion, device="cpu")
        for j, index in enumerate(propagate[f"case{c}_annotated"]):
            one_hot = propagate[f"case{c}_annotation_masks"][j]
            probs = propagator.annotate(int(index), (one_hot[1] > 0.5).astype(np.uint8))
            reference = propagate[f"case{c}_probs"][j].astype(np.float32)
            assert probs.shape == (2,) + reference.shape
            diff = np.abs(probs[1] - reference)
            assert diff.max() <= 1.5e-3, f"case{c} interaction {j}: max |diff| {diff.max():.3g}"
            np.testing.assert_array_equal(probs[:, index], one_hot)  # annotated frame: exact
            ambiguous = propagate[f"case{c}_ambiguous"][j].astype(bool)
            labels = propagator.labels()
            wrong = (labels != propagate[f"case{c}_masks"][j]) & ~ambiguous
            assert not wrong.any(), f"case{c} interaction {j}: {wrong.sum()} mask pixels differ"
