"""Running the samples of a CPU batch side by side, each on its own threads.

A click's network call has two samples: the image and its horizontal flip. Torch on the CPU
splits every operation of a batch-2 call across its threads, so the threads meet at a barrier
after each of the several hundred operations of a Swin-B forward, and the small ones (norms,
window gathers, the attention of one window group) scale poorly. Running each sample as its
own stream on its share of the threads removes those meetings (measured in the README's
performance table), with the same result: in inference every operation of the click model
computes each sample of a batch independently of the others.

Torch's thread count is one setting for the whole process, so it is lowered for the call and
restored after it; nothing else in the process should run torch operations on the CPU at the
same time (the Slicer module's worker runs one job at a time). Grad and inference modes are
per thread in torch, so each stream enters the caller's.
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
    (default: torch's current count). One stream means: run the batch as it is."""
    threads = torch.get_num_threads() if threads is None else int(threads)
    streams = min(int(batch), threads)
    if streams < 2:
        return 1, max(threads, 1)
    return streams, threads // streams


def run_in_streams(function: Callable[..., Any], *tensors: torch.Tensor) -> Any:
    """``function(*tensors)``, computed on slices of the batch (dim 0 of every tensor) in
    parallel streams and joined again along dim 0 (a tensor, or a list or tuple of them).

    With one sample, one torch thread, or a tensor off the CPU it is one plain call.
    """
    streams, per_stream = stream_plan(int(tensors[0].shape[0]))
    if streams == 1 or getattr(_stream, "active", False) or any(t.device.type != "cpu" for t in tensors):
        return function(*tensors)
    batch = int(tensors[0].shape[0])
    bounds = [batch * s // streams for s in range(streams + 1)]
    chunks = [tuple(t[lo:hi] for t in tensors) for lo, hi in zip(bounds, bounds[1:])]
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
