"""The network allocator with the real scheduler and orchestrator on a store: task, node and VIP
addresses, releases, rebuilds after a restart, exhaustion, and the dry-run plan allocating nothing."""

from __future__ import annotations

import ipaddress

import msgspec

from shoal.allocator import NetworkAllocator, holds_addresses
from shoal.controlapi.networks import create_network
from shoal.models import (
    ContainerSpec,
    EndpointSpec,
    IPAMConfig,
    IPAMOptions,
    NetworkAttachmentConfig,
    NetworkSpec,
    TaskSpec,
    TaskState,
)
from shoal.orchestrator import ReplicatedOrchestrator
from shoal.orchestrator.testutils import (
    delete_service,
    make_node,
    make_service,
    make_store,
    running,
    set_task_state,
    settle,
    update_service,
    wait_for,
)
from shoal.scheduler import Scheduler
from shoal.scheduler.plan import plan


def template(*nets: str, aliases: list[str] | None = None) -> TaskSpec:
    return TaskSpec(
        ContainerSpec=ContainerSpec(Image="busybox:latest"),
        Networks=[NetworkAttachmentConfig(Target=n, Aliases=aliases) for n in nets] or None,
    )


def components(store):
    alloc = NetworkAllocator(store)
    sched = Scheduler(store)
    sched.allocator = alloc
    return alloc, sched, ReplicatedOrchestrator(store)


def vips(store, sid):
    ep = store.get("service", sid).Endpoint
    return (ep.VirtualIPs or []) if ep is not None else []


def assigned(store, sid):
    return [t for t in store.tasks_of_service(sid) if t.Status.State is TaskState.ASSIGNED]


async def test_tasks_get_addresses_and_nodes_their_own_in_one_commit() -> None:
    store = make_store()
    n1, n2 = make_node(store, "a", addr="192.168.5.1"), make_node(store, "b", addr="192.168.5.2")
    net = create_network(store, NetworkSpec(Name="front"))
    alloc, sched, orch = components(store)
    async with running(alloc, sched, orch):
        svc = make_service(store, "web", replicas=4, template=template(net.ID, aliases=["www"]))
        plain = make_service(store, "plain", replicas=2)
        await wait_for(lambda: len(assigned(store, svc.ID)) == 4 and len(assigned(store, plain.ID)) == 2)
        subnet = ipaddress.ip_network(net.IPAMOptions.Configs[0].Subnet)
        addrs = set()
        for t in assigned(store, svc.ID):
            (att,) = t.NetworksAttachments
            assert att.Network.ID == net.ID and att.Network.NodeAddresses is None
            assert att.Aliases == ["www"]
            (cidr,) = att.Addresses
            assert cidr.endswith("/24") and ipaddress.ip_address(cidr.split("/")[0]) in subnet
            addrs.add(cidr)
        assert len(addrs) == 4 and f"{net.IPAMOptions.Configs[0].Gateway}/24" not in addrs
        # Every node that got a task has its own address on the network, from the top down.
        nodes = store.get("network", net.ID).NodeAddresses
        assert set(nodes) == {n1.ID, n2.ID}
        assert set(nodes.values()) == {"10.0.0.254/24", "10.0.0.253/24"}
        assert not addrs & set(nodes.values())
        # Tasks without networks are untouched.
        assert all(t.NetworksAttachments is None for t in assigned(store, plain.ID))
        # The service got a VIP on the network, shown as Docker shows it.
        await wait_for(lambda: bool(vips(store, svc.ID)))
        (vip,) = vips(store, svc.ID)
        assert vip.NetworkID == net.ID and vip.Addr.endswith("/24") and vip.Addr not in addrs
        assert vips(store, plain.ID) == []


async def test_terminal_and_deleted_tasks_release_orphaned_keep() -> None:
    store = make_store()
    make_node(store, "a")
    net = create_network(store, NetworkSpec(Name="front"))
    alloc, sched, orch = components(store)
    async with running(alloc, sched, orch):
        svc = make_service(store, "web", replicas=3, template=template(net.ID))
        await wait_for(lambda: len(assigned(store, svc.ID)) == 3)
        pool = alloc.pools[net.ID]
        t1, t2, t3 = sorted(assigned(store, svc.ID), key=lambda t: t.Slot)
        ip1 = int(ipaddress.ip_address(t1.NetworksAttachments[0].Addresses[0].split("/")[0]))
        ip2 = int(ipaddress.ip_address(t2.NetworksAttachments[0].Addresses[0].split("/")[0]))
        assert {ip1, ip2} <= pool.used
        set_task_state(store, t1.ID, TaskState.FAILED)
        await wait_for(lambda: t1.ID not in alloc.task_ips, what="failed task released")
        assert ip1 not in pool.used
        assert store.get("task", t1.ID).NetworksAttachments  # the record stays for inspect
        set_task_state(store, t2.ID, TaskState.ORPHANED)
        await settle()
        assert t2.ID in alloc.task_ips and ip2 in pool.used  # orphaned: kept until deleted
        with store.tx() as tx:
            tx.delete("task", t2.ID)
        await wait_for(lambda: t2.ID not in alloc.task_ips, what="deleted task released")
        assert ip2 not in pool.used and t3.ID in alloc.task_ips


