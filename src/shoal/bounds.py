"""Pieces the API's and the cluster port's bounds share: who counts as one client address, and a
count of things in flight per key with a cap (api/limits.py, transport/limits.py)."""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Iterator

from shoal.errors import TooManyRequests


def address_bucket(host: str) -> str:
    """The bucket of a peer address: the IPv4 address (also when IPv4-mapped), or the /64 of an IPv6
    one (a single host commonly holds a whole /64, so per-address buckets would not bound it)."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class KeyedSlots:
    """Things in flight per key (a client's streams, a node's calls); over ``cap`` a new one is
    refused at once rather than queued."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._held: dict[str, int] = {}

    def held(self, key: str) -> int:
        return self._held.get(key, 0)

    def refusal(self, key: str) -> str:
        """What a caller over the cap is told (subclasses say what is counted)."""
        return f"{key} has {self.held(key)} in flight, at most {self.cap} are allowed"

    @contextlib.contextmanager
    def hold(self, key: str) -> Iterator[None]:
        """One slot for ``key`` while the block runs; over the cap TooManyRequests, before anything starts."""
        n = self._held.get(key, 0)
        if n >= self.cap:
            raise TooManyRequests(self.refusal(key))
        self._held[key] = n + 1
        try:
            yield
        finally:
            left = self._held[key] - 1
            if left:
                self._held[key] = left
            else:
                del self._held[key]
