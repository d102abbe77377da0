"""The node's kernel half of the routing mesh and of service VIPs: desired state → nftables.

Everything lives in two tables of our own, ``table inet shoal`` and ``table bridge shoal``:

- Published ports (ingress mode, answered on every node): ``prerouting``/``output`` nat chains look
  ``proto . port`` of traffic to any local address up in the ``published`` verdict map, which jumps
  to a per-port chain ``ingress-<proto>-<port>`` that DNATs to one of the tasks' addresses on the
  ingress network (``numgen random``) — or refuses (TCP reset / ICMP port unreachable) when there
  are none, so a published port never falls through to a host socket.
- VIPs (endpoint mode vip): ``vips`` maps each VIP to ``vip-<ip>``, which DNATs to a running task
  (port kept). Each VIP is a /32 on the device ``shl-vips``, so it is a local address and every
  overlay bridge answers ARP for it at once; ``filter-input`` refuses whatever reaches a VIP
  without being DNATed (no backends), so a VIP never reaches host sockets.
- Both DNATs set a connection mark bit (``ct mark``, not the packet mark: nat chains see only a
  connection's first packet, and a UDP flow's packets before the first reply are all still NEW);
  ``postrouting`` masquerades marked connections so replies come back through this node, and one
  rule in Docker's ``DOCKER-USER`` chain accepts them past Docker's FORWARD policy DROP.
- ``table bridge shoal`` keeps ARP for VIPs off the VXLAN ports: every node holds the same VIPs,
  and a container must learn its own node's bridge MAC for them, not whichever node answers first.

The first apply (and the first after an error) replaces both tables in one atomic nft batch; later
ones send one batch with only the changed chains and map elements (knftables-style), so backends
can change often without reloading anything else.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import re
import shutil
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute
from pyroute2.conntrack import AsyncConntrack
from pyroute2.netlink.exceptions import NetlinkError

from shoal.agent.network.overlay import BRIDGE_PREFIX, VXLAN_PREFIX

log = logging.getLogger(__name__)

# One Shoal daemon per host owns `table inet shoal`. A second daemon in the same network namespace
# (the test suite's, beside the demo daemon setup.sh leaves running) names its own with the
# environment variable SHOAL_MESH_NAME, so neither rebuilds or removes the other's tables, VIP
# device or DOCKER-USER rule.
TABLE = "shoal"
NAME_ENV = "SHOAL_MESH_NAME"
MARK = 0x00200000  # our bit in the connection mark; Docker's iptables rules use no connmark
VIP_DEVICE = "shl-vips"
DOCKER_USER = "DOCKER-USER"


def vip_device(table: str) -> str:
    return VIP_DEVICE if table == TABLE else f"{table}-v"


def docker_user_rule(table: str) -> tuple[str, ...]:
    return ("-m", "connmark", "--mark", f"{MARK:#x}/{MARK:#x}",
            "-m", "comment", "--comment", f"{table} routing mesh", "-j", "ACCEPT")


DOCKER_USER_RULE = docker_user_rule(TABLE)
PROTOCOLS = ("tcp", "udp", "sctp")  # the protocols Docker publishes; `th dport` reads all three
_COMMENT_OK = re.compile(r"[^A-Za-z0-9_.:/@ -]")
_COMMENT_MAX = 100  # nft allows 128 bytes; leave room for the "service " prefix


class MeshError(Exception):
    """Programming the kernel failed; the message carries nft's (or netlink's) own words."""


class MeshUnavailable(MeshError):
    """This node cannot run the kernel mesh (no nft binary, or a kernel without nf_tables)."""


@dataclass(frozen=True)
class PublishedPort:
    """A port published in ingress mode: answered on every node."""

    protocol: str  # "tcp" | "udp"
    port: int  # published port
    target_port: int
    backends: tuple[str, ...]  # the tasks' addresses on the ingress network (bare IPv4), sorted
    service: str = ""  # service name, in the chain's comment so users can find it

    @property
    def key(self) -> tuple[str, int]:
        return (self.protocol, self.port)


@dataclass(frozen=True)
class VirtualService:
    """A service's VIP on one overlay network (endpoint mode vip)."""

    vip: str  # bare IPv4
    backends: tuple[str, ...]  # its running tasks' addresses on that network (same port as asked)
    service: str = ""


