"""The worker thread's jobs, seen from the GUI thread, without Qt.

Jobs run on ``isegformer.slicer_support.worker.Worker``; MRML is only touched here, on the
calling (GUI) thread, when :meth:`JobQueue.poll` delivers a finished job to its ``apply``
function. The widget polls on a QTimer; scripts and tests call :meth:`JobQueue.wait`.
"""
import time
import traceback as tracebacks

from . import support


class JobEvent:
    """A worker event translated for the widget (no isegformer types leak into Qt code).

    ``kind`` is "progress" (``done``/``total``/``message``) or "done" (``error``,
    ``cancelled``, ``traceback``).
    """

    def __init__(self, kind, jobId, done=0, total=0, message="", error=None, cancelled=False, traceback=""):
        self.kind = kind
        self.jobId = jobId
        self.done = done
        self.total = total
        self.message = message
        self.error = error
        self.cancelled = cancelled
        self.traceback = traceback


class JobQueue:
    """Jobs on one worker thread, in order; each result is applied on the polling thread."""

    def __init__(self, name="isegformer-slicer"):
        self._name = name
        self._worker = None
        self._appliers = {}  # job id -> function applying its result on the GUI thread
        self._onFailure = {}  # job id -> function undoing the GUI-side bookkeeping of a failed job

    @property
    def worker(self):
        if self._worker is None:
            self._worker = support().worker.Worker(name=self._name)
        return self._worker

    def submit(self, function, label="", apply=None, onFailure=None):
        """Run ``function(progress)`` on the worker; ``apply(result)`` runs later on the polling
        thread, ``onFailure()`` instead when the job fails or is cancelled."""
        jobId = self.worker.submit(function, label=label)
        if apply is not None:
            self._appliers[jobId] = apply
        if onFailure is not None:
            self._onFailure[jobId] = onFailure
        return jobId

    def poll(self):
        """Deliver finished jobs: apply their results (MRML writes happen here); return events."""
        if self._worker is None:
            return []
        workerModule = support().worker
        events = []
        for event in self._worker.poll():
            if isinstance(event, workerModule.Progress):
                events.append(JobEvent("progress", event.job_id, event.done, event.total, event.message))
                continue
            apply = self._appliers.pop(event.job_id, None)
            onFailure = self._onFailure.pop(event.job_id, None)
            error, trace = event.error, event.traceback
            if error is None and apply is not None:
                try:
                    apply(event.value)
                except Exception as err:
                    error, trace = err, tracebacks.format_exc()
            if error is not None and onFailure is not None:
                onFailure()
            events.append(JobEvent("done", event.job_id, error=error, cancelled=event.cancelled, traceback=trace))
        return events

    @property
    def busy(self):
        return self._worker is not None and self._worker.busy

    @property
    def pendingCount(self):
        return self._worker.pending_count if self._worker is not None else 0

    def cancel(self):
        if self._worker is not None:
            self._worker.cancel()

    def wait(self, timeout=None):
        """Block until the worker is idle, applying the results; raises the first job error."""
        events = []
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.busy:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError("iSegFormer jobs did not finish in time.")
            time.sleep(0.02)
            events += self.poll()
        events += self.poll()
        for event in events:
            if event.kind == "done" and event.error is not None and not event.cancelled:
                raise event.error
        return events

    def shutdown(self):
        if self._worker is not None:
            self._worker.shutdown(wait=False)
            self._worker = None
