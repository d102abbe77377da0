"""Replicated orchestrator: create, scale, delete, node drain/down, and restart of the orchestrator."""

from __future__ import annotations

from collections import Counter

import msgspec

from shoal.models import NodeAvailability, NodeState, TaskState, TaskStatus
from shoal.orchestrator import ReplicatedOrchestrator
from shoal.orchestrator.testutils import (
    FakeAgent,
    delete_service,
    make_node,
    make_service,
    make_store,
    runnable_tasks,
    running,
    set_task_state,
    settle,
    update_node,
    update_service,
    wait_for,
)
from shoal.scheduler import Scheduler


def slots(store, sid) -> list[int]:
    return sorted(t.Slot for t in runnable_tasks(store, sid))


async def test_create_makes_pending_tasks_with_contract_fields():
    store = make_store()
    svc = make_service(store, "web", replicas=3, Labels={"a": "b"})
    async with running(ReplicatedOrchestrator(store)):
        await wait_for(lambda: len(store.tasks_of_service(svc.ID)) == 3)
    tasks = store.tasks_of_service(svc.ID)
    assert sorted(t.Slot for t in tasks) == [1, 2, 3]
    for t in tasks:
        assert t.Status.State is TaskState.PENDING
        assert t.Status.Message == "pending task scheduling"
        assert t.Status.Timestamp
        assert t.DesiredState is TaskState.RUNNING
        assert t.NodeID == ""
        assert t.Spec == svc.Spec.TaskTemplate
        assert t.SpecVersion is not None and t.SpecVersion.Index == svc.Version.Index
        assert t.ServiceAnnotations == {"Name": "web", "Labels": {"a": "b"}}
        assert t.Labels == {"a": "b"}
        assert t.CreatedAt and t.Version.Index > 0


async def test_scale_up_uses_lowest_free_slots_and_scale_down_prefers_unplaced():
    store = make_store()
    svc = make_service(store, "web", replicas=2)
    async with running(ReplicatedOrchestrator(store)):
        await wait_for(lambda: len(runnable_tasks(store, svc.ID)) == 2)
        update_service(store, svc.ID, replicas=5)
        await wait_for(lambda: len(runnable_tasks(store, svc.ID)) == 5)
        assert slots(store, svc.ID) == [1, 2, 3, 4, 5]
        # Slots 1 and 4 run; the others were never placed: they go first, highest slot first.
        by_slot = {t.Slot: t for t in runnable_tasks(store, svc.ID)}
        n1 = make_node(store, "n1")
        with store.tx() as tx:
            for s in (1, 4):
                t = by_slot[s]
                tx.update(
                    "task",
                    msgspec.structs.replace(t, NodeID=n1.ID, Status=TaskStatus(State=TaskState.RUNNING)),
                )
        update_service(store, svc.ID, replicas=3)
        await wait_for(lambda: len(runnable_tasks(store, svc.ID)) == 3)
        assert slots(store, svc.ID) == [1, 2, 4]
        removed = [t for t in store.tasks_of_service(svc.ID) if t.DesiredState is TaskState.REMOVE]
        assert sorted(t.Slot for t in removed) == [3, 5]
        update_service(store, svc.ID, replicas=4)
        await wait_for(lambda: len(runnable_tasks(store, svc.ID)) == 4)
        assert slots(store, svc.ID) == [1, 2, 3, 4]


async def test_scale_down_balances_nodes_then_highest_slot():
    store = make_store()
    n1, n2 = make_node(store, "n1"), make_node(store, "n2")
    svc = make_service(store, "web", replicas=6)
    agent = FakeAgent(store)
    # Place by hand: n1 gets slots 1-4, n2 gets 5-6 (an unbalanced cluster after a node came back).
    async with running(ReplicatedOrchestrator(store)):
        await wait_for(lambda: len(runnable_tasks(store, svc.ID)) == 6)
        with store.tx() as tx:
            for t in runnable_tasks(store, svc.ID):
                node = n1 if t.Slot <= 4 else n2
                tx.update(
                    "task", msgspec.structs.replace(t, NodeID=node.ID, Status=TaskStatus(State=TaskState.ASSIGNED))
                )
        agent.step()
        update_service(store, svc.ID, replicas=3)
        await wait_for(lambda: len(runnable_tasks(store, svc.ID)) == 3)
    per_node = Counter(t.NodeID for t in runnable_tasks(store, svc.ID))
    # From 4+2: remove from n1 (4->3), then n1 again (3 vs 2 -> 2), then tie 2/2 -> highest slot (6 on n2).
    assert per_node == {n1.ID: 2, n2.ID: 1}
    assert slots(store, svc.ID) == [1, 2, 5]


async def test_service_delete_marks_all_tasks_remove():
    store = make_store()
    svc = make_service(store, "web", replicas=3)
    async with running(ReplicatedOrchestrator(store)):
        await wait_for(lambda: len(store.tasks_of_service(svc.ID)) == 3)
        delete_service(store, svc.ID)
        await wait_for(
            lambda: all(t.DesiredState is TaskState.REMOVE for t in store.tasks_of_service(svc.ID)),
            what="all tasks REMOVE",
        )
        await settle()
        assert len(store.tasks_of_service(svc.ID)) == 3  # the reaper deletes them, not the orchestrator