@dataclass(frozen=True)
class MeshState:
    """What the kernel holds (or should): ports by (protocol, port), VIPs by address. Normalised."""

    ports: Mapping[tuple[str, int], PublishedPort]
    vips: Mapping[str, VirtualService]


# ------------------------------------------------------------------------------------ desired state


def _ipv4(addr: str, what: str) -> str:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        raise ValueError(f"{what}: {addr!r} is not an IPv4 address") from None
    if not isinstance(ip, ipaddress.IPv4Address):
        raise ValueError(f"{what}: {addr!r} is not an IPv4 address")
    return str(ip)


def _port(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"{what}: {value!r} is not a port (1-65535)")
    return value


def _backends(addrs: Iterable[str], what: str) -> tuple[str, ...]:
    # Sorted by address value so the generated text (and the diff) does not depend on input order.
    return tuple(sorted({_ipv4(a, what) for a in addrs}, key=lambda a: ipaddress.IPv4Address(a).packed))


def desired(ports: Iterable[PublishedPort], vips: Iterable[VirtualService]) -> MeshState:
    """Check and normalise the caller's state; bad input is a ValueError naming the culprit."""
    by_port: dict[tuple[str, int], PublishedPort] = {}
    for p in ports:
        if p.protocol not in PROTOCOLS:
            raise ValueError(f"published port {p.port}: protocol {p.protocol!r} is not tcp, udp or sctp")
        what = f"published port {p.port}/{p.protocol}"
        norm = PublishedPort(p.protocol, _port(p.port, what), _port(p.target_port, what + " target"),
                             _backends(p.backends, what + " backend"), p.service)
        if norm.key in by_port:
            raise ValueError(f"{what} is published twice ({by_port[norm.key].service!r} and {p.service!r})")
        by_port[norm.key] = norm
    by_vip: dict[str, VirtualService] = {}
    for v in vips:
        addr = _ipv4(v.vip, "VIP")
        if addr in by_vip:
            raise ValueError(f"VIP {addr} is given twice ({by_vip[addr].service!r} and {v.service!r})")
        by_vip[addr] = VirtualService(addr, _backends(v.backends, f"VIP {addr} backend"), v.service)
    return MeshState(dict(sorted(by_port.items())),
                     dict(sorted(by_vip.items(), key=lambda kv: ipaddress.IPv4Address(kv[0]).packed)))


# ------------------------------------------------------------------------------------ nft text


def port_chain(p: PublishedPort) -> str:
    return f"ingress-{p.protocol}-{p.port}"


def vip_chain(v: VirtualService) -> str:
    return f"vip-{v.vip}"


def _comment(service: str) -> str:
    text = _COMMENT_OK.sub("_", service)[:_COMMENT_MAX]
    return f'comment "service {text}"' if text else ""


def _chain_head(comment: str) -> str:
    return f"{comment}; " if comment else ""


def port_rules(p: PublishedPort) -> list[str]:
    """The per-port chain's rules: DNAT to a random backend, or refuse when there is none."""
    if not p.backends:
        # Refuse here rather than fall through: the node itself may have a socket on that port.
        return ["meta l4proto tcp counter reject with tcp reset", "counter reject"]
    pairs = ", ".join(f"{i} : {ip} . {p.target_port}" for i, ip in enumerate(p.backends))
    return [f"ct mark set ct mark or {MARK:#010x} meta l4proto {p.protocol} "
            f"dnat ip to numgen random mod {len(p.backends)} map {{ {pairs} }}"]


def vip_rules(v: VirtualService) -> list[str]:
    """The per-VIP chain's rules: DNAT to a random backend (port kept). None without backends: the
    packet then goes to the local VIP address, which filter-input refuses."""
    if not v.backends:
        return []
    pairs = ", ".join(f"{i} : {ip}" for i, ip in enumerate(v.backends))
    return [f"ct mark set ct mark or {MARK:#010x} dnat ip to numgen random mod {len(v.backends)} map {{ {pairs} }}"]


def _elements(items: list[str]) -> str:
    return f"\t\telements = {{ {', '.join(items)} }}\n" if items else ""


def _port_elem(p: PublishedPort) -> str:
    return f"{p.protocol} . {p.port} : jump {port_chain(p)}"


def _vip_elem(v: VirtualService) -> str:
    return f"{v.vip} : jump {vip_chain(v)}"


