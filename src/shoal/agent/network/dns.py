"""The node's DNS responder: service names, aliases, ``tasks.<service>`` and task names on overlay
networks, and everything else forwarded upstream.

Why a responder of our own: Docker's embedded DNS (127.0.0.11 in every container on a user
network) only knows the containers of *its* engine, so a service whose tasks run on other hosts is
invisible to it. It does forward what it cannot answer — single-label names too, as long as the
container sets no ``ndots`` — to the container's own servers (``HostConfig.Dns``), and it sends the
query from inside the container's network namespace. So every task container gets this node's
address on its first network as its DNS server; the query arrives on the socket bound to that
address (which network) from the container's own address (which container), and is answered from
the records of the networks that container is attached to, as Swarm's resolver does.

The engine is never told a service's name as an endpoint alias: it would answer it itself with
only the local tasks, and the query would not reach us.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import logging
import socket
import struct
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dnslib import PTR, QTYPE, RCODE, RR, A, DNSRecord

from shoal.dispatcher.protocol import ServiceRecord

log = logging.getLogger(__name__)

TTL_S = 1  # records change with every task start/stop; nothing should hold them for long
UPSTREAM_TIMEOUT_S = 2.0
_TCP_MAX = 65535
PICK_ATTEMPTS = 8  # port 0: tries for a UDP port whose TCP twin is free too


def _norm(name: str) -> str:
    return name.rstrip(".").lower()


def _reverse_name(ip: str) -> str:
    return ".".join(reversed(ip.split("."))) + ".in-addr.arpa"


@dataclass
class _Names:
    """One network's names → addresses, built from its service records."""

    services: dict[str, list[str]] = field(default_factory=dict)  # name or alias → its VIP, or task IPs
    members: dict[str, list[str]] = field(default_factory=dict)  # name or alias → task IPs (tasks.<name>)
    tasks: dict[str, str] = field(default_factory=dict)  # task name → IP
    reverse: dict[str, str] = field(default_factory=dict)  # reverse name → task name


def _index(records: Iterable[ServiceRecord]) -> _Names:
    out = _Names()
    for rec in records:
        # Endpoint mode vip: the name is the VIP, which every node balances in its kernel over the
        # tasks (agent/network/mesh.py), so clients that cache the answer never hold a stale task
        # address. dnsrr (no VIP): the tasks themselves, rotated. tasks.<name>: always the tasks.
        addrs = sorted(set(rec.addrs))
        for name in [rec.name, *rec.aliases]:
            if name:
                key = _norm(name)
                out.members[key] = sorted({*out.members.get(key, []), *addrs})
                answer = [rec.vip] if rec.vip else addrs
                out.services[key] = sorted({*out.services.get(key, []), *answer})
        for task_name, ip in rec.tasks.items():
            out.tasks[_norm(task_name)] = ip
            out.reverse[_reverse_name(ip)] = task_name
    return out