async def test_drained_node_tasks_are_shut_down_and_replaced_elsewhere():
    store = make_store()
    n1, n2 = make_node(store, "n1"), make_node(store, "n2")
    svc = make_service(store, "web", replicas=4)
    agent = FakeAgent(store)
    async with running(ReplicatedOrchestrator(store), Scheduler(store), agent):
        await wait_for(
            lambda: sum(t.Status.State is TaskState.RUNNING for t in runnable_tasks(store, svc.ID)) == 4,
            what="4 running",
        )
        assert Counter(t.NodeID for t in runnable_tasks(store, svc.ID)) == {n1.ID: 2, n2.ID: 2}
        update_node(store, n1.ID, availability=NodeAvailability.DRAIN)
        await wait_for(
            lambda: Counter(
                t.NodeID for t in runnable_tasks(store, svc.ID) if t.Status.State is TaskState.RUNNING
            )
            == {n2.ID: 4},
            what="all on n2",
        )
    on_n1 = store.tasks_on_node(n1.ID)
    assert len(on_n1) == 2
    assert all(t.DesiredState is TaskState.SHUTDOWN and t.Status.State is TaskState.SHUTDOWN for t in on_n1)
    # The replacements reuse the evacuated slots.
    assert slots(store, svc.ID) == [1, 2, 3, 4]


class StubbornAgent(FakeAgent):
    """Runs tasks like FakeAgent, but the tasks on ``keep`` never stop (a long stop grace period)."""

    def __init__(self, store, keep: str) -> None:
        super().__init__(store)
        self.keep = keep

    def step(self) -> int:
        run = [t.ID for t in self.store.list("task")
               if t.NodeID and t.DesiredState is TaskState.RUNNING and t.Status.State is TaskState.ASSIGNED]
        stop = [t.ID for t in self.store.list("task")
                if t.NodeID and t.NodeID != self.keep and t.DesiredState.order > TaskState.RUNNING.order
                and TaskState.ASSIGNED.order <= t.Status.State.order <= TaskState.RUNNING.order]
        if run:
            set_task_state(self.store, run, TaskState.RUNNING)
        if stop:
            set_task_state(self.store, stop, TaskState.SHUTDOWN)
        return len(run) + len(stop)


def desired(store, sid) -> Counter:
    return Counter((t.NodeID, t.DesiredState, t.Status.State) for t in store.tasks_of_service(sid))


def running_on(store, sid) -> Counter:
    """Replicas running, by node."""
    return Counter(t.NodeID for t in runnable_tasks(store, sid) if t.Status.State is TaskState.RUNNING)


async def drained_with_one_held(store, sid, node_id: str, replicas: int) -> None:
    """Once ``replicas`` run, ``node_id`` is drained: a replacement is held READY."""
    await wait_for(lambda: sum(running_on(store, sid).values()) == replicas)
    update_node(store, node_id, availability=NodeAvailability.DRAIN)
    await wait_for(lambda: sum(d is TaskState.READY for _, d, _ in desired(store, sid)) == 1,
                   what="a replacement held READY")


async def test_a_replica_moved_off_a_drained_node_starts_once_its_old_task_stopped():
    """As Swarm's restart supervisor (waitStop): the replacement is placed at once but held READY
    while the old task still runs; it starts when the old one has stopped."""
    store = make_store()
    n1, n2 = make_node(store, "n1"), make_node(store, "n2")
    svc = make_service(store, "web", replicas=2)
    agent = FakeAgent(store)
    async with running(ReplicatedOrchestrator(store), Scheduler(store), agent):
        await wait_for(lambda: sum(running_on(store, svc.ID).values()) == 2)
        old = {t.ID for t in store.tasks_on_node(n1.ID)}
        assert len(old) == 1
        agent.paused = True  # the old task takes its time to stop
        update_node(store, n1.ID, availability=NodeAvailability.DRAIN)
        await wait_for(lambda: desired(store, svc.ID)[(n2.ID, TaskState.READY, TaskState.ASSIGNED)] == 1,
                       what="the replacement placed on n2, held READY")
        await settle()
        assert store.get("task", next(iter(old))).Status.State is TaskState.RUNNING  # still
        assert desired(store, svc.ID)[(n2.ID, TaskState.READY, TaskState.ASSIGNED)] == 1  # so: not started
        agent.paused = False
        agent.step()  # the old task stops: the replacement starts
        await wait_for(lambda: running_on(store, svc.ID) == {n2.ID: 2}, what="both on n2")
    assert all(store.get("task", t).Status.State is TaskState.SHUTDOWN for t in old)


