"""Object IDs in Swarm mode's shape: 25 random base-36 characters (tasks, services, nodes)."""

from __future__ import annotations

import secrets

_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


def new_id() -> str:
    """A fresh object ID; 25 base-36 characters carry about 129 bits of randomness."""
    n = secrets.randbits(130)
    out = []
    for _ in range(25):
        n, r = divmod(n, 36)
        out.append(_ALPHABET[r])
    return "".join(out)
