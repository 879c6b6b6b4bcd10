"""The click model's linear layers through NumPy's OpenBLAS, where that is faster than PyTorch's.

PyTorch's x86 wheels do float32 matrix products with MKL. On this project's AMD EPYC (Zen 3)
machines a Swin-B click took 0.82-0.96x of its MKL time (two before-and-after runs, unzoomed and
zoomed) with the OpenBLAS that NumPy's wheels bundle instead; the linear layers are about three quarters of a CPU click (README, *Fidelity
and performance*; ``benchmarks/click_latency.py`` prints which one ran). A click's two
samples already run as one single-thread stream each (``sample_streams.py``), so each stream
calls OpenBLAS on one thread, in its own thread, with the GIL released.

Where it applies (anything else is PyTorch's ``F.linear`` or the layer's own call):

- a network call whose operations run on one torch thread each: the streams of a click on 2
  torch threads, or any call on 1. With more threads per stream (3 or more torch threads,
  PyTorch's default on a machine with that many cores) MKL's own threading is kept, since
  nothing was measured there, and OpenBLAS is left alone;
- inside :func:`single_thread_blas`, which keeps OpenBLAS on one thread for that call. With
  its own thread pool, OpenBLAS and PyTorch's OpenMP threads competed for the cores and the
  click was slower than with MKL. The count is process-wide, like torch's: NumPy products
  elsewhere in the process meanwhile run on one thread too;
- in the threads that compute the call (:func:`products_here`), never in another thread that
  happens to run torch at the same time;
- float32 CPU tensors, no gradient of any kind (backward, forward-mode, ``torch.func``), no
  autocast, tracing or compiling; for a layer, a plain ``nn.Linear`` without hooks or a
  replaced ``forward`` (an int8 layer or a parametrized one runs as itself).

The choice, ``ISEGFORMER_CPU_BLAS`` (read once, or set with :func:`set_mode`):

- ``auto`` (default): OpenBLAS on an AMD processor when PyTorch uses MKL, NumPy uses OpenBLAS
  and ``threadpoolctl`` (which finds the loaded OpenBLAS) is installed; otherwise PyTorch's;
- ``torch``: always PyTorch's;
- ``numpy``: OpenBLAS wherever it is found, whatever the processor (to measure another machine).

The two differ by float rounding only, as any other order of summation does: about 2e-7 in a
Swin-B click's logits, against the 1e-5 allowed.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import platform
import sys
import threading
from typing import Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidInputError
from .sample_streams import cpu_autocast_enabled, stream_plan

MODE_VARIABLE = "ISEGFORMER_CPU_BLAS"
MODES = ("auto", "torch", "numpy")

_lock = threading.Lock()
_mode: Optional[str] = None      # None: not read from the environment yet
_enabled: Optional[bool] = None  # the resolved choice for this process
_depth = 0                       # open single_thread_blas scopes, over all threads
_here = threading.local()        # .active: this thread computes a call inside such a scope
_saved_threads: list[int] = []   # OpenBLAS's thread counts before the outermost scope


def check_mode(value: object, where: str = MODE_VARIABLE) -> str:
    """``value`` as one of :data:`MODES`; InvalidInputError naming ``where`` otherwise."""
    text = value.strip().lower() if isinstance(value, str) else value
    if text not in MODES:
        raise InvalidInputError(
            f"{where} is {value!r}; use one of {', '.join(MODES)} (auto, the default, picks "
            "NumPy's OpenBLAS where it was measured faster; torch keeps PyTorch's own).")
    return text


def mode() -> str:
    """The chosen mode: :func:`set_mode`'s, or ``ISEGFORMER_CPU_BLAS`` (default ``auto``).

    An unknown value in the variable raises InvalidInputError, at the first click or when a
    CPU predictor is made (``check_click_precision``), never silently ignored."""
    global _mode
    if _mode is None:
        _mode = check_mode(os.environ.get(MODE_VARIABLE, "auto") or "auto")
    return _mode


def set_mode(value: Optional[str]) -> None:
    """Choose the mode for this process (None: read ``ISEGFORMER_CPU_BLAS`` again)."""
    global _mode, _enabled
    checked = None if value is None else check_mode(value, "The CPU BLAS mode")
    with _lock:
        if _depth:
            raise InvalidInputError("The CPU BLAS mode cannot change while a network call runs.")
        _mode, _enabled = checked, None


def enabled() -> bool:
    """Whether network calls on the CPU use NumPy's OpenBLAS for their linear layers."""
    global _enabled
    if _enabled is None:
        chosen = mode()
        wanted = chosen == "numpy" or (
            chosen == "auto" and cpu_vendor() == "AMD" and torch.backends.mkl.is_available())
        _enabled = wanted and _numpy_uses_openblas() and _openblas() is not None
    return _enabled


