"""The click model's linear layers through NumPy's OpenBLAS (click_engine/cpu_blas.py): the same
numbers as PyTorch's own, the reference's on the golden inputs, used only where it applies, and
OpenBLAS's thread count left as it was."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from isegformer.click_engine import cpu_blas
from isegformer.errors import InvalidInputError


def _openblas_or_skip():
    if cpu_blas._openblas() is None:
        pytest.skip("NumPy's OpenBLAS (with threadpoolctl) is not available in this environment")


@pytest.fixture
def mode_numpy():
    _openblas_or_skip()
    cpu_blas.set_mode("numpy")
    yield
    cpu_blas.set_mode(None)


@pytest.fixture
def one_thread(torch_thread_count):  # conftest.py
    torch_thread_count(1)


@pytest.fixture
def openblas_calls(monkeypatch):
    """The products that went through OpenBLAS: (input shape, thread) each."""
    calls = []
    real = cpu_blas._openblas_linear

    def counted(*args):
        calls.append((args[0].shape, threading.get_ident()))
        return real(*args)

    monkeypatch.setattr(cpu_blas, "_openblas_linear", counted)
    return calls


def _openblas_threads() -> list[int]:
    return [library.threads() for library in cpu_blas._openblas()]


def _in_thread(function):
    results = []
    thread = threading.Thread(target=lambda: results.append(function()))
    thread.start()
    thread.join(30)
    return results[0]


@pytest.mark.usefixtures("mode_numpy", "one_thread")
def test_linear_equals_torch_for_the_models_layouts(openblas_calls):
    rng = torch.Generator().manual_seed(0)
    weight = torch.randn(48, 40, generator=rng)
    bias = torch.randn(48, generator=rng)
    wide = torch.randn(30, 3 * 40, generator=rng)
    cases = [
        (torch.randn(2, 7, 40, generator=rng), weight, bias),                      # tokens
        (torch.randn(2, 40, 5, 6, generator=rng).permute(0, 2, 3, 1), weight, bias),  # NHWC view
        (torch.randn(9, 40, generator=rng), weight, None),                          # no bias
        (torch.randn(4, 6, 40, generator=rng), wide.split(40, dim=1)[1], None),     # weight block
        (torch.randn(3, 80, generator=rng)[:, ::2], weight, bias),                  # strided rows
    ]
    with cpu_blas.single_thread_blas():
        for x, w, b in cases:
            got = cpu_blas.linear(x, w, b)
            want = F.linear(x, w, b)
            assert got.shape == want.shape and got.dtype == torch.float32
            assert float((got - want).abs().max()) <= 1e-5 * float(want.abs().max())
    assert len(openblas_calls) == len(cases)  # every one of them went through OpenBLAS


@pytest.mark.usefixtures("mode_numpy", "one_thread")
def test_where_it_does_not_apply_torch_computes(openblas_calls):
    layer = nn.Linear(16, 8)
    x = torch.randn(5, 16)
    outside = cpu_blas.project(layer, x)  # no scope: no network call in progress
    with cpu_blas.single_thread_blas():
        # a gradient is wanted: autograd must see the product
        xg = x.clone().requires_grad_(True)
        cpu_blas.project(layer, xg).sum().backward()
        assert xg.grad is not None and torch.allclose(xg.grad, layer.weight.sum(0).expand(5, 16))
        # a hook on the layer must run
        seen = []
        handle = layer.register_forward_hook(lambda module, args, out: seen.append(out.shape))
        try:
            cpu_blas.project(layer, x)
        finally:
            handle.remove()
        assert seen == [torch.Size([5, 8])]
        # another dtype, another layer type
        assert cpu_blas.linear(x.double(), layer.weight.double()).dtype == torch.float64
        assert torch.equal(cpu_blas.project(nn.Identity(), x), x)
        # more than one torch thread in this thread: MKL's threading is kept
        torch.set_num_threads(2)
        try:
            two_threads = cpu_blas.project(layer, x)
        finally:
            torch.set_num_threads(1)
    assert openblas_calls == []
    assert torch.allclose(outside, two_threads)
    with torch.no_grad(), cpu_blas.single_thread_blas():
        # no gradient, a layer that needs one: nothing records the graph, so OpenBLAS may run
        cpu_blas.project(layer, x)
    assert len(openblas_calls) == 1


@pytest.mark.usefixtures("mode_numpy")
def test_scope_runs_openblas_on_one_thread_and_restores_its_count():
    libraries = cpu_blas._openblas()
    before = _openblas_threads()
    for library in libraries:
        library.set_threads(3)  # a count other than 1, as the user may have set
    try:
        with cpu_blas.single_thread_blas():
            assert _openblas_threads() == [1] * len(libraries)
            with cpu_blas.single_thread_blas():  # nested: still one limit
                pass
            assert _openblas_threads() == [1] * len(libraries)
        assert _openblas_threads() == [3] * len(libraries)
        with pytest.raises(RuntimeError):
            with cpu_blas.single_thread_blas():
                raise RuntimeError("a failed network call")
        assert _openblas_threads() == [3] * len(libraries)
        assert cpu_blas._depth == 0
    finally:
        for library, count in zip(libraries, before):
            library.set_threads(count)
    assert _openblas_threads() == before


@pytest.mark.usefixtures("mode_numpy")
def test_a_worker_thread_limits_openblas_after_the_main_thread_set_it():
    """A click may run in a worker thread after the main thread set OpenBLAS's count (through
    threadpoolctl, which then lets no other thread change it)."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    before = _openblas_threads()
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        with cpu_blas.single_thread_blas():  # the main thread's own scope first
            pass

        def worker_scope():
            with cpu_blas.single_thread_blas():
                return _openblas_threads()

        assert _in_thread(worker_scope) == [1] * len(before)
        assert _openblas_threads() == [2] * len(before)  # restored from the worker too
    assert _openblas_threads() == before


