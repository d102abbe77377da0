"""Where traffic goes during a blue-green release: the ingress balancer (real TCP on loopback), the
task controller's re-announcement, the dispatcher's forwarding of a label change, and the DNS
records leave standby tasks out until the switch."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import msgspec
import pytest

from shoal.agent.ingress import IngressProxy
from shoal.allocator import NetworkAllocator
from shoal.controlapi.networks import create_network
from shoal.dispatcher.dispatcher import Dispatcher
from shoal.dispatcher.netstate import NetworkIndex
from shoal.models import (
    ContainerSpec,
    Endpoint,
    EndpointSpec,
    NetworkAttachmentConfig,
    NetworkSpec,
    PortConfig,
    Task,
    TaskSpec,
    TaskState,
)
from shoal.orchestrator.bluegreen import STANDBY, STANDBY_LABEL, is_standby
from shoal.orchestrator.task import new_task
from shoal.orchestrator.testutils import make_node, make_service, make_store
from shoal.store import Action, Event


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _labelled(task: Task, standby: bool) -> Task:
    labels = dict(task.Labels or {})
    if standby:
        labels[STANDBY_LABEL] = STANDBY
    else:
        labels.pop(STANDBY_LABEL, None)
    return msgspec.structs.replace(task, Labels=labels)


def _running(task: Task) -> Task:
    return msgspec.structs.replace(task, Status=msgspec.structs.replace(task.Status, State=TaskState.RUNNING))


async def _backend(ip: str, port: int, body: bytes) -> asyncio.Server:
    async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(body)
        await w.drain()
        w.close()

    return await asyncio.start_server(serve, ip, port)


async def _get(port: int) -> bytes:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    try:
        return await asyncio.wait_for(r.read(), 3)
    finally:
        w.close()


@pytest.fixture
async def two_versions() -> AsyncIterator[tuple[int, int]]:
    """v1 answers on 127.0.0.1:<target>, v2 on 127.0.0.2:<target>; yields (published, target)."""
    target = _free_port()
    servers = [await _backend("127.0.0.1", target, b"v1"), await _backend("127.0.0.2", target, b"v2")]
    try:
        yield _free_port(), target
    finally:
        for s in servers:
            s.close()


async def test_ingress_sends_nothing_to_standby_tasks_until_the_switch(two_versions: tuple[int, int]) -> None:
    published, target = two_versions
    store = make_store()
    port = PortConfig(TargetPort=target, PublishedPort=published)
    svc = make_service(store, "web", replicas=1, EndpointSpec=EndpointSpec(Ports=[port]))
    svc = msgspec.structs.replace(svc, Endpoint=Endpoint(Spec=svc.Spec.EndpointSpec, Ports=[port]))
    old, new = _running(new_task(svc, 1)), _labelled(_running(new_task(svc, 1)), True)
    proxy = IngressProxy("127.0.0.1")
    try:
        proxy.task_running(old, "127.0.0.1")
        proxy.task_running(new, "127.0.0.2")  # a standby task is running beside the old one
        for _ in range(20):
            await asyncio.sleep(0.01)
            if proxy.ports:
                break
        assert {await _get(published) for _ in range(6)} == {b"v1"}
        # The switch as the agent sees it: the old task is no longer wanted, the new one lost its label.
        proxy.task_stopped(old)
        proxy.task_running(_labelled(new, False), "127.0.0.2")
        await asyncio.sleep(0.05)
        assert proxy.ports == [published]  # the listener stayed up through the switch
        assert {await _get(published) for _ in range(6)} == {b"v2"}
    finally:
        await proxy.close()


def test_dispatcher_forwards_a_label_change_only() -> None:
    store = make_store()
    node = make_node(store, "a")
    svc = make_service(store, "web", replicas=1)
    t = msgspec.structs.replace(_labelled(_running(new_task(svc, 1)), True), NodeID=node.ID)
    status_only = msgspec.structs.replace(t, Status=msgspec.structs.replace(t.Status, Message="again"))
    assert Dispatcher._delta(node.ID, [Event("task", Action.UPDATE, status_only, t, 2)]) is None
    switched = _labelled(t, False)
    msg = Dispatcher._delta(node.ID, [Event("task", Action.UPDATE, switched, t, 3)])
    assert msg is not None and [x.ID for x in msg.tasks] == [t.ID] and not is_standby(msg.tasks[0])


def test_dns_records_leave_standby_tasks_out_until_the_switch() -> None:
    store = make_store()
    n = make_node(store, "a")
    net = create_network(store, NetworkSpec(Name="front"))
    alloc = NetworkAllocator(store)
    tmpl = TaskSpec(
        ContainerSpec=ContainerSpec(Image="busybox:latest"), Networks=[NetworkAttachmentConfig(Target=net.ID)]
    )
    svc = make_service(store, "web", replicas=1, template=tmpl)
    tasks = [msgspec.structs.replace(_running(new_task(svc, 1)), NodeID=n.ID) for _ in range(2)]
    tasks[1] = _labelled(tasks[1], True)
    out, _, nets = alloc.attach_tasks(tasks)
    with store.tx() as tx:
        for x in nets:
            tx.update("network", x)
        for t in out:
            tx.create("task", t)
    old_ip, new_ip = (t.NetworksAttachments[0].Addresses[0].split("/")[0] for t in out)
    idx = NetworkIndex(store)
    assert idx.records(net.ID)[0].addrs == [old_ip]
    # The switch: the label goes (the records change, every node on the network hears), the old stops.
    switched = _labelled(out[1], False)
    dirty: dict[str, set[str]] = {}
    idx.task_changed(switched.ID, switched, dirty)
    assert dirty == {net.ID: {n.ID}}
    assert sorted(idx.records(net.ID)[0].addrs) == sorted([old_ip, new_ip])
    stopped = msgspec.structs.replace(out[0], Status=msgspec.structs.replace(out[0].Status, State=TaskState.SHUTDOWN))
    idx.task_changed(stopped.ID, stopped, dirty)
    assert idx.records(net.ID)[0].addrs == [new_ip]
