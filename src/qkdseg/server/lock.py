"""One process per service directory: an exclusive OS lock on ``DIR/lock``.

Two servers on one directory would book the same pad bits and fork the
audit chain (issue 20), so every process that writes a service directory
(``kms serve``, ``kms rotate-storage-key``, and the network's ``node
serve``) takes :func:`lock_directory` first. The lock is ``flock(2)`` on an
open file: the kernel drops it when the process ends, ``kill -9``
included, so a crash leaves no stale lock. The file holds the pid of the
holder, for the refusal's message; its presence alone means nothing.

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> lock = lock_directory(d)
>>> try:
...     lock_directory(d)
... except Exception as err:
...     print(type(err).__name__, "pid" in str(err))
InvalidRequest True
>>> lock.release()
>>> lock_directory(d).release()
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from ..errors import InvalidRequest

LOCK_NAME = "lock"


class DirLock:
    """An exclusive lock held on a directory until :meth:`release` (or the end of the process)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def __enter__(self) -> "DirLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def lock_directory(directory: str | Path, what: str = "a key service") -> DirLock:
    """Take the exclusive lock of ``directory``; :class:`InvalidRequest` naming the holder's pid if it is taken.

    ``what`` names the holder in the refusal ("a key service", "a node").
    """
    d = Path(directory)
    path = d / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as err:
        raise InvalidRequest(f"{path}: cannot create the directory's lock file: {err.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        finally:
            os.close(fd)
        raise InvalidRequest(f"{d}: {what} (pid {pid}) is already using this directory; one process per "
                             "directory (stop it first)") from None
    except OSError as err:
        os.close(fd)
        raise InvalidRequest(f"{path}: cannot lock: {err.strerror}") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:
        pass  # the lock is held; the pid is only for messages
    return DirLock(path, fd)