def full_batch(state: MeshState, table: str = TABLE) -> str:
    """One batch that replaces both tables whole: `add` makes sure `delete` has something to delete,
    and nft applies the lot as one transaction, so no half-built state is ever visible."""
    ports = list(state.ports.values())
    vips = list(state.vips.values())
    out = [
        f"add table inet {table}\n",
        f"delete table inet {table}\n",
        f"add table bridge {table}\n",
        f"delete table bridge {table}\n",
        f"table inet {table} {{\n",
        "\tmap published {\n\t\ttype inet_proto . inet_service : verdict\n",
        _elements([_port_elem(p) for p in ports]),
        "\t}\n",
        "\tmap vips {\n\t\ttype ipv4_addr : verdict\n",
        _elements([_vip_elem(v) for v in vips]),
        "\t}\n",
        "\tset vip-addrs {\n\t\ttype ipv4_addr\n",
        _elements([v.vip for v in vips]),
        "\t}\n",
    ]
    # Before Docker's own `ip nat` PREROUTING/OUTPUT (dstnat): a published port is ours on every
    # address of the node. A VIP never matches a published port (the return), as in Swarm.
    lookups = ("\t\tip daddr vmap @vips\n"
               "\t\tip daddr @vip-addrs return\n"
               "\t\tmeta nfproto ipv4 fib daddr type local meta l4proto . th dport vmap @published\n")
    # (nft names the dstnat priority (-100) for prerouting only; the output hook takes the number.)
    for name, prio in (("prerouting", "dstnat - 5"), ("output", "-105")):
        out.append(f"\tchain {name} {{\n\t\ttype nat hook {name} priority {prio}; policy accept;\n{lookups}\t}}\n")
    out += [
        "\tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n",
        f"\t\tct mark & {MARK:#010x} == {MARK:#010x} masquerade\n\t}}\n",
        "\tchain filter-input {\n\t\ttype filter hook input priority filter; policy accept;\n",
        # Not `related`: our own refusals to a local client go to the VIP too, and must pass.
        "\t\tip daddr @vip-addrs ct state != related meta l4proto tcp counter reject with tcp reset\n",
        "\t\tip daddr @vip-addrs ct state != related counter reject\n\t}\n",
        "\tchain filter-output {\n\t\ttype filter hook output priority filter; policy accept;\n",
        f'\t\toifname "{BRIDGE_PREFIX}*" icmp type redirect counter drop\n\t}}\n',
    ]
    for p in ports:
        out.append(_chain_block(port_chain(p), _comment(p.service), port_rules(p)))
    for v in vips:
        out.append(_chain_block(vip_chain(v), _comment(v.service), vip_rules(v)))
    out.append("}\n")
    out += [
        f"table bridge {table} {{\n",
        "\tset vip-addrs {\n\t\ttype ipv4_addr\n",
        _elements([v.vip for v in vips]),
        "\t}\n",
        # Our ARP requests for a VIP stay on this node; the others' never reach this node's stack.
        "\tchain forward {\n\t\ttype filter hook forward priority filter; policy accept;\n",
        f'\t\toifname "{VXLAN_PREFIX}*" ether type arp arp daddr ip @vip-addrs counter drop\n\t}}\n',
        "\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n",
        f'\t\tiifname "{VXLAN_PREFIX}*" ether type arp arp daddr ip @vip-addrs counter drop\n\t}}\n',
        "}\n",
    ]
    return "".join(out)


def _chain_block(name: str, comment: str, rules: list[str]) -> str:
    body = "".join(f"\t\t{r}\n" for r in rules)
    return f"\tchain {name} {{\n" + (f"\t\t{comment}\n" if comment else "") + body + "\t}\n"


def _add_chain(name: str, comment: str, rules: list[str], table: str = TABLE) -> list[str]:
    lines = [f"add chain inet {table} {name} {{ {_chain_head(comment)}}}"]
    return lines + [f"add rule inet {table} {name} {r}" for r in rules]


