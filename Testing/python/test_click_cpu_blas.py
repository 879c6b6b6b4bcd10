"""The click model's linear layers through NumPy's OpenBLAS (click_engine/cpu_blas.py): the same
numbers as PyTorch's own, the reference's on the golden inputs, used only where it applies, and
OpenBLAS's thread count left as it was."""
from __future__ import annotations

import contextlib
import os
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


@contextlib.contextmanager
def _network_call():
    """What a one-thread network call opens: the OpenBLAS limit, and this thread's products."""
    with cpu_blas.single_thread_blas(1), cpu_blas.products_here():
        yield


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
    with _network_call():
        for x, w, b in cases:
            got = cpu_blas.linear(x, w, b)
            want = F.linear(x, w, b)
            assert got.shape == want.shape and got.dtype == torch.float32
            assert float((got - want).abs().max()) <= 1e-5 * float(want.abs().max())
    assert len(openblas_calls) == len(cases)  # every one of them went through OpenBLAS


class _Traced(torch.Tensor):
    """A tensor subclass with its own ``__torch_function__`` (as tracing tools use)."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        return super().__torch_function__(func, types, args, kwargs or {})


@pytest.mark.usefixtures("mode_numpy", "one_thread")
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")  # by vmap
def test_where_it_does_not_apply_torch_computes(openblas_calls):
    layer = nn.Linear(16, 8).requires_grad_(False)
    x = torch.randn(5, 16)
    with torch.no_grad():
        want = F.linear(x, layer.weight, layer.bias)
        with _network_call():  # the positive control: this one does go through OpenBLAS
            assert torch.allclose(cpu_blas.project(layer, x), want, atol=1e-6)
        assert len(openblas_calls) == 1
        openblas_calls.clear()

        def check(name, compute):
            compute()
            assert openblas_calls == [], f"{name} went through OpenBLAS"

        check("no scope open", lambda: cpu_blas.project(layer, x))
        with cpu_blas.single_thread_blas(1):
            check("a thread outside the call", lambda: cpu_blas.project(layer, x))
        with _network_call():
            seen = []
            handle = layer.register_forward_hook(lambda module, args, out: seen.append(out.shape))
            try:
                check("a layer hook", lambda: cpu_blas.project(layer, x))
            finally:
                handle.remove()
            assert seen == [torch.Size([5, 8])]
            handle = nn.modules.module.register_module_forward_hook(lambda *args: None)
            try:
                check("a global hook", lambda: cpu_blas.project(layer, x))
            finally:
                handle.remove()
            patched = nn.Linear(16, 8).requires_grad_(False)
            patched.forward = lambda inp: torch.zeros(inp.shape[0], 8)
            assert float(cpu_blas.project(patched, x).abs().sum()) == 0.0  # its own forward ran
            check("a replaced forward", lambda: None)
            check("float64", lambda: cpu_blas.linear(x.double(), layer.weight.double()))
            check("another layer type", lambda: cpu_blas.project(nn.Identity(), x))
            check("a subclass input", lambda: cpu_blas.linear(x.as_subclass(_Traced), layer.weight))
            out = cpu_blas.linear(x, layer.weight.as_subclass(_Traced))
            assert type(out) is _Traced  # the subclass's dispatch ran, as with F.linear
            check("a subclass weight", lambda: None)
            check("a (1, N) bias", lambda: cpu_blas.linear(x, layer.weight, layer.bias[None]))
            negative = torch.randn(5, 16, dtype=torch.cfloat).conj().imag
            assert negative.is_neg()
            check("a negative view", lambda: cpu_blas.linear(negative, layer.weight))
            with torch.autocast("cpu", dtype=torch.bfloat16):
                check("CPU autocast", lambda: cpu_blas.project(layer, x))
            torch.set_num_threads(2)
            try:
                check("two torch threads", lambda: cpu_blas.project(layer, x))
            finally:
                torch.set_num_threads(1)
    with _network_call():
        # a gradient is wanted: autograd must see the product
        trainable = nn.Linear(16, 8)
        xg = x.clone().requires_grad_(True)
        cpu_blas.project(trainable, xg).sum().backward()
        assert torch.allclose(xg.grad, trainable.weight.sum(0).expand(5, 16))
        # forward-mode gradients and torch.func transforms need PyTorch's own product
        import torch.autograd.forward_ad as fwAD

        with torch.no_grad(), fwAD.dual_level():
            dual = fwAD.make_dual(x, torch.ones_like(x))
            tangent = fwAD.unpack_dual(cpu_blas.project(layer, dual)).tangent
        assert tangent is not None and torch.allclose(tangent, layer.weight.sum(1).expand(5, 8))
        with torch.no_grad():
            batched = torch.func.vmap(lambda row: cpu_blas.project(layer, row))(x)
        assert torch.allclose(batched, want, atol=1e-6)
    assert openblas_calls == []


@pytest.mark.usefixtures("mode_numpy", "one_thread")
def test_numpys_error_settings_do_not_apply(openblas_calls):
    weight = torch.rand(4, 3) + 0.1  # positive: inf - inf in the first row, an invalid operation
    x = torch.tensor([[float("inf"), -float("inf"), 2.0], [1.0, 2.0, 3.0]])
    with np.errstate(all="raise"), torch.no_grad(), _network_call():
        got = cpu_blas.linear(x, weight)
    assert len(openblas_calls) == 1
    want = F.linear(x, weight)
    assert torch.isnan(want[0]).all() and torch.equal(torch.isnan(got), torch.isnan(want))
    assert torch.allclose(got[1], want[1], atol=1e-6)


@pytest.mark.usefixtures("mode_numpy")
def test_scope_runs_openblas_on_one_thread_and_restores_its_count():
    libraries = cpu_blas._openblas()
    before = _openblas_threads()
    for library in libraries:
        library.set_threads(3)  # a count other than 1, as the user may have set
    try:
        with cpu_blas.single_thread_blas(1):
            assert _openblas_threads() == [1] * len(libraries)
            with cpu_blas.single_thread_blas(1):  # nested: still one limit
                pass
            assert _openblas_threads() == [1] * len(libraries)
        assert _openblas_threads() == [3] * len(libraries)
        with pytest.raises(RuntimeError):
            with cpu_blas.single_thread_blas(1):
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
        with cpu_blas.single_thread_blas(1):  # the main thread's own scope first
            pass

        def worker_scope():
            with cpu_blas.single_thread_blas(1):
                return _openblas_threads()

        assert _in_thread(worker_scope) == [1] * len(before)
        assert _openblas_threads() == [2] * len(before)  # restored from the worker too
    assert _openblas_threads() == before


@pytest.mark.usefixtures("mode_numpy")
def test_concurrent_scopes_keep_the_limit_until_the_last_ends():
    entered, release = threading.Barrier(2), threading.Event()
    before = _openblas_threads()
    for library in cpu_blas._openblas():
        library.set_threads(3)  # so that a count left at 1 shows

    def other():
        with cpu_blas.single_thread_blas(1):
            entered.wait()
            release.wait(10)

    thread = threading.Thread(target=other)
    thread.start()
    with cpu_blas.single_thread_blas(1):
        entered.wait()
    assert _openblas_threads() == [1] * len(before)  # the other call still runs
    release.set()
    thread.join(10)
    assert _openblas_threads() == [3] * len(before)
    for library, count in zip(cpu_blas._openblas(), before):
        library.set_threads(count)


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
        monkeypatch.setattr(cpu_blas, "_numpy_uses_openblas", lambda: False)  # e.g. NumPy on MKL
        cpu_blas.set_mode(None)
        assert not cpu_blas.enabled()
        monkeypatch.undo()
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


@pytest.mark.usefixtures("mode_numpy")
@pytest.mark.parametrize("threads", [3, 4])
def test_at_more_threads_per_stream_openblas_is_left_alone(golden_dir, threads, torch_thread_count,
                                                           openblas_calls):
    """3 torch threads run a click as one batch, 4 as two streams of 2: MKL's threading is
    kept, OpenBLAS's count is not touched, and the report says so."""
    from isegformer.click_engine.build import load_click_model

    model = load_click_model(golden_dir / "tiny_isegformer_state_dict.pth", device="cpu")
    libraries = cpu_blas._openblas()
    before = _openblas_threads()
    for library in libraries:
        library.set_threads(2)
    during = []
    handle = model.backbone.register_forward_pre_hook(lambda *args: during.append(_openblas_threads()))
    torch_thread_count(threads)
    try:
        assert "not used" in cpu_blas.describe() and f"at {threads} torch threads" in cpu_blas.describe()
        images, prevs = torch.rand(2, 3, 64, 72), torch.zeros(2, 1, 64, 72)
        points = torch.tensor([[[30.0, 30.0, 0], [-1, -1, -1]]] * 2, dtype=torch.float64)
        with torch.inference_mode():
            model(images, prevs, points)
    finally:
        handle.remove()
        for library, count in zip(libraries, before):
            library.set_threads(count)
    assert openblas_calls == []
    assert during and all(counts == [2] * len(libraries) for counts in during)


def test_numpys_blas_is_recognised_without_its_build_report(monkeypatch):
    """NumPy before 1.25 has no ``show_config(mode="dicts")``: its bundled OpenBLAS is then
    recognised by where it lies, and another package's OpenBLAS is not taken for NumPy's."""
    threadpoolctl = pytest.importorskip("threadpoolctl")

    def no_report(mode=None):
        raise TypeError("show_config() got an unexpected keyword argument 'mode'")

    monkeypatch.setattr(np, "show_config", no_report)
    site = os.path.dirname(os.path.dirname(os.path.abspath(np.__file__)))
    for folder, expected in ((os.path.join(site, "numpy.libs"), True),
                             (os.path.join(site, "numpy", ".dylibs"), True),
                             (os.path.join(site, "scipy.libs"), False),
                             ("/usr/lib/x86_64-linux-gnu", False)):
        libraries = [{"internal_api": "openblas", "filepath": os.path.join(folder, "libopenblas.so")}]
        monkeypatch.setattr(threadpoolctl, "threadpool_info", lambda: libraries)
        assert cpu_blas._numpy_uses_openblas() is expected, folder
