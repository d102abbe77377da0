"""Bounds on what callers of the manager's gRPC listeners may ask for: message sizes per method,
joins per source address, concurrent calls per node.

The bootstrap port answers anyone, so it is the one a flood aims at: each join costs a CSR check
and a signature, and a valid token creates a node. The cluster port answers only nodes, but a
hostile worker holds a valid certificate, so it gets bounds too."""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict

from shoal.bounds import KeyedSlots, address_bucket
from shoal.errors import TooManyRequests

KIB, MIB = 1024, 1024 * 1024

# Largest request each method takes. A join is a token, a CSR and a hostname (~1 KiB); a status
# batch from a node with 10,000 tasks is ~2 MiB; a forwarded API write carries the API's largest
# body (16 MiB, a stack's Compose file); log chunks are batched by the agent (~64 KiB), and so are
# the bytes of engine pipes.
BOOTSTRAP_LIMITS: dict[str, int] = {"GetRootCA": 1 * KIB, "Join": 64 * KIB}
CLUSTER_LIMITS: dict[str, int] = {
    "Register": 1 * MIB, "Heartbeat": 16 * KIB, "Assignments": 16 * KIB, "UpdateTaskStatus": 16 * MIB,
    "ReportStats": 4 * MIB, "ShipLogs": 4 * MIB,  # the agent sends at most 1 MiB of lines a batch
    "RenewCertificate": 64 * KIB, "LogSubscriptions": 16 * KIB, "PublishLogs": 4 * MIB,
    "Forward": 17 * MIB, "Promote": 16 * KIB,
    # Engine pipes carry bytes in chunks of at most 64 KiB (transport/tunnel.py CHUNK).
    "EngineTunnels": 16 * KIB, "EngineTunnel": 80 * KIB, "EngineRelay": 80 * KIB,
}
BOOTSTRAP_MAX_MESSAGE = max(BOOTSTRAP_LIMITS.values())
CLUSTER_MAX_MESSAGE = max(CLUSTER_LIMITS.values())

JOIN_BURST = 20  # joins (and root fetches) a source may make at once ...
JOIN_RATE = 5.0  # ... and per second after that
MAX_SOURCES = 10_000  # sources remembered; the least recently seen are forgotten first
BOOTSTRAP_MAX_CONCURRENT = 64  # calls in flight on the bootstrap port, from everyone together
MAX_CALLS_PER_NODE = 256  # calls in flight from one node (a follower forwards many API writes at once)


class Oversized:
    """What a method's decoder returns for a message over its limit; the handler answers
    RESOURCE_EXHAUSTED instead of decoding it (a decoder that raised would make gRPC answer
    INTERNAL, "Exception deserializing request!", which says nothing useful)."""

    def __init__(self, method: str, size: int, limit: int) -> None:
        self.message = f"{method}: request of {size} bytes is over the limit of {limit} bytes"


class Malformed:
    """What a method's decoder returns for a message that is not the method's request."""

    def __init__(self, method: str, error: str) -> None:
        self.message = f"{method}: malformed request: {error}"


class JoinLimiter:
    """A token bucket per source IP. Loopback is not limited: a process on the manager's own host
    is inside its trust boundary already, and the scale benchmark joins 1,000 nodes from it."""

    def __init__(self, burst: int = JOIN_BURST, rate: float = JOIN_RATE, max_sources: int = MAX_SOURCES) -> None:
        self.burst, self.rate, self.max_sources = burst, rate, max_sources
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # ip → (tokens, at)

    def take(self, ip: str, now: float | None = None) -> None:
        if not ip or _loopback(ip):
            return
        ip = address_bucket(ip)
        now = time.monotonic() if now is None else now
        tokens, at = self._buckets.pop(ip, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate)
        if tokens < 1.0:
            self._buckets[ip] = (tokens, now)
            raise TooManyRequests(f"too many join attempts from {ip}: at most {self.burst} at once and "
                                  f"{self.rate:g} per second; try again shortly")
        self._buckets[ip] = (tokens - 1.0, now)
        while len(self._buckets) > self.max_sources:
            self._buckets.popitem(last=False)


def _loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


class CallCounter(KeyedSlots):
    """Calls in flight per node; over the cap, a new call is refused rather than queued."""

    def __init__(self, cap: int = MAX_CALLS_PER_NODE) -> None:
        super().__init__(cap)

    def refusal(self, node_id: str) -> str:
        return f"node {node_id} has {self.held(node_id)} calls in flight, the most one node may have"
