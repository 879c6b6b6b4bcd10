"""Giving freed heap memory back to the system (glibc), so that the resident size follows
what is alive.

glibc serves blocks below its mmap threshold (which grows to 32 MB once such a block has been
freed) from its heap and keeps them there when they are freed: after a network is converted
to channels-last or a batch of frames is encoded, hundreds of MB stay resident although
nothing uses them. ``malloc_trim(0)`` returns the free pages. Elsewhere (macOS, Windows, musl)
this is a no-op.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys
from functools import lru_cache


@lru_cache(maxsize=1)
def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_free_heap() -> bool:
    """Return free heap pages to the system; True where that was possible."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