class ServiceDirectory:
    """What the responder answers: per network, the names its records hold; per container address,
    the networks that container is on (so a container on two networks resolves names of both)."""

    def __init__(self) -> None:
        self._nets: dict[str, _Names] = {}
        self._endpoints: dict[tuple[str, str], list[str]] = {}  # (network ID, container IP) → networks
        self._rr = itertools.count()

    def set_records(self, network_id: str, records: Iterable[ServiceRecord]) -> None:
        self._nets[network_id] = _index(records)

    def remove_network(self, network_id: str) -> None:
        self._nets.pop(network_id, None)
        for key in [k for k in self._endpoints if k[0] == network_id]:
            del self._endpoints[key]

    def set_endpoint(self, network_id: str, ip: str, networks: list[str]) -> None:
        """The container at ``ip`` on ``network_id`` is attached to ``networks`` (in order)."""
        self._endpoints[(network_id, ip)] = list(networks)

    def forget_endpoint(self, network_id: str, ip: str) -> None:
        self._endpoints.pop((network_id, ip), None)

    def scope(self, network_id: str, client_ip: str) -> list[str]:
        """Networks whose names a query that came in on ``network_id`` from ``client_ip`` may see."""
        nets = self._endpoints.get((network_id, client_ip))
        if not nets:
            return [network_id]
        return [network_id, *(n for n in nets if n != network_id)]

    def lookup(self, name: str, networks: list[str]) -> list[str] | None:
        """IPv4 addresses for ``name`` (its VIP, or task addresses rotated for DNS round-robin),
        ``[]`` for a known name with no running task, ``None`` for a name none of ``networks``
        knows (ask upstream)."""
        q = _norm(name)
        found: list[str] | None = None
        for net_id in networks:
            names = self._nets.get(net_id)
            if names is None:
                continue
            if q in names.tasks:
                return [names.tasks[q]]
            if q.startswith("tasks.") and q[len("tasks."):] in names.members:
                found = names.members[q[len("tasks."):]]
                break
            if q in names.services:
                found = names.services[q]
                break
        if not found:
            return found
        n = next(self._rr) % len(found)
        return found[n:] + found[:n]

    def reverse(self, name: str, networks: list[str]) -> str | None:
        q = _norm(name)
        for net_id in networks:
            names = self._nets.get(net_id)
            if names is not None and q in names.reverse:
                return names.reverse[q]
        return None