def diff_batch(old: MeshState, new: MeshState, table: str = TABLE) -> str:
    """The smallest batch taking the kernel from ``old`` to ``new`` ("" when nothing changed):
    a changed backend set is a flush + add rule of that one chain; a new or removed port or VIP adds
    or deletes its chain and its map/set elements. Deletions come first, so a port or VIP whose
    comment changed can be deleted and made anew in the same transaction."""
    dels: list[str] = []
    adds: list[str] = []
    for key, p in old.ports.items():
        q = new.ports.get(key)
        if q is None or q.service != p.service:
            dels += [f"delete element inet {table} published {{ {p.protocol} . {p.port} }}",
                     f"delete chain inet {table} {port_chain(p)}"]
    for key, q in new.ports.items():
        p = old.ports.get(key)
        if p is None or p.service != q.service:
            adds += _add_chain(port_chain(q), _comment(q.service), port_rules(q), table)
            adds.append(f"add element inet {table} published {{ {_port_elem(q)} }}")
        elif port_rules(p) != port_rules(q):
            adds.append(f"flush chain inet {table} {port_chain(q)}")
            adds += [f"add rule inet {table} {port_chain(q)} {r}" for r in port_rules(q)]
    for addr, v in old.vips.items():
        w = new.vips.get(addr)
        if w is None or w.service != v.service:
            dels += [f"delete element inet {table} vips {{ {addr} }}",
                     f"delete chain inet {table} {vip_chain(v)}"]
            if w is None:
                dels += [f"delete element inet {table} vip-addrs {{ {addr} }}",
                         f"delete element bridge {table} vip-addrs {{ {addr} }}"]
    for addr, w in new.vips.items():
        v = old.vips.get(addr)
        if v is None or v.service != w.service:
            adds += _add_chain(vip_chain(w), _comment(w.service), vip_rules(w), table)
            adds.append(f"add element inet {table} vips {{ {_vip_elem(w)} }}")
            if v is None:
                adds += [f"add element inet {table} vip-addrs {{ {addr} }}",
                         f"add element bridge {table} vip-addrs {{ {addr} }}"]
        elif vip_rules(v) != vip_rules(w):
            adds.append(f"flush chain inet {table} {vip_chain(w)}")
            adds += [f"add rule inet {table} {vip_chain(w)} {r}" for r in vip_rules(w)]
    lines = dels + adds
    return "".join(line + "\n" for line in lines)


def removed_udp_flows(old: MeshState, new: MeshState) -> list[tuple[str | None, str, int | None]]:
    """UDP flows to forget after ``old`` → ``new``: (original destination or None, backend, backend
    port or None) for every backend that left a UDP port's or a VIP's set. UDP has no end, so without
    this a client keeps talking to a gone backend until the conntrack timeout."""
    flows: list[tuple[str | None, str, int | None]] = []
    for key, p in old.ports.items():
        if p.protocol != "udp":
            continue
        q = new.ports.get(key)
        kept = set(q.backends) if q is not None and q.target_port == p.target_port else set()
        flows += [(None, b, p.target_port) for b in p.backends if b not in kept]
    for addr, v in old.vips.items():
        w = new.vips.get(addr)
        kept = set(w.backends) if w is not None else set()
        flows += [(addr, b, None) for b in v.backends if b not in kept]
    return flows


# ------------------------------------------------------------------------------------ the reconciler


