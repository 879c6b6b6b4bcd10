"""One persistent worker thread for all model work, with a job queue and an event queue.

The GUI thread submits jobs and polls events (a Qt timer in Slicer); the worker thread runs the
jobs one after another, in the order they were submitted, and never touches the GUI or MRML. Jobs
that arrive while another runs wait in the queue: none is lost. Each job is called as
``fn(progress)``, where ``progress(done, total, message)`` records progress and raises
:class:`isegformer.errors.CancelledError` once the job was cancelled, following the package's
progress convention. A job's exception is delivered as an event, never raised in the worker.

Everything here is plain ``threading``/``queue``: no Qt, so it is tested with pytest.
"""
from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

from ..errors import CancelledError, ISegFormerError
from ..progress import ProgressCallback

log = logging.getLogger(__name__)

JobFunction = Callable[[ProgressCallback], Any]


@dataclass(frozen=True)
class Progress:
    """A running job reported progress."""

    job_id: int
    label: str
    done: int
    total: int
    message: str


@dataclass(frozen=True)
class Done:
    """A job finished: with a value, an error, or cancelled (then ``error`` is a CancelledError)."""

    job_id: int
    label: str
    value: Any = None
    error: Optional[BaseException] = None
    traceback: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def cancelled(self) -> bool:
        return isinstance(self.error, CancelledError)


Event = Union[Progress, Done]


@dataclass
class _Job:
    job_id: int
    label: str
    fn: JobFunction
    cancel: threading.Event = field(default_factory=threading.Event)


class WorkerStoppedError(ISegFormerError):
    """A job was submitted to a worker that was shut down."""


class Worker:
    """A single persistent thread that runs submitted jobs in order (see the module docstring)."""

    def __init__(self, name: str = "isegformer-worker") -> None:
        self._jobs: "queue.Queue[Optional[_Job]]" = queue.Queue()
        self._events: "queue.Queue[Event]" = queue.Queue()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._pending: dict[int, _Job] = {}  # submitted and not finished, running one included
        self._running: Optional[_Job] = None
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # ---- GUI side -------------------------------------------------------------------------
    def submit(self, fn: JobFunction, label: str = "") -> int:
        """Queue ``fn(progress)``; returns the job id that its events carry."""
        with self._lock:
            if self._stopped:
                raise WorkerStoppedError(
                    "The worker thread was shut down; reopen the module (or create a new Logic) to continue."
                )
            job = _Job(job_id=next(self._ids), label=label, fn=fn)
            self._pending[job.job_id] = job
        self._jobs.put(job)
        return job.job_id

    def poll(self) -> list[Event]:
        """All events delivered since the last call, in order, without waiting."""
        events = []
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                return events

    def wait(self, job_id: Optional[int] = None, timeout: Optional[float] = None) -> list[Event]:
        """Block until job ``job_id`` (or every pending job) is done; return the events meanwhile.

        For scripts and tests. Raises TimeoutError if it takes longer than ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        events: list[Event] = []
        while True:
            with self._lock:
                finished = (job_id not in self._pending) if job_id is not None else not self._pending
            if finished:
                return events + self.poll()
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"The worker did not finish within {timeout} s.")
            try:
                events.append(self._events.get(timeout=0.05 if remaining is None else min(0.05, remaining)))
            except queue.Empty:
                pass

    def cancel(self, job_id: Optional[int] = None) -> None:
        """Cancel one job (queued or running), or every pending job when ``job_id`` is None.

        A queued job is not run; a running job stops at its next progress call. Either way a
        ``Done`` event with a CancelledError is delivered for it.
        """
        with self._lock:
            jobs = list(self._pending.values()) if job_id is None else [self._pending.get(job_id)]
        for job in jobs:
            if job is not None:
                job.cancel.set()

    @property
    def busy(self) -> bool:
        """Whether a job is running or waiting."""
        with self._lock:
            return bool(self._pending)

    @property
    def pending_count(self) -> int:
        with self._lock:
            return len(self._pending)

    @property
    def running_label(self) -> Optional[str]:
        with self._lock:
            return None if self._running is None else self._running.label

    def shutdown(self, wait: bool = True, timeout: Optional[float] = 10.0) -> None:
        """Cancel what is pending, stop the thread (waiting for it up to ``timeout`` seconds)."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self.cancel()
        self._jobs.put(None)
        if wait:
            self._thread.join(timeout)

    # ---- worker side ----------------------------------------------------------------------
    def _progress_for(self, job: _Job) -> ProgressCallback:
        def progress(done: int, total: int, message: str = "") -> None:
            if job.cancel.is_set():
                raise CancelledError(f"'{job.label or 'The job'}' was cancelled; nothing was changed.")
            self._events.put(Progress(job.job_id, job.label, int(done), int(total), str(message)))

        return progress

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            with self._lock:
                self._running = job
            start = time.perf_counter()
            try:
                if job.cancel.is_set():
                    raise CancelledError(f"'{job.label or 'The job'}' was cancelled before it started.")
                value = job.fn(self._progress_for(job))
                event: Done = Done(job.job_id, job.label, value=value, seconds=time.perf_counter() - start)
            except BaseException as err:  # delivered to the GUI thread, never raised here
                if not isinstance(err, CancelledError):
                    log.debug("job %s (%s) failed", job.job_id, job.label, exc_info=True)
                event = Done(
                    job.job_id,
                    job.label,
                    error=err,
                    traceback=traceback.format_exc(),
                    seconds=time.perf_counter() - start,
                )
            with self._lock:
                self._running = None
                self._pending.pop(job.job_id, None)
            self._events.put(event)
