"""Atomic file writes (a temporary file beside the target, flushed, then renamed over it) and locks.

A reader (or a run killed mid-write) never sees half a file: it sees the old content or the new.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _default_mode() -> int:
    """0o666 less the process umask: what ``open(path, "w")`` would give (mkstemp makes files 0o600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


class Locked(RuntimeError):
    """The lock is held by another live process; the message names its host and pid."""


class ExclusiveLock:
    """An exclusive, non-blocking lock on ``path``: ``with ExclusiveLock(p):`` or ``acquire()``/``release()``.

    Built on ``flock``: the kernel drops the lock when its holder dies, however it dies (SIGKILL included),
    so a lock is never stale; the file is never deleted (deleting it would let a second process lock a new
    file while the first still holds the old one). The holder's host, pid and start time are written into
    the file so that a refusal can say who holds it.
    """

    def __init__(self, path):
        self.path = Path(path)
        self._fd = None

    def holder(self) -> str:
        try:
            return self.path.read_text().strip() or "unknown"
        except OSError:
            return "unknown"

    def acquire(self, *, wait: bool = False) -> "ExclusiveLock":
        """Take the lock, or raise :class:`Locked`; ``wait``: block until the holder releases it."""
        import fcntl
        import socket
        import time

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, _default_mode())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise Locked(f"{self.path} is held by {self.holder()}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"host {socket.gethostname()} pid {os.getpid()} since {time.strftime('%F %T')}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
