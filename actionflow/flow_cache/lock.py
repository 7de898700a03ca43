"""Per-video locks: processes sharing a cache folder never compute the same video twice.

An exclusive ``fcntl.flock`` on ``<cache file>.lock``, which the kernel drops if its holder
dies, so a killed process never leaves a video locked.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path


class VideoLock:
    """An exclusive ``fcntl.flock`` on ``<cache file>.lock``; the kernel drops it if the holder dies.

    The lock file is removed on release. A waiter that then wins the lock on the removed
    file notices (its descriptor's inode is no longer the path's) and tries again, so
    removing it never lets two holders in.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self, blocking: bool = True) -> bool:
        """Take the lock; with ``blocking=False`` return False at once when another process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    return False
                raise
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                return True
            os.close(fd)  # the holder before us removed this lock file: lock the new one

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> VideoLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def lock_is_held(lock_path: str | os.PathLike) -> bool:
    """Whether some live process holds the lock at ``lock_path`` (False when there is no lock file)."""
    try:
        fd = os.open(lock_path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))  # a FIFO must not block
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)
