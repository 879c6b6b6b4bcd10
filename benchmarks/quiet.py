"""Waiting for a quiet machine before a timed run.

On these small shared machines one other busy process halves a run's speed, and the 1-minute
load average lags: a run started right after another one sees its load. The benchmarks that
start fresh processes one after the other (``propagation.py``, ``click_latency.py
--processes``) can wait before each one until the load average is below a limit, and print the
load each run started at.
"""
from __future__ import annotations

import os
import time


def wait_for_quiet_machine(limit: float | None, timeout_s: float = 900.0, poll_s: float = 5.0) -> float:
    """Wait until the 1-minute load average is below ``limit`` (None: do not wait), at most
    ``timeout_s`` seconds; return the load average at the end of the wait."""
    started = time.monotonic()
    while limit is not None and os.getloadavg()[0] >= limit and time.monotonic() - started < timeout_s:
        time.sleep(poll_s)
    return os.getloadavg()[0]
