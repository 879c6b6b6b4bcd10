"""The operating system's exclusive file lock, shared by the weights cache and fine-tuning runs.

``flock`` (POSIX) and ``msvcrt.locking`` (Windows) both drop the lock when its holder dies, so a
killed process never leaves a stale lock, and both treat two separate opens of one file as
competitors, so threads of one process exclude each other too.
"""
from __future__ import annotations

import os
import sys

if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def try_lock(fd: int) -> bool:
        """Take the lock on the open file ``fd`` if no one holds it; True when taken."""
        os.lseek(fd, 0, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def unlock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def try_lock(fd: int) -> bool:
        """Take the lock on the open file ``fd`` if no one holds it; True when taken."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)


def unlock_and_close(fd: int) -> None:
    """Give the lock back and close its file (closed even when unlocking fails)."""
    try:
        unlock(fd)
    finally:
        os.close(fd)
