"""The click model's sample streams (click_engine/sample_streams.py): the image and its flip run
side by side on the CPU, with the result of one batched call, the caller's grad mode, and the
process's thread count left as it was."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from isegformer.click_engine.sample_streams import run_in_streams, stream_plan


@pytest.fixture
def two_torch_threads(torch_thread_count):  # conftest.py
    torch_thread_count(2)


@pytest.fixture(scope="module")
def tiny_model(golden_dir):
    from isegformer.click_engine.build import load_click_model

    path = golden_dir / "tiny_isegformer_state_dict.pth"
    if not path.is_file():
        pytest.skip(f"{path} is missing from the golden folder")
    state = torch.load(path, map_location="cpu", weights_only=True)
    return load_click_model(state, device="cpu").eval()


def _flip_pair(size=(96, 104)):
    rng = np.random.default_rng(3)
    image = torch.from_numpy(rng.random((1, 3, *size), dtype=np.float32))
    prev = torch.from_numpy((rng.random((1, 1, *size)) > 0.7).astype(np.float32))
    images = torch.cat([image, image.flip(3)])
    prevs = torch.cat([prev, prev.flip(3)])
    y, x = 40.0, 30.0
    points = torch.tensor([[[y, x, 0], [-1, -1, -1]],
                           [[y, size[1] - 1 - x, 0], [-1, -1, -1]]], dtype=torch.float64)
    return images, prevs, points


def test_plan_splits_threads_between_samples():
    assert stream_plan(2, 2) == (2, 1)
    assert stream_plan(2, 16) == (2, 8)
    assert stream_plan(4, 2) == (2, 1)
    assert stream_plan(4, 6) == (3, 2)
    assert stream_plan(1, 2) == (1, 2)  # one sample: the batch as it is
    assert stream_plan(2, 1) == (1, 1)  # one thread: nothing to share
    assert stream_plan(2, 3) == (1, 3)  # 1 + 1 would leave a thread idle


@pytest.mark.usefixtures("two_torch_threads")
def test_streams_give_the_batched_result_each_sample_in_its_own_thread(tiny_model):
    images, prevs, points = _flip_pair()
    seen = []
    handle = tiny_model.backbone.register_forward_pre_hook(
        lambda module, args: seen.append((threading.get_ident(), args[0].shape[0], torch.get_num_threads())))
    try:
        with torch.inference_mode():
            tiny_model.sample_streams = False
            batched = tiny_model(images, prevs, points)
            tiny_model.sample_streams = True
            streamed = tiny_model(images, prevs, points)
    finally:
        handle.remove()
        tiny_model.sample_streams = True
    assert seen[0][1:] == (2, 2)  # the batched call: both samples, both threads
    assert sorted(s[1:] for s in seen[1:]) == [(1, 1), (1, 1)]
    assert seen[1][0] != seen[2][0], "the two samples ran in one thread"
    assert torch.get_num_threads() == 2
    # the two samples differ (an image and its flip), so a swapped or dropped sample shows
    assert not torch.equal(batched[0], batched[1])
    assert float((streamed - batched).abs().max()) <= 1e-5


@pytest.mark.usefixtures("two_torch_threads")
def test_one_top_level_call_per_click(tiny_model):
    from isegformer.click_engine.predictor import ClickPredictor
    from isegformer.click_engine.session import ClickSession

    calls = []
    handle = tiny_model.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    try:
        session = ClickSession(ClickPredictor(tiny_model, device="cpu"),
                               np.random.default_rng(0).random((80, 90, 3)).astype(np.float32))
        session.add_click(40, 45, True)
    finally:
        handle.remove()
    assert calls == [2]  # image and flip in one call to the model, whatever runs inside


@pytest.mark.usefixtures("two_torch_threads")
def test_streams_keep_the_callers_grad_mode_and_gradients(tiny_model):
    images, prevs, points = _flip_pair((64, 64))
    with torch.no_grad():
        assert not tiny_model(images, prevs, points).requires_grad
    grads = []
    for streams in (False, True):
        tiny_model.sample_streams = streams
        x = images.clone().requires_grad_(True)
        tiny_model(x, prevs, points).sum().backward()
        grads.append(x.grad)
    tiny_model.sample_streams = True
    assert float((grads[0] - grads[1]).abs().max()) <= 1e-4 * float(grads[0].abs().max())


@pytest.mark.usefixtures("two_torch_threads")
def test_training_runs_the_batch_as_one(tiny_model):
    images, prevs, points = _flip_pair((64, 64))
    seen = []
    handle = tiny_model.backbone.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
    tiny_model.train()
    try:
        with torch.no_grad():
            tiny_model(images, prevs, points)
    finally:
        tiny_model.eval()
        handle.remove()
    assert seen == [2]  # batch norms must see the whole batch


@pytest.mark.usefixtures("two_torch_threads")
def test_an_error_in_a_stream_is_raised_and_the_thread_count_restored():
    def fails_on_second(x):
        if float(x[0, 0]) == 1.0:
            raise ValueError("second sample")
        return x * 2

    with pytest.raises(ValueError, match="second sample"):
        run_in_streams(fails_on_second, torch.tensor([[0.0], [1.0]]))
    assert torch.get_num_threads() == 2
    out = run_in_streams(lambda x: (x + 1, [x * 3]), torch.tensor([[1.0], [2.0], [3.0]]))
    assert torch.equal(out[0], torch.tensor([[2.0], [3.0], [4.0]]))
    assert torch.equal(out[1][0], torch.tensor([[3.0], [6.0], [9.0]]))


@pytest.mark.usefixtures("two_torch_threads")
def test_a_nested_call_runs_plainly_inside_its_stream():
    seen = []

    def inner(x):
        seen.append((threading.get_ident(), x.shape[0]))
        return x + 1

    out = run_in_streams(lambda x: run_in_streams(inner, torch.cat([x, x])), torch.tensor([[1.0], [2.0]]))
    assert torch.equal(out, torch.tensor([[2.0], [2.0], [3.0], [3.0]]))
    assert sorted(n for _, n in seen) == [2, 2] and len({t for t, _ in seen}) == 2  # no deadlock, no re-split


def test_int8_gives_each_sample_its_own_result_whatever_the_thread_count(tiny_model):
    """int8 layers quantize a call's input with one scale: the flip pair must not share it, or
    a click's mask would depend on the thread count."""
    from isegformer.click_engine.fast_cpu import quantize_linear_layers

    fast = quantize_linear_layers(tiny_model)
    images, prevs, points = _flip_pair()
    saved = torch.get_num_threads()
    results = {}
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            with torch.inference_mode():
                results[threads] = fast(images, prevs, points)
                alone = fast(images[1:], prevs[1:], points[1:])
            assert torch.equal(results[threads][1:], alone)  # as if the flip ran by itself
    finally:
        torch.set_num_threads(saved)
    assert torch.equal(results[1], results[2])
    fast.split_samples = False  # one scale over the pair: another result, which is why it is set
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            shared = fast(images, prevs, points)
    finally:
        torch.set_num_threads(saved)
    assert not torch.equal(shared, results[1])


@pytest.mark.usefixtures("two_torch_threads")
def test_cpu_autocast_runs_the_batch_as_one():
    seen = []
    with torch.autocast("cpu", dtype=torch.bfloat16):
        run_in_streams(lambda x: seen.append(threading.get_ident()) or x, torch.zeros(2, 1))
    assert seen == [threading.get_ident()]  # one call, in the caller's thread, under its autocast


def test_a_prepared_thread_keeps_its_thread_count_through_a_stream_call_elsewhere():
    from isegformer.click_engine.sample_streams import prepare_thread

    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        prepared, started, release, seen = threading.Event(), threading.Event(), threading.Event(), []

        def slow(x):
            started.set()
            release.wait(10)
            return x

        def other():
            prepare_thread()  # before the stream call lowers the count
            prepared.set()
            started.wait(10)
            seen.append(torch.get_num_threads())
            release.set()

        worker = threading.Thread(target=other)
        worker.start()
        prepared.wait(10)
        run_in_streams(slow, torch.zeros(2, 1))
        worker.join(10)
        assert seen == [2] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(saved)