def system_upstreams(resolv_conf: str = "/etc/resolv.conf") -> list[tuple[str, int]]:
    """The host's own name servers: where names that are not ours go."""
    out = []
    with contextlib.suppress(OSError):
        for line in Path(resolv_conf).read_text().splitlines():
            words = line.split()
            if len(words) >= 2 and words[0] == "nameserver" and ":" not in words[1]:
                out.append((words[1], 53))
    return out


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, responder: DnsResponder, network_id: str) -> None:
        self.responder = responder
        self.network_id = network_id
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram endpoint's transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.responder._spawn(self._answer(data, addr))

    async def _answer(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = await self.responder.answer(data, self.network_id, addr[0])
        if reply is not None and self.transport is not None and not self.transport.is_closing():
            if len(reply) > 512:  # classic UDP limit: tell the client to retry over TCP
                with contextlib.suppress(Exception):
                    rec = DNSRecord.parse(reply)
                    rec.rr, rec.auth, rec.ar = [], [], []
                    rec.header.tc = 1
                    reply = rec.pack()
            if not self.transport.is_closing():  # unlistened while we were forwarding
                self.transport.sendto(reply, addr)


class _Listener:
    def __init__(self, udp: asyncio.DatagramTransport, tcp: asyncio.Server, port: int) -> None:
        self.udp = udp
        self.tcp = tcp
        self.port = port

    def close(self) -> None:
        self.udp.close()
        self.tcp.close()


class DnsResponder:
    """UDP and TCP on each address it is told to listen on, one address per overlay network."""

    def __init__(self, directory: ServiceDirectory, upstreams: list[tuple[str, int]] | None = None) -> None:
        self.directory = directory
        self.upstreams = system_upstreams() if upstreams is None else upstreams
        self._listeners: dict[str, _Listener] = {}  # network ID → sockets
        self._background: set[asyncio.Task[None]] = set()

    def listening(self, network_id: str) -> tuple[str, int] | None:
        lst = self._listeners.get(network_id)
        if lst is None:
            return None
        return lst.udp.get_extra_info("sockname")[:2]

    async def listen(self, network_id: str, host: str, port: int = 53) -> int:
        """Answer queries that arrive at ``host:port`` as coming from ``network_id``; returns the
        port (useful with ``port=0``). Listening again on the same network moves it."""
        await self.unlisten(network_id)
        loop = asyncio.get_running_loop()
        # With port 0 the kernel picks the UDP port; the same TCP port may be another process's:
        # then pick again (a fixed port, 53, is the caller's to have free).
        for attempt in range(1 if port else PICK_ATTEMPTS):
            udp, _ = await loop.create_datagram_endpoint(lambda: _Udp(self, network_id), local_addr=(host, port))
            bound = udp.get_extra_info("sockname")[1]
            try:
                tcp = await asyncio.start_server(
                    lambda r, w: self._tcp_client(r, w, network_id), host, bound, reuse_address=True
                )
            except OSError as e:
                udp.close()
                if port or e.errno != errno.EADDRINUSE or attempt == PICK_ATTEMPTS - 1:
                    raise
                continue
            self._listeners[network_id] = _Listener(udp, tcp, bound)
            return int(bound)
        raise AssertionError("unreachable")

    async def unlisten(self, network_id: str) -> None:
        lst = self._listeners.pop(network_id, None)
        if lst is not None:
            lst.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(lst.tcp.wait_closed(), 1.0)

    async def close(self) -> None:
        for net_id in list(self._listeners):
            await self.unlisten(net_id)
        for t in list(self._background):
            t.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, network_id: str) -> None:
        peer = writer.get_extra_info("peername") or ("", 0)
        try:
            while True:
                head = await reader.readexactly(2)
                data = await reader.readexactly(struct.unpack("!H", head)[0])
                reply = await self.answer(data, network_id, peer[0], tcp=True)
                if reply is None:
                    break
                writer.write(struct.pack("!H", len(reply)) + reply[:_TCP_MAX])
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def answer(self, data: bytes, network_id: str, client_ip: str, *, tcp: bool = False) -> bytes | None:
        """The reply to one query packet (``None``: not a DNS query, ignore it)."""
        try:
            query = DNSRecord.parse(data)
        except Exception:
            return None
        if query.header.qr or not query.questions:
            return None
        q = query.q
        scope = self.directory.scope(network_id, client_ip)
        reply = query.reply()
        name = str(q.qname)
        if q.qtype in (QTYPE.A, QTYPE.AAAA, QTYPE.ANY):
            addrs = self.directory.lookup(name, scope)
            if addrs is not None:
                # Known name: IPv4 answers only (overlays are IPv4); an empty NOERROR for AAAA so the
                # client does not go looking elsewhere.
                if q.qtype != QTYPE.AAAA:
                    for ip in addrs:
                        reply.add_answer(RR(q.qname, QTYPE.A, rdata=A(ip), ttl=TTL_S))
                return reply.pack()
        elif q.qtype == QTYPE.PTR:
            target = self.directory.reverse(name, scope)
            if target is not None:
                reply.add_answer(RR(q.qname, QTYPE.PTR, rdata=PTR(target + "."), ttl=TTL_S))
                return reply.pack()
        return await self._forward(data, query, tcp)

    async def _forward(self, data: bytes, query: DNSRecord, tcp: bool) -> bytes:
        for host, port in self.upstreams:
            try:
                if tcp:
                    return await asyncio.wait_for(_ask_tcp(data, host, port), UPSTREAM_TIMEOUT_S)
                return await asyncio.wait_for(_ask_udp(data, host, port), UPSTREAM_TIMEOUT_S)
            except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
                log.debug("upstream %s:%d failed: %s", host, port, exc)
        reply = query.reply()
        reply.header.rcode = RCODE.SERVFAIL
        return reply.pack()


async def _ask_tcp(data: bytes, host: str, port: int) -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(struct.pack("!H", len(data)) + data)
        await writer.drain()
        n = struct.unpack("!H", await reader.readexactly(2))[0]
        return await reader.readexactly(n)
    finally:
        writer.close()


class _OneReply(asyncio.DatagramProtocol):
    def __init__(self, txid: bytes) -> None:
        self.txid = txid
        self.reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if data[:2] == self.txid and not self.reply.done():
            self.reply.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.reply.done():
            self.reply.set_exception(exc)


async def _ask_udp(data: bytes, host: str, port: int) -> bytes:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(
        lambda: _OneReply(data[:2]), remote_addr=(host, port), family=socket.AF_INET
    )
    try:
        transport.sendto(data)
        return await proto.reply
    finally:
        transport.close()

