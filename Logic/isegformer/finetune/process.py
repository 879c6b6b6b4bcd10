"""Fine-tuning in a separate process, for UIs (the Slicer action) that must stay responsive.

Qt-free on purpose: the caller polls. A typical UI loop::

    job = FinetuneProcess(build_args(volumes=[img], labels=[lab], slices="40,80,120",
                                     epochs=5, out=run_dir)).start()
    # on a timer:
    for event in job.poll():
        ...                     # job.done, job.total, job.message are up to date
    if job.finished:
        outcome = job.outcome() # .status "done" / "cancelled" / "error", .checkpoint, .error
    # Cancel button:
    job.cancel()

The child is ``python -m isegformer.cli.main finetune ... --progress-json``; it prints one JSON
object per line (``start``, ``step``, ``epoch``, ``done``, ``cancelled``, ``error``). Cancelling
sends SIGTERM, which the child turns into a clean stop: the last completed epoch's checkpoint
stays intact and the run can be resumed (``--resume``).
"""
from __future__ import annotations

import logging
import os
import queue
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from ..errors import CancelledError, ISegFormerError
from ..json_io import JSONDocumentError, loads_bounded
from ..progress import ProgressCallback
from .runs import MODEL_FILE

log = logging.getLogger(__name__)

STDERR_TAIL_LINES = 40


class FinetuneProcessError(ISegFormerError):
    """The fine-tuning process failed; the message is the child's own error."""


def build_args(**options: Any) -> list[str]:
    """CLI arguments of ``isegformer finetune`` from keyword options.

    ``volumes=[a, b]`` -> ``--volumes a b``; ``steps_per_epoch=50`` -> ``--steps-per-epoch 50``;
    ``resume=True`` -> ``--resume``; None and False are left out; ``crop=(320, 480)`` gives two values.
    """
    args: list[str] = []
    for key, value in options.items():
        if value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            args.append(flag)
        elif isinstance(value, (list, tuple)):
            args += [flag, *(str(v) for v in value)]
        else:
            args += [flag, str(value)]
    return args


@dataclass
class FinetuneOutcome:
    status: str                        # "done", "cancelled" or "error"
    checkpoint: Optional[Path]         # model.pth ("done"; also the last epoch's after a cancel)
    returncode: Optional[int]
    error: Optional[str] = None
    epochs: list[dict] = field(default_factory=list)
    out_dir: Optional[Path] = None


def default_python() -> str:
    """The interpreter for the child: inside 3D Slicer its launcher ``PythonSlicer``, which sets
    up the environment that Slicer's bare ``python-real`` (``sys.executable`` there) lacks."""
    executable = Path(sys.executable)
    for name in ("PythonSlicer", "PythonSlicer.exe"):
        candidate = executable.with_name(name)
        if candidate.is_file():
            return str(candidate)
    return sys.executable


def _package_root() -> Path:
    import isegformer

    return Path(isegformer.__file__).resolve().parent.parent


