"""The kernel mesh (agent/network/mesh.py) on the real kernel, inside network namespaces of our own.

A "node" namespace holds a bridge ``shl-<x>`` (10.250.0.254/24, the ingress bridge), two "task"
namespaces on it (10.250.0.5 and .6, each answering its own name over TCP and UDP), a "container"
namespace on it (10.250.0.9) and a "client" namespace on an underlay veth (192.168.250.2 → node
192.168.250.1). The node mimics Docker's iptables: FORWARD policy DROP, a DOCKER-USER chain jumped
first, and ACCEPT rules for the bridge's own traffic only — so a mesh connection from the underlay
passes only through the DOCKER-USER rule the mesh adds. The node itself listens on the ports it
must never answer (8081, 80, UDP 5301), to catch any fall-through.

Every namespace, socket and server thread here is ours and goes away in the fixtures' finally.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest

from shoal.agent.network.mesh import DOCKER_USER_RULE, TABLE, VIP_DEVICE, Mesh, PublishedPort, VirtualService

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces and nftables need root"),
    pytest.mark.skipif(shutil.which("nft") is None, reason="nftables (nft) is not installed"),
    pytest.mark.skipif(shutil.which("iptables") is None, reason="iptables is not installed"),
]

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)

TASK1, TASK2, CTR = "10.250.0.5", "10.250.0.6", "10.250.0.9"
BRIDGE_IP = "10.250.0.254"
NODE_UNDERLAY, CLIENT_UNDERLAY = "192.168.250.1", "192.168.250.2"
VIP, VIP_EMPTY = "10.250.0.100", "10.250.0.101"
UNRELATED_RULE = ("-s", "203.0.113.7", "-j", "DROP")


def sh(*argv: str, check: bool = True) -> str:
    res = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed: {res.stderr.strip()}")
    return res.stdout


def in_netns(ns: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` on a fresh thread that entered ``ns`` (setns changes only the calling thread);
    sockets made there stay in ``ns`` for good, whichever thread uses them later."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns {ns}")
            finally:
                os.close(fd)
            box["value"] = fn()
        except BaseException as e:
            box["error"] = e

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


def tcp_ask(ns: str, addr: str, port: int, timeout: float = 2.0) -> str:
    """Connect from ``ns``; the server's whole answer (its name)."""
    s = in_netns(ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    with s:
        s.settimeout(timeout)
        s.connect((addr, port))
        chunks = []
        while chunk := s.recv(256):
            chunks.append(chunk)
        return b"".join(chunks).decode()


def udp_socket(ns: str, addr: str, port: int, timeout: float = 1.0) -> socket.socket:
    s = in_netns(ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    s.settimeout(timeout)
    s.connect((addr, port))  # connected: an ICMP port unreachable comes back as ConnectionRefusedError
    return s


def udp_ask(s: socket.socket) -> str:
    s.send(b"who")
    return s.recv(256).decode()


@dataclass
class Servers:
    """TCP and UDP servers that answer their name, each on a socket made inside a namespace."""

    stop: threading.Event = field(default_factory=threading.Event)
    socks: list[socket.socket] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)

    def serve(self, ns: str, name: str, tcp: tuple[int, ...] = (), udp: tuple[int, ...] = ()) -> None:
        for port in tcp:
            s = in_netns(ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("0.0.0.0", port))
            s.listen(64)
            self._start(s, self._tcp_loop, name)
        for port in udp:
            s = in_netns(ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            s.bind(("0.0.0.0", port))
            self._start(s, self._udp_loop, name)

    def _start(self, s: socket.socket, loop: Callable[[socket.socket, bytes], None], name: str) -> None:
        s.settimeout(0.2)
        self.socks.append(s)
        t = threading.Thread(target=loop, args=(s, name.encode()), daemon=True)
        t.start()
        self.threads.append(t)

    def _tcp_loop(self, s: socket.socket, name: bytes) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = s.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                with contextlib.suppress(OSError):
                    conn.sendall(name)

    def _udp_loop(self, s: socket.socket, name: bytes) -> None:
        while not self.stop.is_set():
            try:
                _, peer = s.recvfrom(256)
                s.sendto(name, peer)
            except (TimeoutError, OSError):
                continue

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=2)
        for s in self.socks:
            s.close()


def veth(ns_a: str, name_a: str, ns_b: str, name_b: str) -> None:
    sh("ip", "link", "add", name_a, "netns", ns_a, "type", "veth", "peer", "name", name_b, "netns", ns_b)


def up(ns: str, dev: str, cidr: str | None = None, master: str | None = None) -> None:
    if cidr:
        sh("ip", "-n", ns, "addr", "add", cidr, "dev", dev)
    if master:
        sh("ip", "-n", ns, "link", "set", dev, "master", master)
    sh("ip", "-n", ns, "link", "set", dev, "up")


def mac_of(ns: str, dev: str) -> str:
    m = re.search(r"link/ether ([0-9a-f:]{17})", sh("ip", "-n", ns, "link", "show", dev))
    assert m, dev
    return m.group(1)


def neigh_mac(ns: str, addr: str) -> str | None:
    m = re.search(r"lladdr ([0-9a-f:]{17})", sh("ip", "-n", ns, "neigh", "show", addr))
    return m.group(1) if m else None


def counter(ns: str, family: str, chain: str) -> int:
    out = sh("ip", "netns", "exec", ns, "nft", "list", "chain", family, "shoal", chain)
    return sum(int(n) for n in re.findall(r"counter packets (\d+)", out))


def ns_sh(ns: str, *argv: str, check: bool = True) -> str:
    return sh("ip", "netns", "exec", ns, *argv, check=check)


@dataclass
class Lab:
    prefix: str
    node: str
    client: str
    ctr: str
    tasks: dict[str, str]  # address → namespace
    bridge: str
    servers: Servers

    def ports(self, web: tuple[str, ...] = (TASK1, TASK2),
              dns: tuple[str, ...] = (TASK1, TASK2)) -> list[PublishedPort]:
        return [PublishedPort("tcp", 8080, 80, web, "web"), PublishedPort("udp", 5300, 5353, dns, "dns"),
                PublishedPort("tcp", 8081, 80, (), "idle"), PublishedPort("udp", 5301, 5353, (), "idle-udp")]

    def vips(self, web: tuple[str, ...] = (TASK1, TASK2)) -> list[VirtualService]:
        return [VirtualService(VIP, web, "web"), VirtualService(VIP_EMPTY, (), "idle")]


@pytest.fixture
def lab() -> Iterator[Lab]:
    p = "mk" + secrets.token_hex(3)
    names = {k: f"{p}-{k}" for k in ("node", "client", "ctr", "t1", "t2")}
    made: list[str] = []
    servers = Servers()
    try:
        for ns in names.values():
            sh("ip", "netns", "add", ns)
            made.append(ns)
        node = names["node"]
        bridge = f"shl-{p}"
        sh("ip", "-n", node, "link", "add", bridge, "type", "bridge")
        up(node, bridge, f"{BRIDGE_IP}/24")
        up(node, "lo")
        ns_sh(node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        for key, addr in (("t1", TASK1), ("t2", TASK2), ("ctr", CTR)):
            ns = names[key]
            veth(node, f"{p}{key}", ns, "eth0")
            up(node, f"{p}{key}", master=bridge)
            up(ns, "eth0", f"{addr}/24")
            up(ns, "lo")
            sh("ip", "-n", ns, "route", "add", "default", "via", BRIDGE_IP)
        veth(node, f"{p}u", names["client"], "eth0")
        up(node, f"{p}u", f"{NODE_UNDERLAY}/24")
        up(names["client"], "eth0", f"{CLIENT_UNDERLAY}/24")
        up(names["client"], "lo")
        # Docker's filter FORWARD, in miniature: policy DROP, DOCKER-USER first (ending in RETURN,
        # with one rule of the user's), then accept only the bridge's own and established traffic.
        ipt = ("ip", "netns", "exec", node, "iptables", "-w")
        sh(*ipt, "-P", "FORWARD", "DROP")
        sh(*ipt, "-N", "DOCKER-USER")
        sh(*ipt, "-A", "DOCKER-USER", *UNRELATED_RULE)
        sh(*ipt, "-A", "DOCKER-USER", "-j", "RETURN")
        sh(*ipt, "-A", "FORWARD", "-j", "DOCKER-USER")
        sh(*ipt, "-A", "FORWARD", "-o", bridge, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT")
        sh(*ipt, "-A", "FORWARD", "-i", bridge, "!", "-o", bridge, "-j", "ACCEPT")
        sh(*ipt, "-A", "FORWARD", "-i", bridge, "-o", bridge, "-j", "ACCEPT")
        ns_sh(node, "nft", "add table inet mkother; add chain inet mkother c { type filter hook input priority 10; }")
        servers.serve(names["t1"], "t1", tcp=(80,), udp=(5353,))
        servers.serve(names["t2"], "t2", tcp=(80,), udp=(5353,))
        servers.serve(node, "host", tcp=(80, 8080, 8081), udp=(5300, 5301))  # must never answer
        yield Lab(p, node, names["client"], names["ctr"], {TASK1: names["t1"], TASK2: names["t2"]}, bridge, servers)
    finally:
        servers.close()
        for ns in made:
            sh("ip", "netns", "del", ns, check=False)


def seen_tcp(ns: str, addr: str, port: int, tries: int = 60) -> set[str]:
    names: set[str] = set()
    for _ in range(tries):
        names.add(tcp_ask(ns, addr, port))
        if {"t1", "t2"} <= names:
            break
    return names


def seen_udp(ns: str, addr: str, port: int, tries: int = 60) -> set[str]:
    names: set[str] = set()
    for _ in range(tries):
        with udp_socket(ns, addr, port) as s:  # a new source port: a new flow
            names.add(udp_ask(s))
        if {"t1", "t2"} <= names:
            break
    return names


async def test_published_ports_vips_and_refusals(lab: Lab) -> None:
    mesh = Mesh(name=TABLE, netns=lab.node)
    try:
        await mesh.apply(lab.ports(), lab.vips(), lab.bridge)
        # From the underlay, through Docker's FORWARD DROP (our DOCKER-USER rule lets it pass).
        assert await asyncio.to_thread(seen_tcp, lab.client, NODE_UNDERLAY, 8080) == {"t1", "t2"}
        assert await asyncio.to_thread(seen_udp, lab.client, NODE_UNDERLAY, 5300) == {"t1", "t2"}
        # On the node itself, to loopback and to the node's own addresses.
        assert await asyncio.to_thread(seen_tcp, lab.node, "127.0.0.1", 8080) == {"t1", "t2"}
        assert await asyncio.to_thread(seen_tcp, lab.node, NODE_UNDERLAY, 8080) == {"t1", "t2"}
        # A VIP from a container on the bridge: ARP says the node's bridge, and both tasks answer.
        assert await asyncio.to_thread(seen_tcp, lab.ctr, VIP, 80) == {"t1", "t2"}
        assert await asyncio.to_thread(seen_udp, lab.ctr, VIP, 5353) == {"t1", "t2"}
        assert neigh_mac(lab.ctr, VIP) == mac_of(lab.node, lab.bridge)
        # Docker turns bridge-nf-call-iptables on (the DNATed packet is then bridged back out); routed
        # (off), the VIP works as well.
        ns_sh(lab.node, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0")
        assert await asyncio.to_thread(seen_tcp, lab.ctr, VIP, 80) == {"t1", "t2"}
        ns_sh(lab.node, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1")
        # No backends: refused, never the node's own listener on that port.
        for ns, addr, port in ((lab.client, NODE_UNDERLAY, 8081), (lab.node, "127.0.0.1", 8081),
                               (lab.ctr, VIP_EMPTY, 80), (lab.node, VIP_EMPTY, 80)):
            with pytest.raises(ConnectionRefusedError):
                await asyncio.to_thread(tcp_ask, ns, addr, port)
        with udp_socket(lab.client, NODE_UNDERLAY, 5301) as s, pytest.raises(ConnectionRefusedError):
            await asyncio.to_thread(udp_ask, s)
        # The rule in DOCKER-USER is what lets the underlay in: without it, the SYN dies in FORWARD.
        ns_sh(lab.node, "iptables", "-w", "-D", "DOCKER-USER", *DOCKER_USER_RULE)
        with pytest.raises(TimeoutError):
            await asyncio.to_thread(tcp_ask, lab.client, NODE_UNDERLAY, 8080, 1.0)
    finally:
        await mesh.remove()


async def test_udp_flow_moves_when_its_backend_leaves(lab: Lab) -> None:
    mesh = Mesh(name=TABLE, netns=lab.node)
    try:
        await mesh.apply(lab.ports(), lab.vips(), lab.bridge)
        with udp_socket(lab.client, NODE_UNDERLAY, 5300) as s:
            first = await asyncio.to_thread(udp_ask, s)
            assert {await asyncio.to_thread(udp_ask, s) for _ in range(5)} == {first}  # one flow, one backend
            stay = TASK2 if first == "t1" else TASK1
            await mesh.apply(lab.ports(dns=(stay,)), lab.vips(), lab.bridge)
            t0 = time.monotonic()
            other = await asyncio.to_thread(udp_ask, s)  # the gone backend still runs: only conntrack moves it
            assert other != first and time.monotonic() - t0 < 1.0
        # The same for a VIP's UDP flow.
        with udp_socket(lab.ctr, VIP, 5353) as s:
            first = await asyncio.to_thread(udp_ask, s)
            stay = TASK2 if first == "t1" else TASK1
            await mesh.apply(lab.ports(dns=(stay,)), lab.vips(web=(stay,)), lab.bridge)
            assert await asyncio.to_thread(udp_ask, s) != first
    finally:
        await mesh.remove()


async def test_backend_churn_fails_no_request(lab: Lab) -> None:
    mesh = Mesh(name=TABLE, netns=lab.node)
    stop = threading.Event()
    results: dict[str, list[str]] = {"ok": [], "failed": []}

    def loop(ns: str, addr: str, port: int) -> None:
        while not stop.is_set():
            try:
                results["ok"].append(tcp_ask(ns, addr, port))
            except OSError as e:
                results["failed"].append(f"{ns} {addr}:{port}: {e!r}")

    try:
        await mesh.apply(lab.ports(), lab.vips(), lab.bridge)
        threads = [threading.Thread(target=loop, args=args) for args in
                   ((lab.client, NODE_UNDERLAY, 8080), (lab.ctr, VIP, 80))]
        for t in threads:
            t.start()
        try:
            sets = [(TASK1,), (TASK2,), (TASK1, TASK2)]
            for i in range(20):
                web = sets[i % 3]
                await mesh.apply(lab.ports(web=web), lab.vips(web=web), lab.bridge)
                assert "table" not in mesh.last_batch  # incremental, every time
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            for t in threads:
                await asyncio.to_thread(t.join)
        assert results["failed"] == []
        assert len(results["ok"]) > 40 and set(results["ok"]) == {"t1", "t2"}
    finally:
        await mesh.remove()


async def test_incremental_batch_and_restart_rebuild(lab: Lab) -> None:
    mesh = Mesh(name=TABLE, netns=lab.node)
    try:
        await mesh.apply(lab.ports(), lab.vips(), lab.bridge)
        assert mesh.last_batch.startswith("add table inet shoal\ndelete table inet shoal\n")
        before = ns_sh(lab.node, "nft", "-s", "list", "ruleset")
        # One backend gone from one port: that chain only.
        await mesh.apply(lab.ports(web=(TASK2,)), lab.vips(), lab.bridge)
        assert mesh.last_batch == (
            "flush chain inet shoal ingress-tcp-8080\n"
            "add rule inet shoal ingress-tcp-8080 ct mark set ct mark or 0x00200000 meta l4proto tcp "
            "dnat ip to numgen random mod 1 map { 0 : 10.250.0.6 . 80 }\n")
        assert await asyncio.to_thread(seen_tcp, lab.client, NODE_UNDERLAY, 8080, 10) == {"t2"}
        # Same state again: nothing is sent at all.
        mesh.last_batch = ""
        await mesh.apply(lab.ports(web=(TASK2,)), lab.vips(), lab.bridge)
        assert mesh.last_batch == ""
        # A new port: its chain and its map element, nothing else.
        extra = [*lab.ports(web=(TASK2,)), PublishedPort("tcp", 9090, 80, (TASK1,), "api")]
        await mesh.apply(extra, lab.vips(), lab.bridge)
        assert mesh.last_batch.splitlines() == [
            'add chain inet shoal ingress-tcp-9090 { comment "service api"; }',
            "add rule inet shoal ingress-tcp-9090 ct mark set ct mark or 0x00200000 meta l4proto tcp "
            "dnat ip to numgen random mod 1 map { 0 : 10.250.0.5 . 80 }",
            "add element inet shoal published { tcp . 9090 : jump ingress-tcp-9090 }"]
        assert await asyncio.to_thread(tcp_ask, lab.client, NODE_UNDERLAY, 9090) == "t1"

        # An agent restart: a new Mesh rebuilds the same ruleset in one batch, while traffic flows.
        stop = threading.Event()
        failed: list[str] = []

        def loop() -> None:
            while not stop.is_set():
                try:
                    tcp_ask(lab.client, NODE_UNDERLAY, 8080)
                except OSError as e:
                    failed.append(repr(e))

        t = threading.Thread(target=loop)
        t.start()
        try:
            restarted = Mesh(name=TABLE, netns=lab.node)
            await restarted.apply(lab.ports(), lab.vips(), lab.bridge)
            await asyncio.sleep(0.2)
        finally:
            stop.set()
            await asyncio.to_thread(t.join)
        assert failed == []
        assert restarted.last_batch.startswith("add table inet shoal\ndelete table inet shoal\n")
        assert ns_sh(lab.node, "nft", "-s", "list", "ruleset") == before  # port 9090 gone, all else as first built
        # The DOCKER-USER rule is there once, not once per rebuild.
        rules = ns_sh(lab.node, "iptables", "-w", "-S", "DOCKER-USER")
        assert rules.count("connmark") == 1
        # A failed batch makes the next apply rebuild whole.
        ns_sh(lab.node, "nft", "delete element inet shoal published { tcp . 8081 }; "
              "delete chain inet shoal ingress-tcp-8081")  # someone meddled
        with pytest.raises(Exception, match="nft rejected"):
            await restarted.apply([*lab.ports()[:2], PublishedPort("tcp", 8081, 80, (TASK1,), "idle"),
                                   lab.ports()[3]], lab.vips(), lab.bridge)
        await restarted.apply(lab.ports(), lab.vips(), lab.bridge)
        assert restarted.last_batch.startswith("add table inet shoal")
        assert ns_sh(lab.node, "nft", "-s", "list", "ruleset") == before
    finally:
        await mesh.remove()


async def test_remove_leaves_nothing_of_ours(lab: Lab) -> None:
    mesh = Mesh(name=TABLE, netns=lab.node)
    await mesh.apply(lab.ports(), lab.vips(), lab.bridge)
    assert ns_sh(lab.node, "sysctl", "-n", f"net.ipv4.conf.{lab.bridge}.route_localnet").strip() == "1"
    await mesh.remove()
    tables = ns_sh(lab.node, "nft", "list", "tables")
    assert "shoal" not in tables and "table inet mkother" in tables
    assert ns_sh(lab.node, "ip", "link", "show", VIP_DEVICE, check=False) == ""
    rules = ns_sh(lab.node, "iptables", "-w", "-S", "DOCKER-USER")
    assert "connmark" not in rules and "-A DOCKER-USER -s 203.0.113.7/32 -j DROP" in rules
    assert ns_sh(lab.node, "sysctl", "-n", f"net.ipv4.conf.{lab.bridge}.route_localnet").strip() == "0"
    # The port is the node's own again (its listener answers), and a second remove is harmless.
    assert await asyncio.to_thread(tcp_ask, lab.node, NODE_UNDERLAY, 8080) == "host"
    await mesh.remove()

    # No DOCKER-USER chain (no dockerd): the mesh still builds, and makes no chain of its own.
    ipt = ("ip", "netns", "exec", lab.node, "iptables", "-w")
    sh(*ipt, "-D", "FORWARD", "-j", "DOCKER-USER")
    sh(*ipt, "-F", "DOCKER-USER")
    sh(*ipt, "-X", "DOCKER-USER")
    await mesh.apply(lab.ports(), lab.vips(), lab.bridge)
    assert await asyncio.to_thread(seen_tcp, lab.node, "127.0.0.1", 8080) == {"t1", "t2"}
    await mesh.remove()
    assert sh(*ipt, "-S", "DOCKER-USER", check=False) == ""
    assert "shoal" not in ns_sh(lab.node, "nft", "list", "tables")


# ----------------------------------------------------------------------------- ARP across VXLAN


@pytest.fixture
def two_nodes() -> Iterator[dict[str, str]]:
    """Nodes A and B, each a bridge shl-<x> (10.251.0.254 / .253) joined by VXLAN shv-<x> over an
    underlay veth, and a container on A's bridge (10.251.0.9)."""
    p = "mk" + secrets.token_hex(3)
    names = {"a": f"{p}-a", "b": f"{p}-b", "ctr": f"{p}-ctr", "bridge": f"shl-{p}", "vxlan": f"shv-{p}"}
    made: list[str] = []
    try:
        for key in ("a", "b", "ctr"):
            sh("ip", "netns", "add", names[key])
            made.append(names[key])
        veth(names["a"], "under", names["b"], "under")
        for key, under, peer, own in (("a", "192.168.251.1", "192.168.251.2", "10.251.0.254"),
                                      ("b", "192.168.251.2", "192.168.251.1", "10.251.0.253")):
            ns = names[key]
            up(ns, "lo")
            up(ns, "under", f"{under}/24")
            sh("ip", "-n", ns, "link", "add", names["bridge"], "type", "bridge")
            up(ns, names["bridge"], f"{own}/24")
            sh("ip", "-n", ns, "link", "add", names["vxlan"], "type", "vxlan", "id", "4242", "local", under,
               "dstport", "4789")
            up(ns, names["vxlan"], master=names["bridge"])
            sh("bridge", "-n", ns, "fdb", "append", "00:00:00:00:00:00", "dev", names["vxlan"], "dst", peer)
        veth(names["a"], f"{p}c", names["ctr"], "eth0")
        up(names["a"], f"{p}c", master=names["bridge"])
        up(names["ctr"], "eth0", "10.251.0.9/24")
        yield names
    finally:
        for ns in made:
            sh("ip", "netns", "del", ns, check=False)


def poke(ns: str, addr: str) -> None:
    """Make ``ns`` ARP for ``addr`` (a datagram to it), then give the kernel time to hear back."""
    s = in_netns(ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    with s:
        s.sendto(b"x", (addr, 9))
    time.sleep(1.5)


async def test_vip_arp_stays_on_its_node(two_nodes: dict[str, str]) -> None:
    vip = "10.251.0.100"
    a, b, ctr = Mesh(name=TABLE, netns=two_nodes["a"]), Mesh(name=TABLE, netns=two_nodes["b"]), two_nodes["ctr"]
    try:
        # The VXLAN path works: the container resolves node B's bridge address across it.
        await asyncio.to_thread(poke, ctr, "10.251.0.253")
        assert neigh_mac(ctr, "10.251.0.253") == mac_of(two_nodes["b"], two_nodes["bridge"])

        sh("ip", "-n", two_nodes["b"], "neigh", "flush", "dev", two_nodes["bridge"])  # B forgets the container
        for node in (a, b):
            await node.apply([], [VirtualService(vip, ("10.251.0.5",), "web")], None)
        await asyncio.to_thread(poke, ctr, vip)
        assert neigh_mac(ctr, vip) == mac_of(two_nodes["a"], two_nodes["bridge"])
        assert counter(two_nodes["a"], "bridge", "forward") >= 1  # A kept its container's request home
        assert counter(two_nodes["b"], "bridge", "input") == 0
        assert "10.251.0.9 " not in sh("ip", "-n", two_nodes["b"], "neigh", "show")  # B never answered

        # Node A without the mesh: the request crosses the tunnel, and B's input filter drops it.
        await a.remove()
        sh("ip", "-n", ctr, "neigh", "flush", "all")
        await asyncio.to_thread(poke, ctr, vip)
        assert neigh_mac(ctr, vip) is None
        assert counter(two_nodes["b"], "bridge", "input") >= 1
        assert "10.251.0.9 " not in sh("ip", "-n", two_nodes["b"], "neigh", "show")
    finally:
        await a.remove()
        await b.remove()
