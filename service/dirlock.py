"""An exclusive lock on a data directory, so that two processes never write the same indexes."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from tessera.errors import TesseraError

LOCK_NAME = ".tessera.lock"


class DataDirInUse(TesseraError):
    """Another process (a server, an indexing job, a local client) has the data directory open."""


class DataDirLock:
    """``flock`` on ``DIR/.tessera.lock``, held until :meth:`release` (or the process ends, even by SIGKILL)."""

    def __init__(self, data_dir: str | Path) -> None:
        self.path = Path(data_dir) / LOCK_NAME
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(self._fd)
            self._fd = None
            raise DataDirInUse(
                f"data directory {self.path.parent} is in use by another process (pid {holder}); stop it, "
                "or talk to it through its server (--server HOST:PORT) instead of opening the folder"
            ) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
