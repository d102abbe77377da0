"""Join tokens in Swarm mode's format: ``SWMTKN-1-<CA digest>-<secret>``.

The digest lets a joining host pin the cluster's root CA before it trusts anything the manager
says; the secret decides the role it joins with. Both are base-36, as swarmkit writes them.
"""

from __future__ import annotations

import hashlib
import re
import secrets

_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


def _base36(n: int, width: int) -> str:
    out = []
    for _ in range(width):
        n, r = divmod(n, 36)
        out.append(_ALPHABET[r])
    return "".join(reversed(out))


def ca_digest(ca_cert_pem: str) -> str:
    """Base-36 SHA-256 of the root certificate's PEM (50 characters)."""
    return _base36(int.from_bytes(hashlib.sha256(ca_cert_pem.encode()).digest(), "big"), 50)


def generate_join_token(ca_cert_pem: str) -> str:
    """A fresh token for the CA: the secret is 128 random bits (25 base-36 characters)."""
    return f"SWMTKN-1-{ca_digest(ca_cert_pem)}-{_base36(secrets.randbits(128), 25)}"


_TOKEN = re.compile(r"^SWMTKN-1-([0-9a-z]{50})-([0-9a-z]{1,64})$")


def parse_join_token(token: str) -> tuple[str, str]:
    """Return (CA digest, secret); raises ValueError on anything not shaped like a token (only
    ASCII base-36 passes, so what is compared afterwards is always ASCII)."""
    match = _TOKEN.match(token)
    if match is None:
        raise ValueError("invalid join token")
    return match.group(1), match.group(2)
