"""One run at a time per database: an flock that dies with its process."""

from __future__ import annotations

import contextlib
import fcntl
import os

from .errors import LockBusy


@contextlib.contextmanager
def hold(lock_dir: str, label: str):
    """Hold `<lock_dir>/<label>.lock`; a crashed run cannot leave it stuck."""
    os.makedirs(lock_dir, mode=0o700, exist_ok=True)
    path = os.path.join(lock_dir, f"{label}.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise LockBusy(
                f"Another lifeboat run for {label} is in progress (pid {holder}).",
                "Wait for it to finish; the lock frees itself when that process ends.",
            ) from None
        # The pid is only a courtesy for the next run's message: a full disk
        # must not turn into a failure here.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)