class Mesh:
    """Keeps this node's kernel as the last ``apply`` asked. Not safe for concurrent calls: the
    agent calls it from one reconcile loop."""

    def __init__(self, *, netns: str | None = None, name: str | None = None) -> None:
        self.netns = netns  # tests only: everything runs in that named network namespace
        self.table = name or os.environ.get(NAME_ENV) or TABLE
        if not re.fullmatch(r"[a-z][a-z0-9-]{0,11}", self.table):
            raise ValueError(f"mesh name {self.table!r}: 1-12 lower-case letters, digits and dashes")
        self.vip_device = vip_device(self.table)
        self.docker_user_rule = docker_user_rule(self.table)
        self.applied: MeshState | None = None  # what the kernel holds; None → next apply rebuilds
        self.last_batch = ""  # the text of the last batch sent (for tests and debugging)
        self._localnet: str | None = None  # the bridge we set route_localnet=1 on
        self._known: MeshState | None = None  # last state asked for, for UDP flow clean-up after errors

    # --------------------------------------------------------------------------- public

    async def apply(self, ports: list[PublishedPort], vips: list[VirtualService],
                    ingress_bridge: str | None) -> None:
        want = desired(ports, vips)
        before = self.applied
        try:
            if before is None:
                await self._rebuild(want)
            else:
                await self._update(before, want)
            await self._set_localnet(ingress_bridge)
        except BaseException:
            self.applied = None  # the kernel may hold anything now: rebuild whole next time
            raise
        self.applied = want
        previous, self._known = self._known, want
        if previous is not None:
            await self._forget_udp_flows(removed_udp_flows(previous, want))

    async def refresh(self) -> bool:
        """Put back what others may have taken away since the last full build: a Docker restart
        recreates its chains without our DOCKER-USER rule; a firewall reload (`nft flush ruleset`)
        drops our tables. Cheap (``iptables -C`` and ``nft list tables``); the agent calls it
        periodically. True: the tables are gone, and the next ``apply`` rebuilds them whole."""
        if self.applied is None:
            return False
        await self._docker_user(present=True)
        proc = await asyncio.create_subprocess_exec(
            *self._argv("nft", "list", "tables", "inet"), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        out, _ = await proc.communicate()
        if proc.returncode == 0 and f"table inet {self.table}" not in out.decode().splitlines():
            log.warning("routing mesh: table inet %s is gone (a firewall reload?); rebuilding it", self.table)
            self.applied = None
            return True
        return False

    async def remove(self) -> None:
        """Swarm leave / no networks left: take away everything we put in the kernel."""
        self.applied = None
        self._known = None
        await self._set_localnet(None)
        await asyncio.to_thread(self._vip_device_sync, None)
        await self._docker_user(present=False)
        if shutil.which("nft") is None:
            return
        # `add` first, so the deletes succeed whether or not the tables exist.
        await self._nft(f"add table inet {self.table}\ndelete table inet {self.table}\n"
                        f"add table bridge {self.table}\ndelete table bridge {self.table}\n")

    # --------------------------------------------------------------------------- steps

    async def _rebuild(self, want: MeshState) -> None:
        if shutil.which("nft") is None:
            raise MeshUnavailable("the routing mesh needs nftables: the nft binary is not installed")
        # Addresses after the rules: a VIP must not be local before filter-input refuses it.
        await self._nft(full_batch(want, self.table))
        await asyncio.to_thread(self._vip_device_sync, set(want.vips))
        await self._docker_user(present=True)  # again on every rebuild: a Docker restart drops it

    async def _update(self, before: MeshState, want: MeshState) -> None:
        gone = set(before.vips) - set(want.vips)
        if gone:  # addresses first, then rules (see _rebuild)
            await asyncio.to_thread(self._vip_device_sync, set(before.vips) - gone)
        batch = diff_batch(before, want, self.table)
        if batch:
            await self._nft(batch)
        if set(want.vips) - set(before.vips):
            await asyncio.to_thread(self._vip_device_sync, set(want.vips))

    # --------------------------------------------------------------------------- subprocesses

    def _argv(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *argv] if self.netns else list(argv)

    async def _run(self, *argv: str, stdin: str | None = None) -> tuple[int, str]:
        """Run a command (in our netns when we have one); returns its exit code and stderr."""
        proc = await asyncio.create_subprocess_exec(
            *self._argv(*argv), stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        _, err = await proc.communicate(stdin.encode() if stdin is not None else None)
        assert proc.returncode is not None
        return proc.returncode, err.decode(errors="replace").strip()

    async def _nft(self, batch: str) -> None:
        self.last_batch = batch
        rc, err = await self._run("nft", "-f", "-", stdin=batch)
        if rc == 0:
            return
        if "Operation not supported" in err or "Protocol not supported" in err:
            raise MeshUnavailable(f"the kernel lacks the nf_tables features the routing mesh needs: {err}")
        raise MeshError(f"nft rejected the mesh rules: {err}")

    async def _docker_user(self, *, present: bool) -> None:
        """Docker's FORWARD policy is DROP and it accepts new connections into its bridges only for
        its own published ports; DOCKER-USER is the chain it leaves to users. One rule, ours only."""
        if shutil.which("iptables") is None:
            log.info("routing mesh: no iptables binary, %s left alone", DOCKER_USER)
            return
        rc, _ = await self._run("iptables", "-w", "-C", DOCKER_USER, *self.docker_user_rule)
        if present and rc != 0:
            rc_chain, _ = await self._run("iptables", "-w", "-n", "-L", DOCKER_USER)
            if rc_chain != 0:
                log.info("routing mesh: no %s chain (is dockerd running?); mesh traffic relies on FORWARD",
                         DOCKER_USER)
                return
            rc, err = await self._run("iptables", "-w", "-I", DOCKER_USER, *self.docker_user_rule)
            if rc != 0:
                raise MeshError(f"could not add the mesh rule to {DOCKER_USER}: {err}")
        elif not present:
            while rc == 0:  # -D removes one copy; there should be one, but leave none
                rc, err = await self._run("iptables", "-w", "-D", DOCKER_USER, *self.docker_user_rule)
                if rc != 0:
                    break
                rc, _ = await self._run("iptables", "-w", "-C", DOCKER_USER, *self.docker_user_rule)

    async def _set_localnet(self, bridge: str | None) -> None:
        """`curl 127.0.0.1:<published>` on a node: the output chain DNATs it to a backend on the
        ingress bridge; the kernel routes a 127/8 source out of a device only with route_localnet,
        and masquerade then gives it the bridge's address (what Docker does on docker_gwbridge)."""
        if bridge == self._localnet:
            return
        if self._localnet is not None:
            await self._run("sysctl", "-qw", f"net.ipv4.conf.{self._localnet}.route_localnet=0")  # may be gone
            self._localnet = None
        if bridge is not None:
            rc, err = await self._run("sysctl", "-qw", f"net.ipv4.conf.{bridge}.route_localnet=1")
            if rc != 0:  # the bridge may not be plumbed yet: only loopback clients miss out; next apply retries
                log.warning("routing mesh: could not set route_localnet on %s: %s", bridge, err)
                return
            self._localnet = bridge

    # --------------------------------------------------------------------------- netlink

    def _vip_device_sync(self, vips: set[str] | None) -> None:
        """Make shl-vips hold exactly ``vips`` as /32s (None: delete the device). The kernel here
        has no dummy devices; an ifb device holds addresses just as well (traffic to local
        addresses never passes through the device itself)."""
        try:
            with IPRoute(**self._ns_kw()) as ipr:
                idx = ipr.link_lookup(ifname=self.vip_device)
                if vips is None:
                    if idx:
                        ipr.link("del", index=idx[0])
                    return
                if not idx:
                    try:
                        ipr.link("add", ifname=self.vip_device, kind="dummy")
                    except NetlinkError as e:
                        if e.code != 95:  # EOPNOTSUPP: no dummy driver
                            raise
                        ipr.link("add", ifname=self.vip_device, kind="ifb")
                    idx = ipr.link_lookup(ifname=self.vip_device)
                have = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=idx[0], family=socket.AF_INET)}
                for addr in sorted(have - vips):
                    ipr.addr("del", index=idx[0], address=addr, prefixlen=32)
                for addr in sorted(vips - have):
                    ipr.addr("add", index=idx[0], address=addr, prefixlen=32)
                ipr.link("set", index=idx[0], state="up")
        except NetlinkError as e:
            raise MeshError(f"VIP device {self.vip_device}: {e}") from None

    def _ns_kw(self) -> dict[str, Any]:
        return {"netns": self.netns} if self.netns else {}

    async def _forget_udp_flows(self, flows: list[tuple[str | None, str, int | None]]) -> None:
        """Delete the conntrack entries of UDP flows whose backend left, so the next packet of the
        flow is NEW again and picks a current backend (within a second, not the UDP timeout)."""
        if not flows:
            return
        try:
            ct = AsyncConntrack(**self._ns_kw())
            try:
                doomed = []
                async for entry in await ct.dump_entries():
                    if entry.tuple_orig.proto != socket.IPPROTO_UDP or not (entry.mark or 0) & MARK:
                        continue
                    reply = entry.tuple_reply
                    for orig_dst, backend, port in flows:
                        if (reply.saddr == backend and (port is None or reply.sport == port)
                                and (orig_dst is None or entry.tuple_orig.daddr == orig_dst)):
                            doomed.append(entry)
                            break
                for entry in doomed:
                    try:
                        await ct.delete(entry)
                    except NetlinkError as e:
                        if e.code != 2:  # ENOENT: it timed out meanwhile
                            raise
            finally:
                ct.close()
        except (NetlinkError, OSError) as e:
            # Not fatal: the flows move when their conntrack entries time out.
            log.warning("routing mesh: could not clear UDP flows of removed backends: %s", e)
