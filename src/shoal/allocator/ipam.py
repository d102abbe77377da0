"""Address management for overlay networks: subnets from the cluster's pool, addresses within them.

Modelled on swarmkit's allocator with libnetwork's default IPAM underneath: a network gets a subnet
(the user's, or the first free ``SubnetSize`` block of the cluster's ``DefaultAddrPool``), its
gateway is the subnet's first address, and addresses are handed out *serially* (after the last one
given, wrapping around), so an address released by a stopped task is not reused at once by the
next one while peers may still cache it. Node addresses (each node's bridge end) come from the top
of the range downwards, so they are easy to tell from task addresses and the two never meet early.

Everything here is pure: :class:`AddressPool` holds one network's used set; the functions pick
subnets and VXLAN ids from what the store already holds.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from shoal.errors import InvalidArgument

DEFAULT_POOL = "10.0.0.0/8"
DEFAULT_SUBNET_SIZE = 24
VXLAN_ID_KEY = "com.docker.network.driver.overlay.vxlanid_list"
FIRST_VXLAN_ID = 4096  # as swarmkit: lower ids are left to hand-made VXLAN interfaces
MAX_VXLAN_ID = (1 << 24) - 1


class PoolExhausted(Exception):
    """No free address (or subnet, or VXLAN id) left."""


def parse_subnet(value: str) -> ipaddress.IPv4Network:
    """An IPv4 subnet in CIDR form; host bits set is an error, as in Docker."""
    try:
        net = ipaddress.ip_network(value, strict=True)
    except ValueError:
        raise InvalidArgument(f"invalid subnet {value}: must be in CIDR form, e.g. 10.0.9.0/24") from None
    if not isinstance(net, ipaddress.IPv4Network):
        raise InvalidArgument(f"invalid subnet {value}: IPv6 overlay networks are not supported")
    if net.prefixlen > 30:
        raise InvalidArgument(f"invalid subnet {value}: too small for an overlay network (at most /30)")
    return net


class AddressPool:
    """One network's addresses: which are taken, and where the serial cursor stands.

    Addresses are kept as ints. The network and broadcast addresses and the gateway are never
    handed out. ``first``/``last`` bound the allocatable range (the IPAM ``IPRange`` if given).
    """

    __slots__ = ("_cursor", "_high", "first", "gateway", "last", "subnet", "used")

    def __init__(self, subnet: str, gateway: str = "", ip_range: str = "") -> None:
        self.subnet = ipaddress.IPv4Network(subnet)
        net = int(self.subnet.network_address)
        bcast = int(self.subnet.broadcast_address)
        rng = ipaddress.IPv4Network(ip_range) if ip_range else self.subnet
        self.first = max(int(rng.network_address), net + 1)
        self.last = min(int(rng.broadcast_address), bcast - 1)
        self.gateway = int(ipaddress.IPv4Address(gateway)) if gateway else net + 1
        self.used: set[int] = {self.gateway}
        self._cursor = self.first  # next address to try for tasks and VIPs
        self._high = self.last  # next address to try for nodes

    @property
    def prefixlen(self) -> int:
        return self.subnet.prefixlen

    def cidr(self, ip: int) -> str:
        """``ip`` as Docker shows attachment addresses: ``10.0.1.5/24``."""
        return f"{ipaddress.IPv4Address(ip)}/{self.subnet.prefixlen}"

    def allocate(self) -> int:
        """The next free address after the last one given (wrapping): serial, like swarmkit's."""
        size = self.last - self.first + 1
        ip = self._cursor
        for _ in range(size):
            if ip > self.last:
                ip = self.first
            if ip not in self.used:
                self.used.add(ip)
                self._cursor = ip + 1
                return ip
            ip += 1
        raise PoolExhausted(f"no free address left in {self.subnet}")

    def allocate_high(self) -> int:
        """A free address from the top of the range down (node addresses)."""
        ip = self._high
        for _ in range(self.last - self.first + 1):
            if ip < self.first:
                ip = self.last
            if ip not in self.used:
                self.used.add(ip)
                self._high = ip - 1
                return ip
            ip -= 1
        raise PoolExhausted(f"no free address left in {self.subnet}")

    def reserve(self, ip: int) -> None:
        """Mark an address recorded in the store as taken (rebuilding after a restart)."""
        self.used.add(ip)

    def release(self, ip: int) -> None:
        if ip != self.gateway:
            self.used.discard(ip)

    def free_count(self) -> int:
        return sum(1 for ip in range(self.first, self.last + 1) if ip not in self.used)


def ip_of(cidr: str) -> int:
    """The address part of ``10.0.1.5/24`` (or a bare address) as an int."""
    return int(ipaddress.IPv4Address(cidr.split("/", 1)[0]))


def choose_subnet(taken: Iterable[str], pools: Iterable[str] | None, size: int | None) -> str:
    """The first ``size``-bit block of the cluster's pools that overlaps no existing network."""
    used = [ipaddress.IPv4Network(s) for s in taken]
    size = size or DEFAULT_SUBNET_SIZE
    for pool_s in pools or [DEFAULT_POOL]:
        pool = ipaddress.IPv4Network(pool_s)
        if size < pool.prefixlen:
            continue
        # Walk the pool skipping whole used subnets, not block by block: a /8 has 65,536 /24s.
        step = 1 << (32 - size)
        cur = int(pool.network_address)
        end = int(pool.broadcast_address)
        while cur + step - 1 <= end:
            cand = ipaddress.IPv4Network((cur, size))
            clash = next((u for u in used if u.overlaps(cand)), None)
            if clash is None:
                return str(cand)
            # Jump past the clashing subnet, aligned to the block size.
            nxt = int(clash.broadcast_address) + 1
            cur = max(cur + step, (nxt + step - 1) // step * step)
    raise PoolExhausted("could not find an available, non-overlapping IPv4 address pool among the defaults "
                        "to assign to the network")


def check_no_overlap(subnet: ipaddress.IPv4Network, taken: Iterable[tuple[str, str]]) -> None:
    """A user-given subnet must not overlap another network's: (name, subnet) pairs. 403 in Docker
    ("Pool overlaps with other one on this address space"); a 400 here, before anything is written."""
    for name, other in taken:
        if subnet.overlaps(ipaddress.IPv4Network(other)):
            raise InvalidArgument(
                f"invalid pool request: Pool overlaps with other one on this address space "
                f"(subnet {subnet} overlaps {other} of network {name})"
            )


def next_vxlan_id(taken: Iterable[int]) -> int:
    """The lowest free VXLAN id from 4096 up."""
    used = set(taken)
    vid = FIRST_VXLAN_ID
    while vid in used:
        vid += 1
    if vid > MAX_VXLAN_ID:
        raise PoolExhausted("no VXLAN id left")
    return vid


def vxlan_ids(options: dict[str, str] | None) -> list[int]:
    """The ids in a driver's ``vxlanid_list`` option ("4097" or "4097,4098")."""
    raw = (options or {}).get(VXLAN_ID_KEY, "")
    return [int(x) for x in raw.split(",") if x.strip().isdigit()]
