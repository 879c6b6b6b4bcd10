"""The STCN propagator's speed and memory measures keep its results: folded batch norms,
Winograd convolutions, the memory-major memory bank, and the cache-aware pass order."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from isegformer.propagation.stcn import STCNNetwork, STCNPropagator
from isegformer.propagation.stcn.inference import WINOGRAD_LAYERS, inference_network
from isegformer.propagation.stcn.memory import MemoryBank
from isegformer.propagation.stcn.network import read_memory
from isegformer.propagation.stcn.winograd import WinogradConv2d

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained_like_network():
    """Random weights with random batch-norm statistics (torch's defaults, mean 0 and
    variance 1, would make folding a no-op and the test meaningless)."""
    torch.manual_seed(0)
    network = STCNNetwork().eval()
    generator = torch.Generator().manual_seed(5)
    for module in network.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            c = module.num_features
            module.running_mean.copy_(torch.randn(c, generator=generator) * 0.2)
            module.running_var.copy_(torch.rand(c, generator=generator) + 0.3)
            module.weight.data.copy_(torch.rand(c, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(c, generator=generator) * 0.2)
    return network


def _relative(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.double() - expected.double()).abs().max() / expected.double().abs().max())


def test_folded_batch_norms_give_the_networks_outputs_and_leave_it_unchanged(trained_like_network):
    network = trained_like_network
    state = {k: v.clone() for k, v in network.state_dict().items()}
    view = inference_network(network)
    assert isinstance(network.key_encoder.bn1, torch.nn.BatchNorm2d)  # the original keeps its BNs
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in view.modules())
    assert network.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in network.state_dict().items())
    frames = torch.randn(2, 3, 64, 80, generator=torch.Generator().manual_seed(1))
    masks = (torch.rand(2, 1, 64, 80, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    with torch.inference_mode():
        expected, folded = network.encode_key(frames), view.encode_key(frames)
        for name in expected._fields:
            # float rounding only: the unfolded network's own float32 error is of this order
            assert _relative(getattr(folded, name), getattr(expected, name)) < 2e-5, name
        assert _relative(view.encode_value(frames[:1], folded.f16[:1], masks[:1]),
                         network.encode_value(frames[:1], expected.f16[:1], masks[:1])) < 2e-5


@pytest.mark.parametrize("shape, bias", [((1, 16, 24, 24), True), ((2, 8, 10, 14), False),
                                         ((1, 24, 7, 5), True), ((3, 4, 48, 12), True)])
def test_winograd_convolution_is_the_convolution_within_float_rounding(shape, bias):
    generator = torch.Generator().manual_seed(sum(shape))
    torch.manual_seed(sum(shape))
    conv = torch.nn.Conv2d(shape[1], 12, 3, padding=1, bias=bias).eval()
    x = torch.randn(shape, generator=generator).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        exact = F.conv2d(x.double(), conv.weight.double(), None if conv.bias is None else conv.bias.double(),
                         padding=1)
        result = WinogradConv2d(conv)(x)
    assert result.shape == exact.shape
    assert result.is_contiguous(memory_format=torch.channels_last)
    # float32 rounding: measured up to 8e-6 of the largest output (a direct float32
    # convolution: 2e-7 to 3e-6); a wrong tile or transform is off by order 1
    assert _relative(result, exact) < 1.5e-5


def test_winograd_falls_back_to_the_direct_convolution_where_it_does_not_apply():
    conv = torch.nn.Conv2d(4, 6, 3, padding=1)
    x = torch.randn(1, 4, 9, 9, requires_grad=True)
    out = WinogradConv2d(conv)(x)  # gradients on: the direct convolution, exactly
    assert torch.equal(out, conv(x))
    out.sum().backward()
    assert x.grad is not None
    with pytest.raises(ValueError):
        WinogradConv2d(torch.nn.Conv2d(4, 6, 3, stride=2, padding=1))


def test_the_inference_view_uses_winograd_only_where_asked(trained_like_network):
    view = inference_network(trained_like_network, winograd=True)
    for path in WINOGRAD_LAYERS:
        module = view
        for name in path.split("."):
            module = getattr(module, name)
        assert isinstance(module, WinogradConv2d), path
    assert not any(isinstance(m, WinogradConv2d) for m in trained_like_network.modules())
    assert not any(isinstance(m, WinogradConv2d) for m in inference_network(trained_like_network).modules())


def test_the_memory_bank_reads_what_the_reference_layout_reads():
    generator = torch.Generator().manual_seed(7)
    num_objects, h, w, frames = 2, 6, 7, 5
    hw = h * w
    keys = [torch.randn(1, 64, h, w, generator=generator) for _ in range(frames)]
    values = [torch.randn(num_objects, 512, 1, h, w, generator=generator) for _ in range(frames)]
    bank = MemoryBank(frames + 2, hw, num_objects, torch.device("cpu"))
    for key, value in zip(keys, values):
        bank.add(key.contiguous(memory_format=torch.channels_last), value)
    query = torch.randn(1, 64, h, w, generator=generator)
    mem_keys = torch.cat([k.reshape(64, hw) for k in keys], dim=1)
    mem_values = torch.cat([v.reshape(num_objects, 512, hw) for v in values], dim=2)
    network = STCNNetwork()
    expected = network.memory_affinity(mem_keys, query.reshape(64, hw))
    affinity = bank.affinity(query)
    assert torch.equal(affinity.indices, expected.indices)  # random keys: no ties
    torch.testing.assert_close(affinity.weights, expected.weights, rtol=1e-5, atol=1e-7)
    reference = read_memory(expected, mem_values).reshape(num_objects, 512, h, w)
    torch.testing.assert_close(bank.read(query), reference, rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError):
        for _ in range(3):
            bank.add(keys[0], values[0])


T, H, W = 16, 32, 32


@pytest.fixture(scope="module")
def stack():
    rng = np.random.default_rng(11)
    yy, xx = np.mgrid[:H, :W]
    inside = np.stack([(yy - 16) ** 2 + (xx - 12 - t % 6) ** 2 < (6 + t % 3) ** 2 for t in range(T)])
    volume = np.clip(180 * inside + rng.normal(90, 20, inside.shape), 0, None).astype(np.int16)
    return volume, inside.astype(np.uint8)


def test_one_cached_segment_serves_both_passes_that_cross_it(stack, random_stcn_networks):
    volume, labels = stack
    network, fusion = random_stcn_networks
    items = [(index, labels[index]) for index in (3, 8, 13)]
    roomy = STCNPropagator(volume, 1, network, fusion, device="cpu", batch_size=1)
    roomy.annotate_many(items)
    frame_bytes = roomy._cache.nbytes // roomy._cache.capacity
    assert roomy.frames_encoded == T
    # room for 6 frames, a segment between two annotated slices and its ends: slice 3's
    # forward pass (4..8) and slice 8's backward pass (7..4) run one after the other, and
    # the cache knows every read ahead, so nothing is encoded twice (forward passes first
    # and a look-ahead limited to the running interaction encoded 21 frames here)
    small = STCNPropagator(volume, 1, network, fusion, device="cpu", batch_size=1,
                           feature_cache_bytes=6 * frame_bytes)
    small.annotate_many(items)
    assert small._cache.capacity == 6
    assert small.frames_encoded == T
    np.testing.assert_array_equal(small.probabilities, roomy.probabilities)


def test_winograd_and_direct_propagations_agree_within_float_rounding(stack, random_stcn_networks):
    volume, labels = stack
    network, fusion = random_stcn_networks
    results = []
    for winograd in (False, True):
        prop = STCNPropagator(volume, 1, network, fusion, device="cpu", winograd=winograd)
        prop.annotate_many([(index, labels[index]) for index in (2, 9, 14)])
        results.append(prop.probabilities.copy())
    direct, fast = results
    assert not np.array_equal(direct, fast)  # it did run a different algorithm
    np.testing.assert_allclose(fast, direct, atol=1e-5)


#: (layer path, input size) of the Winograd layers at a 384x384 frame's resolution
_LAYER_SIZES = {"decoder.compress": 24, "decoder.up_16_8.skip_conv": 48, "decoder.up_16_8.out_conv": 48,
                "decoder.up_8_4": 96}


@pytest.mark.parametrize("path", [p for p in WINOGRAD_LAYERS if p.startswith(("decoder.compress", "decoder.up_16_8.skip"))])
def test_winograd_on_the_full_width_layers_is_the_convolution_within_float_rounding(trained_like_network, path):
    """The 1/16 compress block (1024 and 512 channels) and the 1/8 skip projection, at their
    real widths and a 384x384 frame's sizes: as close to the float64 convolution as the
    layers that used Winograd before (a sum over 9216 products per output)."""
    conv = trained_like_network
    for name in path.split("."):
        conv = getattr(conv, name)
    size = next(s for prefix, s in _LAYER_SIZES.items() if path.startswith(prefix))
    generator = torch.Generator().manual_seed(len(path))
    x = torch.relu(torch.randn(1, conv.in_channels, size, size, generator=generator))
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        exact = F.conv2d(x.double(), conv.weight.double(), conv.bias.double(), padding=1)
        direct = conv(x)
        fast = WinogradConv2d(conv)(x)
    # measured 8-9e-6 of the largest output (direct float32: 3e-6); a wrong transform is order 1
    assert _relative(fast, exact) < 1.5e-5
    assert _relative(fast, exact) < 5 * max(_relative(direct, exact), 2e-6)


def test_f16_is_kept_only_for_reads_that_need_it_and_refetched_when_missing():
    """The cache's f16 slab: kept for a frame only while a later read needs it, encoded again
    (the same features) when a read needs it and it was not kept."""
    from isegformer.propagation.stcn.cache import FeatureCache, FrameFeatures

    encoded = []

    def encode(indices):
        encoded.extend(indices)
        base = torch.tensor(indices, dtype=torch.float32).view(-1, 1, 1, 1)
        return FrameFeatures(base.expand(-1, 2, 1, 1) + 0, base.expand(-1, 2, 1, 1) + 0.5,
                             base.expand(-1, 8, 1, 1) + 0.25, base.expand(-1, 2, 2, 2) + 0,
                             base.expand(-1, 2, 4, 4) + 0)

    main_bytes = 4 * (2 + 2 + 8 + 32)  # k16, f16_thin, skip8, skip4
    f16_bytes = 4 * 8
    # 6 frames and 6 // (5 - 1) = 1 f16 slot
    cache = FeatureCache(encode, 6 * main_bytes + 1 * f16_bytes, num_frames=10, batch_size=1, value_every=5)
    assert cache.get(0, [1, 2, 3], f16=True, upcoming_f16=[]).f16.flatten()[0] == 0.25
    assert (cache.capacity, cache.f16_capacity) == (6, 1)
    assert cache.nbytes == 6 * main_bytes + f16_bytes
    cache.get(1, [2, 3], f16=False, upcoming_f16=[])
    cache.get(2, [3, 2], f16=False, upcoming_f16=[2])  # its f16 is kept for its next read
    cache.get(3, [1, 2], f16=False, upcoming_f16=[2])
    assert encoded == [0, 1, 2, 3]
    assert cache.get(1, [2], f16=False).f16 is None  # cached without its f16
    again = cache.get(2, [0], f16=True, upcoming_f16=[])  # kept: no encoding
    assert encoded == [0, 1, 2, 3] and again.f16.flatten()[0] == 2.25
    refetched = cache.get(0, [], f16=True)  # frame 0 is cached, but not its f16
    assert encoded == [0, 1, 2, 3, 0]
    assert refetched.f16.flatten()[0] == 0.25 and refetched.k16.flatten()[0] == 0


def test_a_cache_that_keeps_few_f16_gives_bitwise_the_roomy_result(stack, random_stcn_networks):
    """With every frame cached but f16 kept for one frame at a time, the frames that need it
    are encoded again and the result is bitwise the same."""
    from isegformer.propagation.stcn.cache import FeatureCache

    volume, labels = stack
    network, fusion = random_stcn_networks
    items = [(index, labels[index]) for index in (1, 8, 15)]
    roomy = STCNPropagator(volume, 1, network, fusion, device="cpu", batch_size=1, memory_every=2)
    roomy.annotate_many(items)
    assert roomy.frames_encoded == T
    assert roomy._cache.f16_capacity == T  # memory_every 2: a slot per frame
    starved = STCNPropagator(volume, 1, network, fusion, device="cpu", batch_size=1, memory_every=2)
    slabs = roomy._cache._slabs
    f16_bytes = slabs.f16[0].element_size() * slabs.f16[0].nelement()
    main_bytes = roomy._cache.nbytes // T - f16_bytes
    starved._cache = FeatureCache(starved._encode_frames, T * main_bytes + f16_bytes, T, 1, value_every=T * 2)
    starved.annotate_many(items)
    assert (starved._cache.capacity, starved._cache.f16_capacity) == (T, 1)
    assert starved.frames_encoded > T
    np.testing.assert_array_equal(starved.probabilities, roomy.probabilities)


def test_labels_are_the_argmax_of_the_probabilities_ties_to_the_background(stack, random_stcn_networks):
    from isegformer.propagation.base import Propagator

    volume, labels = stack
    network, fusion = random_stcn_networks
    two = np.where(labels > 0, 1 + (np.arange(W) > W // 2), 0).astype(np.uint8)
    prop = STCNPropagator(volume, 2, network, fusion, device="cpu")
    prop.annotate_many([(index, two[index]) for index in (4, 11)])
    expected = Propagator.labels(prop)
    assert set(np.unique(expected)) == {0, 1, 2}
    got = prop.labels()
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, expected)
    untouched = STCNPropagator(volume, 2, network, fusion, device="cpu")  # background 1e-7, objects 0
    np.testing.assert_array_equal(untouched.labels(), Propagator.labels(untouched))


def test_a_dropped_propagator_is_freed_at_once(stack, random_stcn_networks):
    """No reference cycle keeps a propagator (its network view and feature cache) alive after
    its last reference goes: the garbage collector is off here."""
    import gc
    import weakref

    volume, labels = stack
    network, fusion = random_stcn_networks
    prop = STCNPropagator(volume, 1, network, fusion, device="cpu")
    prop.annotate(5, labels[5])
    gone = weakref.ref(prop)
    view = weakref.ref(prop._net)
    gc.disable()
    try:
        del prop
        assert gone() is None and view() is None
    finally:
        gc.enable()


def test_the_default_cpu_cache_holds_a_segment_of_384_frames_and_its_f16_share():
    """The default budget, for the features of 384x384 frames: 32 frames, the 31 between two of
    5 annotated slices of 160 and one more (see the next test), and their f16 slots."""
    from isegformer.propagation.stcn.cache import FeatureCache, FrameFeatures
    from isegformer.propagation.stcn.propagator import DEFAULT_CPU_CACHE_BYTES, MEMORY_EVERY

    def encode(indices):
        n = len(indices)
        return FrameFeatures(*(torch.zeros(n, c, s, s) for c, s in
                               ((64, 24), (512, 24), (1024, 24), (512, 48), (256, 96))))

    cache = FeatureCache(encode, DEFAULT_CPU_CACHE_BYTES, num_frames=160, batch_size=1,
                         value_every=MEMORY_EVERY)
    cache.get(0)
    assert cache.capacity == 32
    assert cache.f16_capacity >= 32 // (MEMORY_EVERY - 1)
    assert cache.nbytes <= DEFAULT_CPU_CACHE_BYTES


@pytest.mark.parametrize("capacity", [8, 7])
def test_a_batch_encodes_each_frame_once_when_a_segment_and_its_end_fit(random_stcn_networks, capacity):
    """40 frames from 5 slices as the benchmark picks them (8, 16, 24, 32, 39): segments of 7
    frames between annotated slices and a tail of 8; with room for 8 frames (and 2 f16)
    nothing is encoded twice, with 7 the second passes encode frames again."""
    network, fusion = random_stcn_networks
    rng = np.random.default_rng(3)
    volume = rng.normal(100, 30, (40, 16, 16)).astype(np.float32)
    labels = np.zeros((40, 16, 16), np.uint8)
    labels[:, 4:10, 5:12] = 1
    probe = STCNPropagator(volume, 1, network, fusion, device="cpu")
    probe.annotate(0, labels[0])
    slabs = probe._cache._slabs
    f16_bytes = slabs.f16[0].element_size() * slabs.f16[0].nelement()
    main_bytes = probe._cache.nbytes // probe._cache.capacity - f16_bytes
    prop = STCNPropagator(volume, 1, network, fusion, device="cpu",
                          feature_cache_bytes=capacity * main_bytes + (capacity // 4) * f16_bytes)
    prop.annotate_many([(index, labels[index]) for index in (8, 16, 24, 32, 39)])
    assert prop._cache.capacity == capacity
    if capacity == 8:
        assert prop.frames_encoded == 40
    else:
        assert prop.frames_encoded > 40
