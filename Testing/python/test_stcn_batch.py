"""annotate_many: several annotations at once give what annotating them one by one gives,
while decoding only the frames whose result is read (STCN), or through the default loop."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from isegformer.errors import CancelledError
from isegformer.propagation.interpolation import InterpolationPropagator
from isegformer.propagation.stcn import STCNPropagator, load_fusion, load_stcn
from isegformer.propagation.stcn.schedule import plan_interactions

T, H, W = 12, 30, 40

SEQUENCES = {
    "ascending": [1, 4, 7, 11],
    "descending": [10, 7, 3, 0],
    "unordered": [6, 2, 9, 0, 11],
    "correction": [3, 8, 3, 5],
    "one": [5],
    "neighbours": [4, 5, 6, 3],
    "both ends": [0, 11, 6],
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def network(random_stcn_networks):
    return random_stcn_networks[0]


@pytest.fixture(scope="module")
def fusion(random_stcn_networks):
    return random_stcn_networks[1]


@pytest.fixture(scope="module")
def volume():
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:H, :W]
    stack = [200 * ((yy - 15) ** 2 + (xx - 18 - t % 5) ** 2 < (5 + t % 4) ** 2) + rng.normal(100, 25, (H, W))
             for t in range(T)]
    return np.clip(np.stack(stack), 0, None).astype(np.int16)


@pytest.fixture(scope="module")
def labels(volume):
    rng = np.random.default_rng(4)
    yy, xx = np.mgrid[:H, :W]
    masks = np.stack([((yy - 15) ** 2 + (xx - 18 - t % 5) ** 2 < (5 + t % 4) ** 2) for t in range(T)])
    masks = masks.astype(np.uint8)
    masks[:, :, 34:] = 2  # a second object, with some noise so that corrections change things
    masks[rng.random(masks.shape) < 0.02] = 0
    return masks


def test_the_plan_decodes_only_frames_that_are_read():
    # 5 slices of a 160-slice stack, ascending: each pass is needed only up to the next
    # annotated slice (the prefix of 32's forward pass up to 64 feeds 64's fusion and change)
    plan = plan_interactions(160, [], [32, 64, 96, 128, 159], uses_change=True)
    decoded = [(len(p.forward_prefix), len(p.backward_prefix)) for p in plan]
    assert decoded == [(32, 32), (32, 31), (32, 31), (31, 31), (0, 30)]
    sequential = sum(len(p.forward) + len(p.backward) for p in plan)
    assert sequential == (127 + 32) + (95 + 31) + (63 + 31) + (31 + 31) + 30  # 471 frames
    # without FusionNet the change at the new index is never read
    plan = plan_interactions(160, [], [32, 64], uses_change=False)
    assert len(plan[0].forward_prefix) == 31
    # a correction of the last writer of everything needs all of its passes
    plan = plan_interactions(20, [], [5, 5], uses_change=True)
    assert plan[0].needed == set() and len(plan[1].forward_prefix) == 14


def _run(volume, network, fusion, sequence, labels, batch, **kwargs):
    prop = STCNPropagator(volume, 2, network, fusion, device="cpu", **kwargs)
    prop.annotate(2, labels[2])  # a state before the batch, so that batches start mid-session
    items = [(index, labels[index] if n % 2 == 0 else labels[(index + 1) % T])
             for n, index in enumerate(sequence)]
    if batch:
        prop.annotate_many(items)
    else:
        for index, mask in items:
            prop.annotate(index, mask)
    return prop


@pytest.mark.parametrize("name, with_fusion", [(name, True) for name in SEQUENCES]
                         + [("ascending", False), ("correction", False), ("both ends", False)])
def test_a_batch_equals_annotating_one_by_one(volume, labels, network, fusion, name, with_fusion):
    sequence = SEQUENCES[name]
    fusion = fusion if with_fusion else None
    # one frame per encoder batch: every op sees the same inputs in both runs, so bitwise equal
    one_by_one = _run(volume, network, fusion, sequence, labels, batch=False, batch_size=1)
    batched = _run(volume, network, fusion, sequence, labels, batch=True, batch_size=1)
    np.testing.assert_array_equal(batched.probabilities, one_by_one.probabilities)
    assert list(batched.annotated) == list(one_by_one.annotated)
    for index in batched.annotated:
        np.testing.assert_array_equal(batched.annotated[index], one_by_one.annotated[index])
    assert batched.frames_decoded <= one_by_one.frames_decoded
    if name in ("ascending", "unordered", "correction"):
        assert batched.frames_decoded < one_by_one.frames_decoded
    if name == "unordered":  # the default encoder batches differ between the runs: float noise
        default = _run(volume, network, fusion, sequence, labels, batch=True)
        np.testing.assert_allclose(default.probabilities, one_by_one.probabilities, atol=1e-6)
    # and further annotations continue from an identical state
    np.testing.assert_array_equal(batched.annotate(9, labels[9]), one_by_one.annotate(9, labels[9]))


def test_batch_progress_counts_decoded_frames_and_cancel_changes_nothing(volume, labels, network, fusion):
    prop = STCNPropagator(volume, 2, network, fusion, device="cpu")
    prop.annotate(3, labels[3])
    before, decoded_before = prop.probabilities.copy(), prop.frames_decoded
    items = [(index, labels[index]) for index in (7, 1, 10)]
    calls = []
    prop.annotate_many(items, progress=lambda done, total, message: calls.append((done, total)))
    totals = {total for _, total in calls}
    assert len(totals) == 1 and totals.pop() == prop.frames_decoded - decoded_before
    assert calls[0][0] == 0 and calls[-1][0] == calls[-1][1]
    after = prop.probabilities.copy()

    fresh = STCNPropagator(volume, 2, network, fusion, device="cpu")
    fresh.annotate(3, labels[3])

    def cancel_late(done, total, message):
        if done == total - 1:
            raise CancelledError("user pressed cancel")

    with pytest.raises(CancelledError):
        fresh.annotate_many(items, progress=cancel_late)
    np.testing.assert_array_equal(fresh.probabilities, before)
    assert list(fresh.annotated) == [3]
    np.testing.assert_array_equal(fresh.annotate_many(items), after)


def test_bad_items_are_refused_before_any_work(volume, labels, network, fusion):
    from isegformer.errors import InvalidInputError

    prop = STCNPropagator(volume, 2, network, fusion, device="cpu")
    with pytest.raises(InvalidInputError):
        prop.annotate_many([(2, labels[2]), (T, labels[3])])
    assert prop.frames_decoded == 0 and not prop.annotated
    np.testing.assert_array_equal(prop.annotate_many([]), prop.probabilities)


def test_interpolation_inherits_the_one_by_one_default(labels):
    items = [(index, labels[index]) for index in (6, 1, 10, 6)]
    one_by_one = InterpolationPropagator(T, (H, W), 2)
    for index, mask in items:
        one_by_one.annotate(index, mask)
    batched = InterpolationPropagator(T, (H, W), 2)
    calls = []
    batched.annotate_many(items, progress=lambda done, total, message: calls.append((done, total)))
    np.testing.assert_array_equal(batched.probabilities, one_by_one.probabilities)
    assert list(batched.annotated) == list(one_by_one.annotated)
    assert {total for _, total in calls} == {100} and calls[-1][0] == 100
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)

    cancelled = InterpolationPropagator(T, (H, W), 2)
    cancelled.annotate(3, labels[3])
    before = cancelled.probabilities.copy()
    seen = []

    def cancel_in_second(done, total, message):
        seen.append(done)
        if done > 50:
            raise CancelledError("user pressed cancel")

    with pytest.raises(CancelledError):
        cancelled.annotate_many(items, progress=cancel_in_second)
    assert any(0 < done <= 50 for done in seen)  # the first item had been applied
    np.testing.assert_array_equal(cancelled.probabilities, before)
    assert list(cancelled.annotated) == [3]


@pytest.mark.golden
def test_a_batch_reaches_the_references_final_state(weights_formula, golden_dir):
    import json

    def formula(name):
        manifest = json.loads((golden_dir / name).read_text())
        return {k: torch.from_numpy(v) for k, v in weights_formula.fill(manifest).items()}

    stcn, fusion = load_stcn(formula("manifest_stcn.json")), load_fusion(formula("manifest_fusion.json"))
    propagate = dict(np.load(golden_dir / "propagate.npz"))
    for c in range(int(propagate["num_cases"])):
        indices = [int(i) for i in propagate[f"case{c}_annotated"]]
        masks = propagate[f"case{c}_annotation_masks"]
        items = [(index, (masks[j][1] > 0.5).astype(np.uint8)) for j, index in enumerate(indices)]
        propagator = STCNPropagator(propagate[f"case{c}_frames_u8"], 1, stcn, fusion, device="cpu")
        probs = propagator.annotate_many(items)
        reference = propagate[f"case{c}_probs"][-1].astype(np.float32)
        diff = np.abs(probs[1] - reference)
        assert diff.max() <= 1.5e-3, f"case{c}: max |diff| {diff.max():.3g}"
        ambiguous = propagate[f"case{c}_ambiguous"][-1].astype(bool)
        wrong = (propagator.labels() != propagate[f"case{c}_masks"][-1]) & ~ambiguous
        assert not wrong.any(), f"case{c}: {wrong.sum()} mask pixels differ"
        for index, mask in items:
            np.testing.assert_array_equal(probs[1, index], mask)