def _numpy_uses_openblas() -> bool:
    """NumPy's own BLAS is OpenBLAS (np.matmul runs it, so it is the one to limit)."""
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return "openblas" in str(blas.get("name", "")).lower()
    except Exception:  # NumPy before 1.25 has no such report: look for its bundled library
        try:
            from threadpoolctl import threadpool_info
        except ImportError:
            return False
        site = os.path.dirname(os.path.dirname(os.path.abspath(np.__file__)))

        def bundled_with_numpy(path: str) -> bool:  # numpy.libs/, numpy/.libs/, numpy/.dylibs/
            relative = os.path.relpath(os.path.abspath(path), site) if path else os.pardir
            return not relative.startswith(os.pardir) and relative.split(os.sep)[0].startswith("numpy")

        return any(info.get("internal_api") == "openblas" and bundled_with_numpy(info.get("filepath", ""))
                   for info in threadpool_info())


def describe() -> str:
    """One line for benchmark reports: which BLAS a CPU click's linear layers use."""
    torch_blas = "MKL" if torch.backends.mkl.is_available() else "its own BLAS"
    setting = f"{MODE_VARIABLE}={mode()}"
    if not enabled():
        return f"PyTorch's ({torch_blas}); {setting}"
    threads = torch.get_num_threads()
    streams, per_stream = stream_plan(2, threads)
    if per_stream != 1:
        return (f"PyTorch's ({torch_blas}): at {threads} torch threads a click runs on "
                f"{per_stream} threads per stream, where OpenBLAS is not used; {setting}")
    library = _openblas()[0]
    where = "each of a click's two sample streams" if streams > 1 else "the one torch thread"
    return (f"NumPy's OpenBLAS {library.version} ({library.architecture} kernels), one thread "
            f"in {where}; {setting}")


def cpu_vendor() -> str:
    """``AMD``, ``Intel`` or ``other``: /proc/cpuinfo on Linux, the processor string elsewhere
    (Windows gives e.g. ``AMD64 Family 25 Model 1 Stepping 1, AuthenticAMD``)."""
    text = ""
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
                text = cpuinfo.read(65536)
        except OSError:
            text = ""
    return vendor_in(text or platform.processor() or "")


def vendor_in(text: str) -> str:
    """The vendor named by a CPUID vendor string in ``text``: ``AMD``, ``Intel`` or ``other``.

    Only the vendor strings count: "AMD64" names the instruction set, on Intel chips too."""
    if "AuthenticAMD" in text:
        return "AMD"
    if "GenuineIntel" in text:
        return "Intel"
    return "other"


class _OpenBLAS:
    """One loaded OpenBLAS library, whose thread count this module sets directly.

    threadpoolctl finds the libraries (on Linux, macOS and Windows) but is not used to set the
    count: it lets only the first Python thread that set it do so again, and a click may run
    in a worker thread after the main thread set it."""

    _SYMBOL_FORMS = ("{}_set_num_threads64_", "{}_set_num_threads_64_", "{}_set_num_threads")

    def __init__(self, info: dict) -> None:
        self.version = info.get("version")
        self.architecture = info.get("architecture")
        library = ctypes.CDLL(info["filepath"])
        prefix = info.get("prefix") or "libopenblas"
        names = [prefix.removeprefix("lib"), "openblas"]
        self._set = self._get = None
        for name in dict.fromkeys(names):
            for form in self._SYMBOL_FORMS:
                setter = getattr(library, form.format(name), None)
                getter = getattr(library, form.format(name).replace("set_", "get_"), None)
                if setter is not None and getter is not None:
                    self._set, self._get = setter, getter
                    self._set.argtypes, self._set.restype = [ctypes.c_int], None
                    self._get.argtypes, self._get.restype = [], ctypes.c_int
                    return
        raise OSError(f"no thread-count functions found in {info['filepath']}")

    def threads(self) -> int:
        return int(self._get())

    def set_threads(self, count: int) -> None:
        self._set(int(count))


