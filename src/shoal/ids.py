"""Object IDs in Swarm mode's shape: 25 random base-36 characters (tasks, services, nodes)."""

from __future__ import annotations

import os

_ALPHABET = b"0123456789abcdefghijklmnopqrstuvwxyz"
# Byte → base-36 character. 256 is not a multiple of 36, so the first four characters come up
# 8/7 as often as the rest; 25 of them still carry over 128 bits, and one translate of
# os.urandom is ~15x faster than big-integer division, which mattered at 100,000 tasks.
_TABLE = bytes(_ALPHABET[i % 36] for i in range(256))


def new_id() -> str:
    """A fresh object ID."""
    return os.urandom(25).translate(_TABLE).decode()
