"""The node's DNS responder over real sockets on 127.0.0.1: service names, aliases, tasks.<name>,
task names, round-robin, per-container network scope, PTR, TCP, and forwarding upstream."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator

import pytest
from dnslib import QTYPE, RCODE, RR, A, DNSRecord

from shoal.agent.network.dns import DnsResponder, ServiceDirectory, system_upstreams
from shoal.dispatcher.protocol import ServiceRecord

WEB = ServiceRecord(
    service_id="s1",
    name="web",
    aliases=["frontend"],
    addrs=["10.0.1.3", "10.0.1.4"],
    tasks={"web.1.aaa": "10.0.1.3", "web.2.bbb": "10.0.1.4"},
)
DB = ServiceRecord(service_id="s2", name="db", addrs=["10.0.2.7"], tasks={"db.1.ccc": "10.0.2.7"})
EMPTY = ServiceRecord(service_id="s3", name="idle")
API = ServiceRecord(  # endpoint mode vip
    service_id="s4", name="api", aliases=["backend"], vip="10.0.1.2", addrs=["10.0.1.5", "10.0.1.6"],
    tasks={"api.1.ddd": "10.0.1.5", "api.2.eee": "10.0.1.6"},
)


async def ask(port: int, name: str, qtype: str = "A", host: str = "127.0.0.1") -> DNSRecord:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, (host, port))
        await loop.sock_sendall(sock, DNSRecord.question(name, qtype).pack())
        data = await asyncio.wait_for(loop.sock_recv(sock, 4096), 3)
    finally:
        sock.close()
    return DNSRecord.parse(data)


def a_records(reply: DNSRecord) -> list[str]:
    return [str(rr.rdata) for rr in reply.rr if rr.rtype == QTYPE.A]


class Upstream(asyncio.DatagramProtocol):
    """A stand-in upstream server on loopback: answers every A query with 192.0.2.1."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        q = DNSRecord.parse(data)
        reply = q.reply()
        reply.add_answer(RR(q.q.qname, QTYPE.A, rdata=A("192.0.2.1"), ttl=60))
        self.transport.sendto(reply.pack(), addr)  # type: ignore[attr-defined]


@pytest.fixture
async def upstream() -> AsyncIterator[int]:
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(Upstream, local_addr=("127.0.0.1", 0))
    yield transport.get_extra_info("sockname")[1]
    transport.close()


@pytest.fixture
async def served(upstream: int) -> AsyncIterator[tuple[DnsResponder, int]]:
    directory = ServiceDirectory()
    directory.set_records("net1", [WEB, EMPTY, API])
    directory.set_records("net2", [DB])
    responder = DnsResponder(directory, [("127.0.0.1", upstream)])
    port = await responder.listen("net1", "127.0.0.1", 0)
    yield responder, port
    await responder.close()


async def test_service_name_and_alias_answer_every_task_ip(served: tuple[DnsResponder, int]) -> None:
    _, port = served
    for name in ("web", "WEB.", "frontend", "tasks.web", "tasks.frontend"):
        reply = await ask(port, name)
        assert reply.header.rcode == RCODE.NOERROR, name
        assert sorted(a_records(reply)) == ["10.0.1.3", "10.0.1.4"], name


async def test_vip_mode_names_answer_the_vip_and_tasks_names_the_tasks(served: tuple[DnsResponder, int]) -> None:
    _, port = served
    for name in ("api", "backend"):
        assert a_records(await ask(port, name)) == ["10.0.1.2"], name
    for name in ("tasks.api", "tasks.backend"):
        assert sorted(a_records(await ask(port, name))) == ["10.0.1.5", "10.0.1.6"], name
    assert a_records(await ask(port, "api.2.eee")) == ["10.0.1.6"]


async def test_round_robin_rotates_the_order(served: tuple[DnsResponder, int]) -> None:
    _, port = served
    firsts = {a_records(await ask(port, "web"))[0] for _ in range(4)}
    assert firsts == {"10.0.1.3", "10.0.1.4"}


