"""The lab's one error type: its message is the one line ``shoal lab`` prints."""

from __future__ import annotations


class LabError(Exception):
    pass
