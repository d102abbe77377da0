"""Where traffic goes during a blue-green release: the routing mesh's records (every node flips
together), the dispatcher's forwarding of a label change, and the DNS records leave standby tasks
out until the switch."""

from __future__ import annotations

import msgspec

from shoal.allocator import NetworkAllocator
from shoal.controlapi.networks import create_network, ingress_spec
from shoal.dispatcher.dispatcher import Dispatcher
from shoal.dispatcher.netstate import NetworkIndex
from shoal.extensions import STANDBY, STANDBY_LABEL, is_standby
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
from shoal.orchestrator.task import new_task
from shoal.orchestrator.testutils import make_node, make_service, make_store
from shoal.store import Action, Event


def _labelled(task: Task, standby: bool) -> Task:
    labels = dict(task.Labels or {})
    if standby:
        labels[STANDBY_LABEL] = STANDBY
    else:
        labels.pop(STANDBY_LABEL, None)
    return msgspec.structs.replace(task, Labels=labels)


def _running(task: Task) -> Task:
    return msgspec.structs.replace(task, Status=msgspec.structs.replace(task.Status, State=TaskState.RUNNING))


def test_mesh_records_flip_every_node_together_at_the_switch() -> None:
    """On the ingress network every node is on it (a task there or not); the switch is one change
    of the records, which every node hears, so no node keeps sending to the old version."""
    store = make_store()
    ingress = create_network(store, ingress_spec())
    a, b, c = (make_node(store, h) for h in ("a", "b", "c"))
    alloc = NetworkAllocator(store)
    port = PortConfig(TargetPort=80, PublishedPort=8080)
    svc = make_service(store, "web", replicas=1, EndpointSpec=EndpointSpec(Ports=[port]))
    svc = msgspec.structs.replace(svc, Endpoint=Endpoint(Spec=svc.Spec.EndpointSpec, Ports=[port]))
    with store.tx() as tx:
        tx.update("service", svc)
    old = msgspec.structs.replace(_running(new_task(svc, 1)), NodeID=a.ID)
    new = msgspec.structs.replace(_labelled(_running(new_task(svc, 1)), True), NodeID=b.ID)
    out, failed, nets = alloc.attach_tasks([old, new])
    assert not failed and all(t.NetworksAttachments[0].Network.ID == ingress.ID for t in out)
    with store.tx() as tx:
        for x in nets:
            tx.update("network", x)
        for t in out:
            tx.create("task", t)
    alloc.reconcile_all()  # every node gets its address on ingress while a service publishes
    assert set(store.get("network", ingress.ID).NodeAddresses) == {a.ID, b.ID, c.ID}
    old, new = out
    old_ip, new_ip = (t.NetworksAttachments[0].Addresses[0].split("/")[0] for t in out)
    idx = NetworkIndex(store)
    assert all(idx.on(ingress.ID, n.ID) for n in (a, b, c))
    rec = idx.state(ingress.ID, c.ID).records[0]  # c runs nothing and still forwards port 8080
    assert (rec.addrs, [(p.protocol, p.port, p.target_port) for p in rec.ports]) == ([old_ip], [("tcp", 8080, 80)])
    # The switch: the new task loses its label and the old one is no longer wanted, in one commit.
    dirty: dict[str, set[str]] = {}
    idx.task_changed(new.ID, _labelled(new, False), dirty)
    idx.task_changed(old.ID, msgspec.structs.replace(old, DesiredState=TaskState.SHUTDOWN), dirty)
    assert dirty == {ingress.ID: {a.ID, b.ID, c.ID}}
    assert idx.records(ingress.ID)[0].addrs == [new_ip]


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
