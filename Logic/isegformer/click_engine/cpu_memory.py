"""Keep the CPU allocator's large blocks between clicks, so a click does not page-fault its memory.

A Swin-B click allocates and frees about a gigabyte of activations in blocks of up to 40 MB.
glibc's malloc serves blocks above its mmap threshold (at most 32 MB by default) with a fresh
``mmap`` and gives them back on ``free``; the heap's free top is also given back above 128 kB.
Each click then page-faults every page of those blocks again: about 100,000 minor faults per
forward pass at 384x384, each one a kernel entry that zero-fills 4 kB. Raising both thresholds
keeps the freed blocks in the heap for the next click (measured: 0 faults per forward instead of
~100,000, the same peak RSS, since every click needs the same blocks again).

The cost: the memory of the largest click stays resident between clicks instead of returning
to the system. It is applied once per process, only with glibc (Linux), only for CPU models.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
_M_MMAP_THRESHOLD = -3
_RETAIN_BYTES = 2**31 - 1  # larger than any block a click allocates
_applied: bool | None = None


def retain_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds once; True where they are (now) raised."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    _applied = bool(mallopt(_M_MMAP_THRESHOLD, _RETAIN_BYTES)) and bool(
        mallopt(_M_TRIM_THRESHOLD, _RETAIN_BYTES))
    log.debug("glibc malloc keeps freed blocks between clicks: %s", _applied)
    return _applied
