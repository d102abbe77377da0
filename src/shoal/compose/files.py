"""What the Compose loader may read from the client's disk: files of bounded size, inside the project.

A Compose file names other files (``.env``, ``env_file``, ``extends.file``, secrets' and configs'
``file``) whose content the client reads and ships into the cluster. A stack file handed to a CI
job must not be able to name ``/etc/shadow`` or ``../../root/.ssh/id_rsa`` and so send the
runner's own files to the cluster, so a reference that resolves (symlinks followed) outside the
project folder is refused unless the user passes ``--allow-outside-files``. docker compose allows
``../`` paths; this rule is stricter on purpose.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

# A Compose, .env or env_file bigger than this is refused before it is read. Real Compose files are
# at most some hundred KiB. The stack a file becomes reaches the manager in one request of at most
# 16 MiB (api/app.py), which carries the normalised file and every spec (measured: 3x to 7x the
# file), so no file much past 5 MiB could deploy anyway; and loading is memory-hungry (a dense
# 1 MiB file: 80 MB to parse, 1.2 GB to load and convert), so the bound is also the client's own.
MAX_FILE_BYTES = 4 * 1024 * 1024
# A secret's or config's file: swarmkit's limits (controlapi/secrets.py), which the manager enforces
# anyway; reading no more than that keeps /dev/zero or a huge file from filling the client's memory.
MAX_SECRET_BYTES = 500 * 1024
MAX_CONFIG_BYTES = 1000 * 1024

ALLOW_OUTSIDE_FLAG = "--allow-outside-files"
OUTSIDE_HINT = (f"Shoal refuses such files (stricter than docker compose, so that a "
                f"Compose file cannot send the client's other files into the cluster); pass {ALLOW_OUTSIDE_FLAG} "
                "to allow it")


class FileTooLarge(Exception):
    """A file over its size bound; ``str()`` is the message without the file name."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"file is larger than {human_size(limit)}")
        self.limit = limit


def human_size(n: int) -> str:
    for unit, size in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} bytes"


def read_bounded(path: Path, limit: int = MAX_FILE_BYTES) -> bytes:
    """The content of ``path``, refused with FileTooLarge past ``limit`` bytes: a regular file by its
    size before any read, anything else (``/dev/zero``, a FIFO) by reading at most ``limit + 1``."""
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        if stat.S_ISREG(st.st_mode) and st.st_size > limit:
            raise FileTooLarge(limit)
        data = f.read(limit + 1)
    if len(data) > limit:
        raise FileTooLarge(limit)
    return data


def read_text(path: Path, limit: int = MAX_FILE_BYTES) -> str:
    """``read_bounded`` as UTF-8 text (what python-dotenv reads); invalid bytes raise UnicodeDecodeError."""
    return read_bounded(path, limit).decode("utf-8")


def refusal(path: Path, root: Path, allowed: bool = False) -> str | None:
    """Why ``path`` may not be read (it resolves, symlinks followed, outside ``root``), or None if it may."""
    if allowed:
        return None
    real, top = path.resolve(), root.resolve()
    if real.is_relative_to(top):
        return None
    shown = str(path) if str(path) == str(real) else f"{path} (really {real})"
    return f"{shown} is outside the project folder {top}: {OUTSIDE_HINT}"