@pytest.mark.usefixtures("mode_numpy")
def test_concurrent_scopes_keep_the_limit_until_the_last_ends():
    entered, release = threading.Barrier(2), threading.Event()
    before = _openblas_threads()

    def other():
        with cpu_blas.single_thread_blas():
            entered.wait()
            release.wait(10)

    thread = threading.Thread(target=other)
    thread.start()
    with cpu_blas.single_thread_blas():
        entered.wait()
    assert _openblas_threads() == [1] * len(before)  # the other call still runs
    release.set()
    thread.join(10)
    assert _openblas_threads() == before


def test_mode_comes_from_the_environment_and_a_bad_value_is_refused(monkeypatch):
    from isegformer.click_engine.predictor import check_click_precision

    try:
        monkeypatch.setenv(cpu_blas.MODE_VARIABLE, "fastest")
        cpu_blas.set_mode(None)
        with pytest.raises(InvalidInputError, match="ISEGFORMER_CPU_BLAS.*auto, torch, numpy"):
            check_click_precision("float32", "cpu")
        monkeypatch.setenv(cpu_blas.MODE_VARIABLE, " Torch ")
        cpu_blas.set_mode(None)
        assert cpu_blas.mode() == "torch" and not cpu_blas.enabled()
        assert "PyTorch's" in cpu_blas.describe()
        with pytest.raises(InvalidInputError, match="one of auto, torch, numpy"):
            cpu_blas.set_mode("mkl")
    finally:
        monkeypatch.delenv(cpu_blas.MODE_VARIABLE)
        cpu_blas.set_mode(None)