async def test_rebuild_from_store_matches_live_state() -> None:
    store = make_store()
    make_node(store, "a")
    make_node(store, "b")
    net = create_network(store, NetworkSpec(Name="front"))
    alloc, sched, orch = components(store)
    async with running(alloc, sched, orch):
        svc = make_service(store, "web", replicas=5, template=template(net.ID))
        await wait_for(lambda: len(assigned(store, svc.ID)) == 5)
        await wait_for(lambda: bool(vips(store, svc.ID)))
        done = sorted(assigned(store, svc.ID), key=lambda t: t.Slot)[0]
        set_task_state(store, done.ID, TaskState.COMPLETE)
        await wait_for(lambda: done.ID not in alloc.task_ips)
        live_used, live_tasks, live_vips = set(alloc.pools[net.ID].used), dict(alloc.task_ips), dict(alloc.vips)
    restarted = NetworkAllocator(store)  # a new manager over the same store
    assert restarted.pools[net.ID].used == live_used
    assert restarted.task_ips == live_tasks
    assert restarted.vips == live_vips
    assert all(holds_addresses(store.get("task", tid)) for tid in restarted.task_ips)


async def test_vip_survives_updates_and_goes_with_dnsrr_and_deletion() -> None:
    store = make_store()
    make_node(store, "a")
    net = create_network(store, NetworkSpec(Name="front"))
    other = create_network(store, NetworkSpec(Name="back"))
    alloc, sched, orch = components(store)
    async with running(alloc, sched, orch):
        svc = make_service(store, "web", replicas=1, template=template(net.ID))
        await wait_for(lambda: bool(vips(store, svc.ID)))
        (vip,) = vips(store, svc.ID)
        # An update that rebuilds the endpoint without VIPs (as the control API does) gets the same back.
        cur = store.get("service", svc.ID)
        with store.tx() as tx:
            wiped = msgspec.structs.replace(cur.Endpoint, VirtualIPs=[])
            tx.update("service", msgspec.structs.replace(cur, Endpoint=wiped))
        await wait_for(lambda: vips(store, svc.ID) == [vip], what="VIP restored")
        # A second network: a second VIP; the first stays.
        update_service(store, svc.ID, TaskTemplate=template(net.ID, other.ID))
        await wait_for(lambda: len(vips(store, svc.ID)) == 2)
        assert vip in vips(store, svc.ID)
        # dnsrr: no VIPs at all.
        update_service(store, svc.ID, EndpointSpec=EndpointSpec(Mode="dnsrr"))
        await wait_for(lambda: vips(store, svc.ID) == [])
        assert svc.ID not in alloc.vips
        update_service(store, svc.ID, EndpointSpec=EndpointSpec(Mode="vip"))
        await wait_for(lambda: len(vips(store, svc.ID)) == 2)
        delete_service(store, svc.ID)
        await wait_for(lambda: svc.ID not in alloc.vips, what="VIPs released")


async def test_exhausted_network_leaves_tasks_pending_with_reason() -> None:
    store = make_store()
    make_node(store, "a")
    # /29: 5 usable addresses less the node's own: 4 for tasks and VIPs.
    net = create_network(
        store, NetworkSpec(Name="tiny", IPAMOptions=IPAMOptions(Configs=[IPAMConfig(Subnet="10.99.0.0/29")]))
    )
    alloc, sched, orch = components(store)
    async with running(alloc, sched, orch):
        svc = make_service(store, "web", replicas=5, template=template(net.ID), EndpointSpec=EndpointSpec(Mode="dnsrr"))
        await wait_for(lambda: len(assigned(store, svc.ID)) == 4)
        await wait_for(lambda: any("could not allocate a network address" in t.Status.Err
                                   for t in store.tasks_of_service(svc.ID)))
        stuck = [t for t in store.tasks_of_service(svc.ID) if t.Status.State is TaskState.PENDING]
        assert len(stuck) == 1 and stuck[0].NetworksAttachments is None
        # The scheduler does not count the unplaced task on the node.
        assert stuck[0].ID not in sched._where


async def test_removed_node_gives_its_addresses_back() -> None:
    store = make_store()
    a = make_node(store, "a")
    net = create_network(store, NetworkSpec(Name="front"))
    alloc, sched, orch = components(store)
    async with running(alloc, sched, orch):
        svc = make_service(store, "web", replicas=1, template=template(net.ID))
        await wait_for(lambda: len(assigned(store, svc.ID)) == 1)
        assert a.ID in store.get("network", net.ID).NodeAddresses
        delete_service(store, svc.ID)
        with store.tx() as tx:
            for t in store.tasks_of_service(svc.ID):
                tx.delete("task", t.ID)
            tx.delete("node", a.ID)
        await wait_for(lambda: not store.get("network", net.ID).NodeAddresses, what="node address dropped")
        assert alloc.pools[net.ID].used == {alloc.pools[net.ID].gateway}


def test_plan_allocates_nothing() -> None:
    store = make_store()
    make_node(store, "a")
    net = create_network(store, NetworkSpec(Name="front"))
    alloc, sched, _ = components(store)
    sched.reconcile_all()
    rev = store.revision
    svc = make_service(store, "web", replicas=1)
    spec = msgspec.structs.replace(svc.Spec, TaskTemplate=template(net.ID))
    placements = plan(store, spec, live=sched)
    assert placements and placements[0].node_id
    assert store.revision == rev + 1  # only the make_service write
    assert alloc.pools[net.ID].used == {alloc.pools[net.ID].gateway}
    assert not store.get("network", net.ID).NodeAddresses


def test_tasks_without_networks_skip_the_allocator() -> None:
    store = make_store()
    alloc = NetworkAllocator(store)
    svc = make_service(store, "web", replicas=1)
    from shoal.orchestrator.task import new_task

    tasks = [new_task(svc, i) for i in range(1, 1001)]
    out, failed, updates = alloc.attach_tasks(tasks)
    assert failed == [] and updates == [] and all(a is b for a, b in zip(out, tasks, strict=True))