async def test_a_replacement_waits_no_longer_than_its_node_is_up_or_the_timeout(monkeypatch):
    store = make_store()
    n1 = make_node(store, "n1")
    make_node(store, "n2"), make_node(store, "n3")
    svc = make_service(store, "web", replicas=3)
    agent = StubbornAgent(store, keep=n1.ID)
    async with running(ReplicatedOrchestrator(store), Scheduler(store), agent):
        await drained_with_one_held(store, svc.ID, n1.ID, 3)
        update_node(store, n1.ID, state=NodeState.DOWN)  # the old task's node is lost: no use waiting
        await wait_for(lambda: [t.NodeID != n1.ID and t.Status.State is TaskState.RUNNING
                                for t in runnable_tasks(store, svc.ID)] == [True] * 3, what="3 running off n1")

    import shoal.orchestrator.handover as handover
    monkeypatch.setattr(handover, "OLD_TASK_TIMEOUT_S", 0.3)
    store = make_store()
    n1, n2 = make_node(store, "n1"), make_node(store, "n2")
    svc = make_service(store, "web", replicas=2)
    agent = StubbornAgent(store, keep=n1.ID)
    async with running(ReplicatedOrchestrator(store), Scheduler(store), agent):
        await drained_with_one_held(store, svc.ID, n1.ID, 2)
        # The old task never stops: after the timeout its replacement starts anyway.
        await wait_for(lambda: running_on(store, svc.ID) == {n2.ID: 2}, what="both on n2")
        assert [t.Status.State for t in store.tasks_on_node(n1.ID)] == [TaskState.RUNNING]


async def test_a_new_leader_starts_a_replacement_it_does_not_track():
    store = make_store()
    n1, n2 = make_node(store, "n1"), make_node(store, "n2")
    svc = make_service(store, "web", replicas=2)
    agent = StubbornAgent(store, keep=n1.ID)
    async with running(ReplicatedOrchestrator(store), Scheduler(store), agent):
        await drained_with_one_held(store, svc.ID, n1.ID, 2)
    # The leader is gone with its memory; the next one starts the held replacement at once.
    async with running(ReplicatedOrchestrator(store), Scheduler(store), agent):
        await wait_for(lambda: running_on(store, svc.ID) == {n2.ID: 2}, what="both on n2")


async def test_down_node_tasks_are_replaced():
    store = make_store()
    n1, n2 = make_node(store, "n1"), make_node(store, "n2")
    svc = make_service(store, "web", replicas=2)
    agent = FakeAgent(store)
    async with running(ReplicatedOrchestrator(store), Scheduler(store), agent):
        await wait_for(lambda: sum(t.Status.State is TaskState.RUNNING for t in runnable_tasks(store, svc.ID)) == 2)
        update_node(store, n2.ID, state=NodeState.DOWN)
        await wait_for(
            lambda: {t.NodeID for t in runnable_tasks(store, svc.ID)} == {n1.ID},
            what="tasks moved off the down node",
        )
    assert slots(store, svc.ID) == [1, 2]
    lost = store.tasks_on_node(n2.ID)
    assert lost and all(t.DesiredState is TaskState.SHUTDOWN for t in lost)
    # Nothing on a down node can report, so its tasks are orphaned, and can never come back running.
    assert all(t.Status.State is TaskState.ORPHANED and "node down" in t.Status.Message for t in lost)


async def test_restarted_orchestrator_reconciles_without_duplicates():
    store = make_store()
    make_node(store, "n1")
    svc = make_service(store, "web", replicas=3)
    agent = FakeAgent(store)
    async with running(ReplicatedOrchestrator(store), Scheduler(store), agent):
        await wait_for(lambda: sum(t.Status.State is TaskState.RUNNING for t in runnable_tasks(store, svc.ID)) == 3)
    before = {t.ID for t in store.tasks_of_service(svc.ID)}
    # A new manager: same store, fresh components. Nothing must change.
    async with running(ReplicatedOrchestrator(store), Scheduler(store)):
        await settle()
    assert {t.ID for t in store.tasks_of_service(svc.ID)} == before
    # While it was away the service was scaled and a task died: the new one catches up.
    update_service(store, svc.ID, replicas=4)
    set_task_state(store, runnable_tasks(store, svc.ID)[0].ID, TaskState.FAILED, exit_code=1)
    orch = ReplicatedOrchestrator(store, default_restart_delay_ns=0)
    async with running(orch):
        await wait_for(lambda: len(runnable_tasks(store, svc.ID)) == 4)
        await settle()
    assert slots(store, svc.ID) == [1, 2, 3, 4]
    assert len(store.tasks_of_service(svc.ID)) == 5  # 3 originals + slot 4 + 1 replacement


async def test_orphaned_tasks_of_deleted_service_are_removed_at_start():
    store = make_store()
    svc = make_service(store, "web", replicas=2)
    async with running(ReplicatedOrchestrator(store)):
        await wait_for(lambda: len(store.tasks_of_service(svc.ID)) == 2)
    delete_service(store, svc.ID)  # no orchestrator running
    async with running(ReplicatedOrchestrator(store)):
        await wait_for(lambda: all(t.DesiredState is TaskState.REMOVE for t in store.tasks_of_service(svc.ID)))
