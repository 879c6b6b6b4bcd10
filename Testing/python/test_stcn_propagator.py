"""STCNPropagator behaviour beyond the golden numbers: incremental corrections, key caching,
cancel, fusion-less blending, several objects, bad input, checkpoint refusal."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from isegformer.errors import CancelledError, CheckpointError, InvalidInputError
from isegformer.propagation.base import frames_along_axis
from isegformer.propagation.stcn import FusionNet, STCNPropagator, load_fusion, load_stcn
from isegformer.propagation.stcn.preprocess import volume_to_frames

T, H, W = 12, 30, 40  # padded to 32 x 48 inside


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def network(random_stcn_networks):
    return random_stcn_networks[0]


@pytest.fixture(scope="module")
def fusion(random_stcn_networks):
    return random_stcn_networks[1]


@pytest.fixture(scope="module")
def volume():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:H, :W]
    stack = []
    for t in range(T):
        disk = (yy - 15) ** 2 + (xx - 20 - t % 4) ** 2 < (6 + t % 3) ** 2
        stack.append(200 * disk + rng.normal(100, 20, (H, W)))
    return np.clip(np.stack(stack), 0, None).astype(np.int16)


@pytest.fixture(scope="module")
def labels(volume):
    yy, xx = np.mgrid[:H, :W]
    return np.stack([((yy - 15) ** 2 + (xx - 20 - t % 4) ** 2 < (6 + t % 3) ** 2) for t in range(T)]).astype(np.uint8)


def _propagator(volume, network, fusion, **kwargs):
    return STCNPropagator(volume, 1, network, fusion, device="cpu", **kwargs)


def test_correction_recomputes_only_between_annotated_neighbours(volume, labels, network, fusion):
    prop = _propagator(volume, network, fusion)
    prop.annotate(2, labels[2])
    assert prop.frames_decoded == T - 1
    prop.annotate(8, labels[8])
    assert prop.frames_decoded == (T - 1) + 5 + (T - 9)  # 3..7 and 9..11
    before = prop.probabilities.copy()
    decoded = prop.frames_decoded
    corrected = labels[5].copy()
    corrected[:, :5] = 1
    prop.annotate(5, corrected)
    assert prop.frames_decoded - decoded == 4  # 3, 4 and 6, 7
    after = prop.probabilities
    np.testing.assert_array_equal(after[:, :3], before[:, :3])
    np.testing.assert_array_equal(after[:, 8:], before[:, 8:])
    assert not np.array_equal(after[:, 3:8], before[:, 3:8])
    decoded = prop.frames_decoded
    prop.annotate(5, labels[5])  # a correction of a correction: same range again
    assert prop.frames_decoded - decoded == 4
    assert list(prop.annotated) == [2, 8, 5]
    np.testing.assert_array_equal(prop.annotated[5], labels[5])
    np.testing.assert_array_equal(prop.probabilities[1, 5], labels[5])


def test_incremental_state_equals_a_replay_from_scratch(volume, labels, network, fusion):
    sequence = [(6, labels[6]), (1, labels[1]), (10, labels[10])]
    first = _propagator(volume, network, fusion)
    for index, mask in sequence:
        first.annotate(index, mask)
    second = _propagator(volume, network, fusion)
    for index, mask in sequence:
        second.annotate(index, mask)
    np.testing.assert_array_equal(first.probabilities, second.probabilities)


def test_keys_are_encoded_once_per_stack_and_a_small_cache_changes_nothing(volume, labels, network, fusion):
    roomy = _propagator(volume, network, fusion)
    for index in (2, 9, 5):
        roomy.annotate(index, labels[index])
    assert roomy.frames_encoded == T  # every frame once, reused by all three annotations
    released = _propagator(volume, network, fusion)
    released.annotate(2, labels[2])
    released.release_cache()
    assert released._cache.nbytes == 0
    for index in (9, 5):
        released.annotate(index, labels[index])
    assert released.frames_encoded > T
    np.testing.assert_allclose(released.probabilities, roomy.probabilities, atol=1e-6)  # other batches
    frame_bytes = roomy._cache.nbytes // roomy._cache.capacity
    half = _propagator(volume, network, fusion, feature_cache_bytes=frame_bytes * T // 2)
    half.annotate(2, labels[2])
    assert half.frames_encoded == T  # a pass never evicts the frames it needs next
    for index in (9, 5):
        half.annotate(index, labels[index])
    np.testing.assert_allclose(half.probabilities, roomy.probabilities, atol=1e-6)
    tiny = _propagator(volume, network, fusion, feature_cache_bytes=1, batch_size=1)
    for index in (2, 9, 5):
        tiny.annotate(index, labels[index])
    assert tiny.frames_encoded > T
    np.testing.assert_allclose(tiny.probabilities, roomy.probabilities, atol=1e-6)


def test_cancel_leaves_the_previous_result_intact(volume, labels, network, fusion):
    prop = _propagator(volume, network, fusion)
    prop.annotate(3, labels[3])
    before = prop.probabilities.copy()
    calls = []

    def cancel_after_three(done, total, message):
        calls.append((done, total))
        if done == 3:
            raise CancelledError("user pressed cancel")

    with pytest.raises(CancelledError):
        prop.annotate(9, labels[9], progress=cancel_after_three)
    assert calls[0] == (0, T - 5) and calls[-1] == (3, T - 5)
    np.testing.assert_array_equal(prop.probabilities, before)
    assert list(prop.annotated) == [3]
    prop.annotate(9, labels[9])  # and the same work still gives the uncancelled answer
    reference = _propagator(volume, network, fusion)
    reference.annotate(3, labels[3])
    reference.annotate(9, labels[9])
    np.testing.assert_array_equal(prop.probabilities, reference.probabilities)


def test_without_fusion_weights_directions_are_blended_by_distance(volume, labels, network, caplog):
    with caplog.at_level(logging.WARNING):
        prop = STCNPropagator(volume, 1, network, None, device="cpu")
    assert "blended" in caplog.text
    prop.annotate(2, labels[2])
    previous = prop.probabilities.copy()
    current = torch.rand(2, 1, 32, 48)
    current = current / current.sum(0, keepdim=True)
    index_k16 = torch.zeros(1, 64, 2, 3)
    old = torch.from_numpy(np.pad(previous[:, 4], ((0, 0), (1, 1), (4, 4))))[:, None]
    out = prop._fuse(8, 2, 4, current, old, index_k16, index_k16, None, None)  # t=4 between 2 and 8
    expected = (4 / 6) * current + (2 / 6) * old
    torch.testing.assert_close(out[:, :, 1:-1, 4:-4], expected[:, :, 1:-1, 4:-4])
    prop.annotate(8, labels[8])
    probs = prop.probabilities
    np.testing.assert_allclose(probs.sum(0), 1, atol=1e-5)


def test_several_objects(volume, labels, network, fusion):
    two = labels.copy()
    two[:, :, :8] = 2  # a second object: a band on the left
    prop = STCNPropagator(volume, 2, network, fusion, device="cpu")
    prop.annotate(4, two[4])
    probs = prop.annotate(9, two[9])
    assert probs.shape == (3, T, H, W) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(0), 1, atol=1e-5)
    for index in (4, 9):
        np.testing.assert_array_equal(prop.labels()[index], two[index])
        assert set(np.unique(probs[:, index])) <= {0.0, 1.0}


def test_bad_input_is_refused_clearly(volume, labels, network, fusion):
    prop = _propagator(volume, network, fusion)
    with pytest.raises(InvalidInputError, match="shape"):
        prop.annotate(1, labels[1][:, :-1])
    with pytest.raises(InvalidInputError, match="objects 1..1"):
        prop.annotate(1, labels[1] * 2)
    with pytest.raises(InvalidInputError, match="objects 1..1"):
        prop.annotate(1, labels[1].astype(np.int8) - 1)
    with pytest.raises(InvalidInputError, match="fractional"):
        prop.annotate(1, labels[1] * 0.5)
    with pytest.raises(InvalidInputError, match="out of range"):
        prop.annotate(T, labels[1])
    with pytest.raises(InvalidInputError, match="integer"):
        prop.annotate(1.0, labels[1])
    assert prop.annotated == {} and prop.frames_decoded == 0
    nan_volume = volume.astype(np.float32)
    nan_volume[3, 4, 5] = np.nan
    with pytest.raises(InvalidInputError, match="NaN"):
        STCNPropagator(nan_volume, 1, network, fusion, device="cpu")
    with pytest.raises(InvalidInputError):
        STCNPropagator(np.zeros((T, H, W, 3), np.float32), 1, network, fusion, device="cpu")
    with pytest.raises(InvalidInputError, match="num_objects"):
        STCNPropagator(volume, 0, network, fusion, device="cpu")
    with pytest.raises(InvalidInputError, match="Axis"):
        STCNPropagator.from_volume(volume, 3, 1, network, fusion, device="cpu")


def test_empty_annotation_means_absent_and_propagates(volume, network, fusion):
    prop = _propagator(volume, network, fusion)
    probs = prop.annotate(6, np.zeros((H, W), np.uint8))
    np.testing.assert_array_equal(probs[0, 6], 1)
    assert prop.frames_decoded == T - 1
    assert (prop.labels() == 0).mean() > 0.5  # an empty memory mostly says "absent"


def test_every_slice_annotated_and_one_slice_volumes(volume, labels, network, fusion):
    few = _propagator(volume[:3], network, fusion)
    for index in (0, 2, 1):
        few.annotate(index, labels[index])
    assert few.frames_decoded == 2 + 1 + 0  # 1 and 2, then 1 again, then nothing left
    np.testing.assert_array_equal(few.labels(), labels[:3])
    single = _propagator(volume[:1], network, fusion)
    probs = single.annotate(0, labels[0])
    assert probs.shape == (2, 1, H, W) and single.frames_decoded == 0
    np.testing.assert_array_equal(single.labels()[0], labels[0])


def test_from_volume_uses_the_slices_along_the_axis(volume, network, fusion):
    turned = np.ascontiguousarray(np.moveaxis(volume, 0, 2))  # (H, W, T)
    prop = STCNPropagator.from_volume(turned, 2, 1, network, fusion, device="cpu")
    assert prop.num_frames == T and prop.frame_shape == (H, W)
    np.testing.assert_array_equal(prop.frames, volume_to_frames(frames_along_axis(turned, 2)))
    np.testing.assert_array_equal(prop.frames, volume_to_frames(volume))
    assert prop._frames.shape[-1] == 1  # a grey volume is kept as one channel


def test_preprocessing_keeps_the_reference_quirks():
    rng = np.random.default_rng(3)
    volume = rng.integers(40, 900, size=(4, 20, 24)).astype(np.int16)  # lo > 0
    frames = volume_to_frames(volume)
    # independent statement of the reference recipe: RGB stack, int32, percentiles, clip, /hi
    rgb = np.stack([volume] * 3, axis=-1).astype(np.int32)
    lo, hi = np.percentile(rgb, 0.1), max(1, np.percentile(rgb, 99.9))
    rgb[rgb < lo] = lo
    rgb[rgb > hi] = hi
    expected = (255 * (rgb - lo) / hi).astype(np.uint8)
    np.testing.assert_array_equal(frames, expected)
    assert frames.max() < 255  # dividing by hi, not hi - lo
    ct = volume.astype(np.int32) * 3 - 1000  # negative intensities: no uint8 wrap-around
    ct_frames = volume_to_frames(ct)
    assert ct_frames.max() >= 250 and ct_frames.min() == 0


def test_checkpoints_of_the_wrong_model_are_refused(tmp_path, network):
    state = network.state_dict()
    truncated = {k: v for i, (k, v) in enumerate(state.items()) if i < 100}
    with pytest.raises(CheckpointError, match="missing .*decoder"):
        load_stcn(truncated)
    foreign = dict(state, **{"head.weight": torch.zeros(3)})
    with pytest.raises(CheckpointError, match="unexpected .*head.weight"):
        load_stcn(foreign)
    misshaped = dict(state, **{"key_comp.bias": torch.zeros(7)})
    with pytest.raises(CheckpointError, match="wrong shape .*key_comp.bias"):
        load_stcn(misshaped)
    with pytest.raises(CheckpointError, match="missing"):
        load_fusion(state)  # an STCN file offered as FusionNet
    path = tmp_path / "stcn.pth"
    torch.save(truncated, path)
    with pytest.raises(CheckpointError, match="missing"):
        load_stcn(path)
    (tmp_path / "cut.pth").write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError):
        load_stcn(tmp_path / "cut.pth")
    full = tmp_path / "full.pth"
    torch.save(FusionNet().state_dict(), full)
    assert isinstance(load_fusion(full), FusionNet)
