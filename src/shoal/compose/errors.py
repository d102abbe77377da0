"""The one error type of the Compose loader: every bad input names its file, line and key."""

from __future__ import annotations

from pathlib import Path


class ComposeError(Exception):
    """A Compose file that cannot be loaded. ``str()`` reads ``file:line: key: message``."""

    def __init__(self, message: str, file: Path | str | None = None, line: int | None = None, key: str = "") -> None:
        self.message = message
        self.file = Path(file) if file is not None else None
        self.line = line
        self.key = key
        where = str(self.file) if self.file is not None else ""
        if where and line is not None:
            where += f":{line}"
        parts = [p for p in (where, key) if p]
        super().__init__(": ".join([*parts, message]))