def test_auto_picks_openblas_only_on_amd_with_mkl_and_threadpoolctl(monkeypatch):
    _openblas_or_skip()
    monkeypatch.delenv(cpu_blas.MODE_VARIABLE, raising=False)
    try:
        for vendor, mkl, expected in (("AMD", True, True), ("Intel", True, False),
                                      ("other", True, False), ("AMD", False, False)):
            monkeypatch.setattr(cpu_blas, "cpu_vendor", lambda: vendor)
            monkeypatch.setattr(torch.backends.mkl, "is_available", lambda: mkl)
            cpu_blas.set_mode(None)
            assert cpu_blas.enabled() is expected, (vendor, mkl)
        monkeypatch.setattr(cpu_blas, "cpu_vendor", lambda: "AMD")
        monkeypatch.setattr(torch.backends.mkl, "is_available", lambda: True)
        monkeypatch.setattr(cpu_blas, "_openblas", lambda: None)  # no threadpoolctl, or no OpenBLAS
        cpu_blas.set_mode(None)
        assert not cpu_blas.enabled()
        cpu_blas.set_mode("numpy")
        assert not cpu_blas.enabled()  # forced, but nothing to run it with
    finally:
        monkeypatch.undo()
        cpu_blas.set_mode(None)


def test_vendor_strings():
    assert cpu_blas.vendor_in("vendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13") == "AMD"
    assert cpu_blas.vendor_in("AMD64 Family 25 Model 1 Stepping 1, AuthenticAMD") == "AMD"
    # Windows on Intel names the instruction set AMD64 too
    assert cpu_blas.vendor_in("Intel64 Family 6 Model 158 Stepping 10, GenuineIntel") == "Intel"
    assert cpu_blas.vendor_in("AMD64") == "other"
    assert cpu_blas.vendor_in("arm") == "other"


@pytest.mark.golden
@pytest.mark.parametrize("mode", ["numpy", "torch"])
def test_forward_matches_reference_with_either_blas(golden_dir, mode, one_thread, openblas_calls):
    from isegformer.click_engine.build import load_click_model

    if mode == "numpy":
        _openblas_or_skip()
    z = np.load(golden_dir / "forward.npz")
    model = load_click_model(golden_dir / "tiny_isegformer.pth", device="cpu")
    cpu_blas.set_mode(mode)
    try:
        for k in range(int(z["num_cases"])):
            with torch.no_grad():
                logits = model(torch.from_numpy(z[f"case{k}_image"]),
                               torch.from_numpy(z[f"case{k}_prev_mask"]),
                               torch.from_numpy(z[f"case{k}_points"]))
            np.testing.assert_allclose(logits.numpy(), z[f"case{k}_logits"], rtol=0, atol=1e-4,
                                       err_msg=f"case{k} logits, {mode} BLAS")
    finally:
        cpu_blas.set_mode(None)
    # every Swin linear layer and decoder product of every case, or none
    layers_per_call = sum(isinstance(m, nn.Linear) for m in model.modules()) + 9
    assert len(openblas_calls) == (layers_per_call * int(z["num_cases"]) if mode == "numpy" else 0)


@pytest.mark.usefixtures("mode_numpy")
def test_a_click_through_openblas_streams_matches_torch(golden_dir, openblas_calls):
    """Two threads: the image and its flip each in a one-thread stream, both through OpenBLAS
    at once; the result is PyTorch's up to float rounding."""
    from isegformer.click_engine.build import load_click_model

    model = load_click_model(golden_dir / "tiny_isegformer_state_dict.pth", device="cpu")
    rng = np.random.default_rng(5)
    images = torch.from_numpy(rng.random((2, 3, 120, 136), dtype=np.float32))
    prevs = torch.zeros(2, 1, 120, 136)
    points = torch.tensor([[[60.0, 50.0, 0], [-1, -1, -1]]] * 2, dtype=torch.float64)
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.inference_mode():
            through_openblas = model(images, prevs, points)
            streamed = len(openblas_calls)
            cpu_blas.set_mode("torch")
            through_torch = model(images, prevs, points)
    finally:
        torch.set_num_threads(saved)
    assert float((through_openblas - through_torch).abs().max()) <= 1e-5
    assert streamed > 0 and len(openblas_calls) == streamed
    assert {shape[0] for shape, _ in openblas_calls} == {1}  # one sample per call: the streams
    assert len({thread for _, thread in openblas_calls}) == 2
