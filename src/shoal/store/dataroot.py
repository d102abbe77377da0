"""One process at a time per data root: the daemon, or an offline ``shoal store`` command.

``shoal store rotate-key`` (and ``migrate``) rewrite the store and the key file under a stopped
daemon; a daemon still running would go on sealing with the key it cached and write rows that the
rewritten key file no longer opens. An advisory ``flock`` on ``<data-root>/lock`` makes the second
one fail at once; the kernel drops it when its holder exits, even killed."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from shoal.errors import Conflict, InvalidArgument

LOCK_FILE = "lock"


class DataRootLock:
    def __init__(self, data_root: Path, who: str = "a Shoal daemon") -> None:
        self.path = Path(data_root) / LOCK_FILE
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except FileNotFoundError:
            raise InvalidArgument(f"{data_root}: no such directory") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise Conflict(f"{data_root} is in use by another process ({who} running on it?); stop it first") from None
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the lock
            self._fd = None
