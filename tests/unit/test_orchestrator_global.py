"""Global orchestrator: one task per qualifying node, following nodes as they come and go."""

from __future__ import annotations

from collections import Counter

from shoal.models import ContainerSpec, NodeAvailability, NodeState, Placement, TaskSpec, TaskState
from shoal.orchestrator import GlobalOrchestrator
from shoal.orchestrator.testutils import (
    FakeAgent,
    delete_service,
    make_node,
    make_service,
    make_store,
    runnable_tasks,
    running,
    settle,
    update_node,
    wait_for,
)
from shoal.scheduler import Scheduler


def per_node(store, sid) -> Counter:
    return Counter(t.NodeID for t in runnable_tasks(store, sid))


async def test_one_task_per_node_and_new_nodes_get_one():
    store = make_store()
    nodes = [make_node(store, f"n{i}") for i in range(3)]
    svc = make_service(store, "agent", global_=True)
    async with running(GlobalOrchestrator(store), Scheduler(store), FakeAgent(store)):
        await wait_for(lambda: per_node(store, svc.ID) == {n.ID: 1 for n in nodes})
        for t in runnable_tasks(store, svc.ID):
            assert t.Slot == 0
        n4 = make_node(store, "n4")
        await wait_for(lambda: per_node(store, svc.ID).get(n4.ID) == 1, what="task on the new node")
        await wait_for(
            lambda: all(t.Status.State is TaskState.RUNNING for t in runnable_tasks(store, svc.ID)),
            what="all running",
        )
        await settle()
    assert len(store.tasks_of_service(svc.ID)) == 4


async def test_drained_and_down_nodes_lose_their_task_and_get_it_back():
    store = make_store()
    n1, n2 = make_node(store, "n1"), make_node(store, "n2")
    svc = make_service(store, "agent", global_=True)
    async with running(GlobalOrchestrator(store), Scheduler(store), FakeAgent(store)):
        await wait_for(lambda: per_node(store, svc.ID) == {n1.ID: 1, n2.ID: 1})
        update_node(store, n1.ID, availability=NodeAvailability.DRAIN)
        await wait_for(lambda: per_node(store, svc.ID) == {n2.ID: 1}, what="drained node emptied")
        await wait_for(lambda: all(t.Status.State is TaskState.SHUTDOWN for t in store.tasks_on_node(n1.ID)))
        assert [t.DesiredState for t in store.tasks_on_node(n1.ID)] == [TaskState.SHUTDOWN]
        update_node(store, n1.ID, availability=NodeAvailability.ACTIVE)
        await wait_for(lambda: per_node(store, svc.ID) == {n1.ID: 1, n2.ID: 1}, what="task back")
        update_node(store, n2.ID, state=NodeState.DOWN)
        await wait_for(lambda: per_node(store, svc.ID) == {n1.ID: 1}, what="down node emptied")
        # Pause keeps what runs but adds nothing new.
        update_node(store, n1.ID, availability=NodeAvailability.PAUSE)
        await settle()
        assert per_node(store, svc.ID) == {n1.ID: 1}


async def test_constraints_pick_nodes_and_follow_label_changes():
    store = make_store()
    n1 = make_node(store, "n1", labels={"zone": "a"})
    n2 = make_node(store, "n2", labels={"zone": "b"})
    tmpl = TaskSpec(
        ContainerSpec=ContainerSpec(Image="busybox:latest"),
        Placement=Placement(Constraints=["node.labels.zone==A"]),  # values compare case-insensitively
    )
    svc = make_service(store, "agent", global_=True, template=tmpl)
    async with running(GlobalOrchestrator(store), Scheduler(store), FakeAgent(store)):
        await wait_for(lambda: per_node(store, svc.ID) == {n1.ID: 1})
        update_node(store, n2.ID, labels={"zone": "a"})
        await wait_for(lambda: per_node(store, svc.ID) == {n1.ID: 1, n2.ID: 1}, what="n2 now qualifies")
        update_node(store, n1.ID, labels={"zone": "c"})
        await wait_for(lambda: per_node(store, svc.ID) == {n2.ID: 1}, what="n1 no longer qualifies")
    assert all(t.DesiredState is TaskState.REMOVE for t in store.tasks_on_node(n1.ID))


async def test_deleted_node_and_deleted_service():
    store = make_store()
    n1, n2 = make_node(store, "n1"), make_node(store, "n2")
    svc = make_service(store, "agent", global_=True)
    async with running(GlobalOrchestrator(store)):
        await wait_for(lambda: per_node(store, svc.ID) == {n1.ID: 1, n2.ID: 1})
        with store.tx() as tx:
            tx.delete("node", n2.ID)
        await wait_for(lambda: per_node(store, svc.ID) == {n1.ID: 1})
        assert all(t.DesiredState is TaskState.REMOVE for t in store.tasks_on_node(n2.ID))
        delete_service(store, svc.ID)
        await wait_for(lambda: all(t.DesiredState is TaskState.REMOVE for t in store.tasks_of_service(svc.ID)))


async def test_restarted_global_orchestrator_does_not_duplicate():
    store = make_store()
    for i in range(3):
        make_node(store, f"n{i}")
    svc = make_service(store, "agent", global_=True)
    async with running(GlobalOrchestrator(store), Scheduler(store), FakeAgent(store)):
        await wait_for(lambda: sum(t.Status.State is TaskState.RUNNING for t in runnable_tasks(store, svc.ID)) == 3)
    before = {t.ID for t in store.tasks_of_service(svc.ID)}
    async with running(GlobalOrchestrator(store)):
        await settle()
    assert {t.ID for t in store.tasks_of_service(svc.ID)} == before


async def test_many_nodes_and_one_more():
    store = make_store()
    for i in range(300):
        make_node(store, f"n{i}")
    svcs = [make_service(store, f"g{i}", global_=True) for i in range(3)]
    async with running(GlobalOrchestrator(store), Scheduler(store)):
        await wait_for(lambda: all(len(store.tasks_of_service(s.ID)) == 300 for s in svcs), what="300 each")
        late = make_node(store, "late")
        await wait_for(lambda: all(per_node(store, s.ID).get(late.ID) == 1 for s in svcs), what="late node served")
        await settle()
    for s in svcs:
        assert len(store.tasks_of_service(s.ID)) == 301
        assert all(t.Status.State is TaskState.ASSIGNED for t in store.tasks_of_service(s.ID))
