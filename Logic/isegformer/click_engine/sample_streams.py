"""Running the samples of a CPU batch side by side, each on its own threads.

A click's network call has two samples: the image and its horizontal flip. Torch on the CPU
splits every operation of a batch-2 call across its threads, so the threads meet at a barrier
after each of the several hundred operations of a Swin-B forward, and the small ones (norms,
window gathers, the attention of one window group) scale poorly. Running each sample as its
own stream on its share of the threads removes those meetings (measured in the README's
performance table), with the same result: in inference every operation of the click model
computes each sample of a batch independently of the others.

Torch's thread count is one setting for the whole process, so it is lowered for the call and
restored after it. Nothing else in the process should run torch operations on the CPU at the
same time (the Slicer module's worker runs one job at a time): they would run on one thread
meanwhile, and a thread whose first torch operation falls in that window keeps one thread
(``prepare_thread`` avoids that for a thread known to use torch later, e.g. the one that
starts a background warm-up). Grad and inference modes are per thread in torch, so each stream
enters the caller's; under CPU autocast the batch runs as one. Forward hooks inside
``function`` run once per stream, with that stream's part of the batch, in its thread.

``split_always`` (the int8 fast CPU mode): the samples run one by one even on one thread, since
int8 layers quantize their input with one scale per call: a sample's result must not depend
on the thread count or on the other sample of the batch.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Optional

import torch

_lock = threading.Lock()  # one call at a time changes the thread count and uses the pool
_stream = threading.local()  # set inside a stream: a nested call runs plainly, never waits on _lock
_pool: Optional[ThreadPoolExecutor] = None
_pool_workers = 0


def stream_plan(batch: int, threads: Optional[int] = None) -> tuple[int, int]:
    """(streams, torch threads per stream) for ``batch`` samples on ``threads`` threads
    (default: torch's current count): the most streams that share the threads evenly (3
    threads and 2 samples stay one batch on 3 threads, rather than leave a thread idle). One
    stream means: run the batch as it is."""
    threads = torch.get_num_threads() if threads is None else int(threads)
    streams = min(int(batch), threads)
    while streams > 1 and threads % streams:
        streams -= 1
    if streams < 2:
        return 1, max(threads, 1)
    return streams, threads // streams


def prepare_thread() -> None:
    """Fix the calling thread's torch thread count now (torch reads it once per thread, at the
    thread's first parallel operation), so that it never takes the lowered count of a stream
    call running in another thread at that moment."""
    torch.get_num_threads()


def run_in_streams(function: Callable[..., Any], *tensors: torch.Tensor, split_always: bool = False,
                   parallel: bool = True) -> Any:
    """``function(*tensors)``, computed on slices of the batch (dim 0 of every tensor) in
    parallel streams and joined again along dim 0 (a tensor, or a list or tuple of them).

    With one sample, one torch thread, a tensor off the CPU or CPU autocast on, it is one plain
    call (or, with ``split_always``, one call per sample in turn); ``parallel=False`` makes it
    so always.
    """
    batch = int(tensors[0].shape[0])
    streams, per_stream = stream_plan(batch)
    if not parallel or getattr(_stream, "active", False) or any(t.device.type != "cpu" for t in tensors) \
            or cpu_autocast_enabled():
        streams = 1
    if streams == 1:
        if not split_always or batch < 2:
            return function(*tensors)
        return _joined([function(*(t[i:i + 1] for t in tensors)) for i in range(batch)])
    bounds = [batch * s // streams for s in range(streams + 1)]
    chunks = [tuple(t[lo:hi] for t in tensors) for lo, hi in zip(bounds, bounds[1:])]
    if split_always and any(len(chunk[0]) > 1 for chunk in chunks):
        per_sample = function
        function = lambda *part: _joined([per_sample(*(t[i:i + 1] for t in part))  # noqa: E731
                                          for i in range(int(part[0].shape[0]))])
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

    def run(chunk) -> Any:
        # OpenMP keeps a thread count per thread, which torch reads once per thread: set it
        # here, or a pool thread would keep the count of the call that started it.
        torch.set_num_threads(per_stream)
        _stream.active = True
        try:
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                return function(*chunk)
        finally:
            _stream.active = False

    with _lock:
        saved = torch.get_num_threads()
        try:
            pool = _executor(streams - 1)
            others = [pool.submit(run, chunk) for chunk in chunks[1:]]
            try:
                first = run(chunks[0])
            finally:
                results = [future.result() for future in others]  # none is left running
        finally:
            torch.set_num_threads(saved)
    return _joined([first, *results])


def cpu_autocast_enabled() -> bool:
    """Whether CPU autocast is on in this thread."""
    try:
        return bool(torch.is_autocast_enabled("cpu"))
    except TypeError:  # older torch: no device argument
        return bool(torch.is_autocast_cpu_enabled())


def _joined(parts: list) -> Any:
    head = parts[0]
    if isinstance(head, torch.Tensor):
        return torch.cat(parts, dim=0)
    if isinstance(head, (list, tuple)):
        return type(head)(_joined([p[i] for p in parts]) for i in range(len(head)))
    raise TypeError(f"run_in_streams joins tensors, lists and tuples, not {type(head).__name__}")


def _executor(workers: int) -> ThreadPoolExecutor:
    # Kept between calls: a new thread pays for its thread pools' and BLAS buffers' set-up.
    global _pool, _pool_workers
    if _pool is None or _pool_workers < workers:
        if _pool is not None:
            _pool.shutdown(wait=True)
        _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="isegformer-stream")
        _pool_workers = workers
    return _pool