class FinetuneProcess:
    """One ``isegformer finetune`` child process and what it has reported so far."""

    def __init__(self, cli_args: Sequence[str], python: Optional[str] = None,
                 env: Optional[dict[str, str]] = None) -> None:
        self.cli_args = [str(a) for a in cli_args]
        if "--progress-json" not in self.cli_args:
            self.cli_args.append("--progress-json")
        self.python = python or default_python()
        self.env = env
        self.done = 0
        self.total = 0
        self.message = ""
        self.epochs: list[dict] = []
        self.out_dir: Optional[Path] = None
        self._final: Optional[dict] = None
        self._process: Optional[subprocess.Popen] = None
        self._events: "queue.Queue[dict]" = queue.Queue()
        self._stderr: list[str] = []
        self._readers: list[threading.Thread] = []
        self._cancel_requested = False

    # --- life cycle ---------------------------------------------------------------------------------
    def start(self) -> "FinetuneProcess":
        if self._process is not None:
            raise FinetuneProcessError("This fine-tuning process was already started.")
        env = dict(os.environ if self.env is None else self.env)
        root = str(_package_root())
        env["PYTHONPATH"] = os.pathsep.join([root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        env.setdefault("PYTHONUNBUFFERED", "1")
        cmd = [self.python, "-m", "isegformer.cli.main", "finetune", *self.cli_args]
        log.info("Starting fine-tuning: %s", " ".join(cmd))
        self._process = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            env=env, text=True, encoding="utf-8", errors="replace", bufsize=1)
        self._readers = [threading.Thread(target=self._read_stdout, daemon=True),
                         threading.Thread(target=self._read_stderr, daemon=True)]
        for reader in self._readers:
            reader.start()
        return self

    @property
    def pid(self) -> Optional[int]:
        return self._process.pid if self._process else None

    @property
    def finished(self) -> bool:
        """True once the child has exited and all its output has been read."""
        if self._process is None or self._process.poll() is None:
            return False
        return not any(r.is_alive() for r in self._readers)

    def cancel(self, timeout: Optional[float] = 30.0) -> None:
        """Ask the child to stop (SIGTERM: a clean stop after the current step).

        With ``timeout=None`` this returns at once (a UI then watches :attr:`finished`; a big
        network on the CPU may take a while to finish its step); otherwise it waits up to
        ``timeout`` seconds and then kills the child.
        """
        if self._process is None or self._process.poll() is not None:
            return
        self._cancel_requested = True
        self._process.terminate()
        if timeout is None:
            return
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("The fine-tuning process did not stop in %.0f s; killing it.", timeout)
            self.kill()

    def kill(self) -> None:
        """Stop the child at once (no clean-up; the last completed epoch's files stay intact)."""
        if self._process is not None and self._process.poll() is None:
            self._cancel_requested = True
            self._process.kill()
            self._process.wait()

    # --- reading ---------------------------------------------------------------------------------------
    def _read_stdout(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                event = loads_bounded(line, "a progress line of the fine-tuning process",
                                      max_bytes=1 << 20)
            except JSONDocumentError:
                continue
            if isinstance(event, dict) and "event" in event:
                self._events.put(event)

    def _read_stderr(self) -> None:
        assert self._process is not None and self._process.stderr is not None
        for line in self._process.stderr:
            self._stderr.append(line.rstrip())
            del self._stderr[:-STDERR_TAIL_LINES]

    def poll(self) -> list[dict]:
        """The events reported since the last call (never blocks); updates done/total/message."""
        events = []
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                return events
            try:
                self._apply(event)
            except (KeyError, TypeError, ValueError):
                log.warning("Ignoring a malformed progress event: %.200r", event)
                continue
            events.append(event)

    def _apply(self, event: dict) -> None:
        kind = event.get("event")
        if kind == "start":
            self.out_dir = Path(str(event["out_dir"]))
        elif kind == "step":
            self.done, self.total = int(event["done"]), int(event["total"])
            self.message = str(event.get("message", ""))
        elif kind == "epoch":
            self.epochs.append(event)
            noc = event.get("val_noc85")
            self.message = f"epoch {event['epoch']}: IoU {event.get('iou', float('nan')):.3f}" + (
                f", NoC@85 {noc:.2f}" if noc is not None else "")
        elif kind in ("done", "cancelled", "error"):
            self._final = event

    # --- results ---------------------------------------------------------------------------------------
    def outcome(self) -> FinetuneOutcome:
        """What the finished child did; call once :attr:`finished` is True (or after :meth:`wait`)."""
        if not self.finished:
            raise FinetuneProcessError("The fine-tuning process is still running.")
        self.poll()
        final = self._final or {}
        returncode = self._process.returncode if self._process else None
        kind = final.get("event")
        checkpoint = None
        if kind == "done" and isinstance(final.get("checkpoint"), str):
            checkpoint = Path(final["checkpoint"])
        elif self.out_dir is not None and (self.out_dir / MODEL_FILE).is_file():
            checkpoint = self.out_dir / MODEL_FILE
        if kind == "done" and returncode == 0:
            return FinetuneOutcome("done", checkpoint, returncode, None, self.epochs, self.out_dir)
        if kind == "cancelled" or self._cancel_requested:
            return FinetuneOutcome("cancelled", checkpoint, returncode, None, self.epochs, self.out_dir)
        error = final.get("message") or self._stderr_error() or f"exit status {returncode}"
        return FinetuneOutcome("error", checkpoint, returncode, error, self.epochs, self.out_dir)

    def _stderr_error(self) -> str:
        lines = [line for line in self._stderr if line.strip()]
        errors = [line for line in lines if line.startswith("error:")]
        return (errors[-1][len("error:"):].strip() if errors else "\n".join(lines[-5:]))

    def wait(self, timeout: Optional[float] = None,
             on_event: Optional[Callable[[dict], None]] = None,
             interval: float = 0.1) -> FinetuneOutcome:
        """Block until the child ends (``on_event`` sees each event); raises TimeoutError."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.finished:
            for event in self.poll():
                if on_event is not None:
                    on_event(event)
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError("The fine-tuning process is still running.")
            time.sleep(interval)
        for event in self.poll():
            if on_event is not None:
                on_event(event)
        return self.outcome()


def run_finetune_process(cli_args: Sequence[str], progress: Optional[ProgressCallback] = None,
                         python: Optional[str] = None,
                         env: Optional[dict[str, str]] = None) -> Path:
    """Run ``isegformer finetune`` in a child process and return the checkpoint path.

    ``progress(done, total, message)`` follows the steps; raising CancelledError from it stops
    the child (the last completed epoch is kept) and re-raises. Failures raise FinetuneProcessError.
    """
    job = FinetuneProcess(cli_args, python=python, env=env).start()

    def forward(event: dict) -> None:
        if progress is not None and event.get("event") in ("step", "epoch"):
            progress(job.done, job.total, job.message)

    try:
        outcome = job.wait(on_event=forward)
    except BaseException:
        job.cancel()
        raise
    if outcome.status == "done" and outcome.checkpoint is not None:
        return outcome.checkpoint
    if outcome.status == "cancelled":
        raise CancelledError("Fine-tuning was cancelled; the last completed epoch is kept.")
    raise FinetuneProcessError(f"Fine-tuning failed: {outcome.error}")