async def test_task_name_answers_its_own_ip(served: tuple[DnsResponder, int]) -> None:
    _, port = served
    assert a_records(await ask(port, "web.2.bbb")) == ["10.0.1.4"]


async def test_known_name_without_tasks_and_aaaa_are_empty_noerror(served: tuple[DnsResponder, int]) -> None:
    _, port = served
    idle = await ask(port, "idle")
    assert (idle.header.rcode, idle.rr) == (RCODE.NOERROR, [])
    six = await ask(port, "web", "AAAA")
    assert (six.header.rcode, six.rr) == (RCODE.NOERROR, [])


async def test_other_networks_names_are_not_visible_unless_the_container_is_on_them(
    served: tuple[DnsResponder, int],
) -> None:
    responder, port = served
    # 127.0.0.1 is not a known endpoint: only net1's names; "db" (net2) goes upstream.
    assert a_records(await ask(port, "db")) == ["192.0.2.1"]
    responder.directory.set_endpoint("net1", "127.0.0.1", ["net1", "net2"])
    assert a_records(await ask(port, "db")) == ["10.0.2.7"]
    responder.directory.forget_endpoint("net1", "127.0.0.1")
    assert a_records(await ask(port, "db")) == ["192.0.2.1"]


async def test_reverse_lookup_names_the_task(served: tuple[DnsResponder, int]) -> None:
    _, port = served
    reply = await ask(port, "3.1.0.10.in-addr.arpa", "PTR")
    assert [str(rr.rdata) for rr in reply.rr] == ["web.1.aaa."]


async def test_unknown_names_are_forwarded_upstream(served: tuple[DnsResponder, int]) -> None:
    _, port = served
    reply = await ask(port, "example.org")
    assert a_records(reply) == ["192.0.2.1"]


async def test_no_reachable_upstream_is_servfail(upstream: int) -> None:
    free = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    free.bind(("127.0.0.1", 0))
    dead_port = free.getsockname()[1]
    free.close()  # nothing listens there now: the forward gets "connection refused"
    responder = DnsResponder(ServiceDirectory(), [("127.0.0.1", dead_port)])
    port = await responder.listen("n", "127.0.0.1", 0)
    try:
        reply = await ask(port, "nowhere.example")
        assert reply.header.rcode == RCODE.SERVFAIL
    finally:
        await responder.close()


async def test_tcp_queries_are_answered(served: tuple[DnsResponder, int]) -> None:
    _, port = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for _ in range(2):  # two queries on one connection
            q = DNSRecord.question("tasks.web").pack()
            writer.write(struct.pack("!H", len(q)) + q)
            await writer.drain()
            n = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 3))[0]
            reply = DNSRecord.parse(await reader.readexactly(n))
            assert sorted(a_records(reply)) == ["10.0.1.3", "10.0.1.4"]
    finally:
        writer.close()


async def test_records_update_in_place_and_removed_networks_go_upstream(served: tuple[DnsResponder, int]) -> None:
    responder, port = served
    responder.directory.set_records("net1", [ServiceRecord(service_id="s1", name="web", addrs=["10.0.1.9"])])
    assert a_records(await ask(port, "web")) == ["10.0.1.9"]
    responder.directory.remove_network("net1")
    assert a_records(await ask(port, "web")) == ["192.0.2.1"]


async def test_unlisten_closes_the_sockets(served: tuple[DnsResponder, int]) -> None:
    responder, port = served
    await responder.unlisten("net1")
    assert responder.listening("net1") is None
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


def test_system_upstreams_reads_ipv4_nameservers(tmp_path: object) -> None:
    from pathlib import Path

    conf = Path(str(tmp_path)) / "resolv.conf"
    conf.write_text("search example\nnameserver 10.9.8.7\nnameserver ::1\noptions ndots:0\n")
    assert system_upstreams(str(conf)) == [("10.9.8.7", 53)]