@functools.lru_cache(maxsize=1)
def _openblas() -> Optional[tuple[_OpenBLAS, ...]]:
    """The loaded OpenBLAS libraries (NumPy's, and any other), or None where there is none, or
    no threadpoolctl to find them, or one whose thread count cannot be set."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    try:
        found = tuple(_OpenBLAS(info) for info in threadpool_info()
                      if info.get("internal_api") == "openblas" and info.get("filepath"))
    except Exception:  # a library threadpoolctl or ctypes cannot query: keep PyTorch's BLAS
        return None
    return found or None


@contextlib.contextmanager
def single_thread_blas(threads_per_stream: int) -> Iterator[None]:
    """Around one network call whose streams run on ``threads_per_stream`` torch threads each:
    OpenBLAS on one thread while it runs, when the call can use it (one thread per stream).

    Nested and concurrent scopes share one limit, set by the first and restored by the last,
    whatever thread each runs in. The threads that compute the call enter
    :func:`products_here`."""
    global _depth, _saved_threads
    if threads_per_stream != 1:
        yield
        return
    with _lock:
        if not enabled():
            libraries = None
        else:
            libraries = _openblas()
            if _depth == 0:
                _saved_threads = [library.threads() for library in libraries]
                for library in libraries:
                    library.set_threads(1)
            _depth += 1
    if libraries is None:
        yield
        return
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                for library, count in zip(libraries, _saved_threads):
                    library.set_threads(count)
                _saved_threads = []


@contextlib.contextmanager
def products_here() -> Iterator[None]:
    """In a thread that computes a network call (the caller's, or a sample stream's): its
    linear layers may use OpenBLAS while a :func:`single_thread_blas` scope is open."""
    previous = getattr(_here, "active", False)
    _here.active = True
    try:
        yield
    finally:
        _here.active = previous


def _active() -> bool:
    return bool(_depth) and getattr(_here, "active", False)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, through OpenBLAS where it applies (see the module text)."""
    if _active() and _applies(x, weight, bias):
        return _openblas_linear(x, weight, bias)
    return F.linear(x, weight, bias)


def project(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` for a linear layer, through OpenBLAS where it applies."""
    if _active() and type(layer) is nn.Linear and not _has_hooks(layer) \
            and "forward" not in layer.__dict__ and _applies(x, layer.weight, layer.bias):
        return _openblas_linear(x, layer.weight, layer.bias)
    return layer(x)


def _has_hooks(layer: nn.Module) -> bool:
    module = nn.modules.module
    return bool(layer._forward_hooks or layer._forward_pre_hooks
                or getattr(module, "_global_forward_hooks", None)
                or getattr(module, "_global_forward_pre_hooks", None))


def _applies(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> bool:
    tensors = (x, weight) if bias is None else (x, weight, bias)
    if torch.get_num_threads() != 1 or x.numel() == 0 or x.dim() < 1 or weight.dim() != 2:
        return False
    for t in tensors:
        # A tensor subclass has its own dispatch; a negative or conjugate view is lazy.
        if type(t) not in (torch.Tensor, nn.Parameter) or t.device.type != "cpu" \
                or t.dtype != torch.float32 or t.layout != torch.strided \
                or t.is_neg() or t.is_conj():
            return False
    if bias is not None and bias.shape != (weight.shape[0],):
        return False
    # Rows of the weight may lie apart (a column slice of a larger weight), but each row must
    # be contiguous: the layout BLAS takes as a transposed operand. Anything else is copied by
    # F.linear, which is the better path for it.
    if x.shape[-1] != weight.shape[1] or weight.stride(1) != 1 or weight.stride(0) < weight.shape[1]:
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    if cpu_autocast_enabled() or torch.jit.is_tracing() or torch.jit.is_scripting() or _compiling() \
            or _transformed(x):
        return False
    return True


def _openblas_linear(x: torch.Tensor, weight: torch.Tensor,
                     bias: Optional[torch.Tensor]) -> torch.Tensor:
    rows = x.reshape(-1, x.shape[-1])
    if not rows.is_contiguous():
        rows = rows.contiguous()
    out = torch.empty((rows.shape[0], weight.shape[0]), dtype=torch.float32, device="cpu")
    # NumPy hands a C-contiguous (M, K) array and the transposed view of the (N, K) weight to
    # sgemm directly, and releases the GIL while it runs, so the streams compute side by side.
    # Its floating-point error settings must not turn an inf into a warning or an exception
    # that F.linear would not raise.
    with np.errstate(all="ignore"):
        np.matmul(rows.detach().numpy(), weight.detach().numpy().T, out=out.numpy())
    if bias is not None:
        out.add_(bias.detach())
    return out.view(*x.shape[:-1], weight.shape[0])


def _transformed(x: torch.Tensor) -> bool:
    """Forward-mode autograd or a torch.func transform (vmap, jvp...) is active around ``x``:
    both need PyTorch's own operations (private checks, skipped where torch lacks them)."""
    forward_ad = getattr(torch.autograd, "forward_ad", None)
    if getattr(forward_ad, "_current_level", -1) >= 0:
        return True
    functorch = getattr(torch._C, "_functorch", None)
    is_wrapped = getattr(functorch, "is_functorch_wrapped_tensor", None)
    return bool(is_wrapped(x)) if is_wrapped is not None else False


def _compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    is_compiling = getattr(compiler, "is_compiling", None)
    return bool(is_compiling()) if is_compiling is not None else False
