"""The running scheduler with the issue-4 rules: cluster settings, preemption, performance."""

from __future__ import annotations

import time
from collections import Counter

from shoal.models import TaskState
from shoal.orchestrator import ReplicatedOrchestrator
from shoal.orchestrator.task import new_task
from shoal.orchestrator.testutils import (
    FakeAgent,
    make_node,
    make_service,
    make_store,
    runnable_tasks,
    running,
    set_task_state,
    wait_for,
)
from shoal.scheduler import Scheduler, plan
from tests.unit.test_placement_rules import CPU, set_cluster_labels, svc_spec


def add_tasks(store, svc, n, start=1):
    tasks = [new_task(svc, s) for s in range(start, start + n)]
    with store.tx() as tx:
        for t in tasks:
            tx.create("task", t)
    return tasks


def by_state(store, sid, state):
    return [t for t in store.tasks_of_service(sid) if t.Status.State is state]


def service(store, name, spec):
    return make_service(store, name, replicas=0, template=spec.TaskTemplate, Labels=spec.Labels)


async def test_cluster_strategy_and_overcommit_changes_apply_live():
    store = make_store()
    set_cluster_labels(store, {"shoal.strategy": "binpack"})
    n1, n2 = make_node(store, "n1", nano_cpus=2 * CPU), make_node(store, "n2", nano_cpus=2 * CPU)
    svc = service(store, "cpu", svc_spec(cpu=CPU))
    async with running(Scheduler(store)):
        add_tasks(store, svc, 2)
        await wait_for(lambda: len(by_state(store, svc.ID, TaskState.ASSIGNED)) == 2)
        assert len({t.NodeID for t in by_state(store, svc.ID, TaskState.ASSIGNED)}) == 1, "binpack"
        add_tasks(store, svc, 4, start=3)
        await wait_for(lambda: any(t.Status.Err for t in by_state(store, svc.ID, TaskState.PENDING)))
        assert len(by_state(store, svc.ID, TaskState.ASSIGNED)) == 4
        assert by_state(store, svc.ID, TaskState.PENDING)[0].Status.Err == (
            "no suitable node (insufficient cpu on 2 nodes)"
        )
        # Raising the overcommit makes room: the pending tasks are retried at once.
        set_cluster_labels(store, {"shoal.strategy": "binpack", "shoal.cpu-overcommit": "2"})
        await wait_for(lambda: len(by_state(store, svc.ID, TaskState.ASSIGNED)) == 6)
    assert set(Counter(t.NodeID for t in by_state(store, svc.ID, TaskState.ASSIGNED))) == {n1.ID, n2.ID}


async def test_preemption_evicts_fewest_lowest_priority_tasks_in_one_transaction():
    store = make_store()
    n1 = make_node(store, "n1", nano_cpus=2 * CPU)
    n2 = make_node(store, "n2", nano_cpus=2 * CPU)
    low = service(store, "low", svc_spec(cpu=CPU, labels={"shoal.priority": "1"}, constraints=["node.hostname==n1"]))
    big_low = service(
        store, "biglow", svc_spec(cpu=2 * CPU, labels={"shoal.priority": "1"}, constraints=["node.hostname==n2"])
    )
    high = service(store, "high", svc_spec(cpu=2 * CPU, labels={"shoal.priority": "10"}))
    zero = service(store, "zero", svc_spec(cpu=CPU))
    async with running(Scheduler(store)):
        # n1 holds two 1-CPU tasks, n2 one 2-CPU task: both full.
        add_tasks(store, low, 2)
        await wait_for(lambda: len(by_state(store, low.ID, TaskState.ASSIGNED)) == 2)
        add_tasks(store, big_low, 1)
        await wait_for(lambda: len(by_state(store, big_low.ID, TaskState.ASSIGNED)) == 1)
        low_nodes = {t.NodeID for t in by_state(store, low.ID, TaskState.ASSIGNED)}
        # Priority 0 never preempts.
        add_tasks(store, zero, 1)
        await wait_for(lambda: by_state(store, zero.ID, TaskState.PENDING)[0].Status.Err != "")
        w = store.watch("task")
        add_tasks(store, high, 1)
        await wait_for(lambda: len(by_state(store, high.ID, TaskState.ASSIGNED)) == 1)
        batches = [await w.get()]
        while not w.queue.empty():
            batches.append(w.drain())
        w.close()
    winner = by_state(store, high.ID, TaskState.ASSIGNED)[0]
    victims = [t for t in store.list("task") if t.DesiredState is TaskState.SHUTDOWN]
    assert len(victims) == 1, "one 2-CPU victim beats two 1-CPU victims"
    (v,) = victims
    assert v.ServiceID == big_low.ID and v.NodeID == winner.NodeID == n2.ID
    assert v.Status.Message == v.Status.Err == "preempted by high (priority 10)"
    assert low_nodes == {n1.ID}
    # Victim and preemptor were written in the same transaction.
    revs = {e.obj.ID: e.revision for b in batches for e in b if e.action.value == "update"}
    assert revs[v.ID] == revs[winner.ID]
    assert by_state(store, zero.ID, TaskState.PENDING)


async def test_preempted_replica_is_replaced_and_waits_with_a_reason():
    store = make_store()
    make_node(store, "n1", nano_cpus=2 * CPU)
    low = make_service(
        store, "low", replicas=1, template=svc_spec(cpu=2 * CPU).TaskTemplate, Labels={"shoal.priority": "0"}
    )
    async with running(ReplicatedOrchestrator(store), Scheduler(store), FakeAgent(store)):
        await wait_for(lambda: len(by_state(store, low.ID, TaskState.RUNNING)) == 1)
        high = make_service(
            store, "high", replicas=1, template=svc_spec(cpu=2 * CPU).TaskTemplate, Labels={"shoal.priority": "5"}
        )
        await wait_for(lambda: len(by_state(store, high.ID, TaskState.RUNNING)) == 1)
        await wait_for(lambda: len(by_state(store, low.ID, TaskState.SHUTDOWN)) == 1)
        # The orchestrator sees the preemption and refills the victim's slot; the replacement
        # waits, with the reason, since the high-priority task holds the node.
        await wait_for(
            lambda: any(
                t.Status.State is TaskState.PENDING and t.Status.Err for t in runnable_tasks(store, low.ID)
            )
        )
    old = [t for t in store.tasks_of_service(low.ID) if t.DesiredState is TaskState.SHUTDOWN]
    assert old and old[0].Status.State is TaskState.SHUTDOWN
    pend = [t for t in runnable_tasks(store, low.ID) if t.Status.State is TaskState.PENDING]
    assert pend[0].Status.Err == "no suitable node (insufficient cpu on 1 node)"


async def test_restarted_scheduler_does_not_double_count_preempted_tasks():
    store = make_store()
    make_node(store, "n1", nano_cpus=2 * CPU)
    low = service(store, "low", svc_spec(cpu=2 * CPU))
    high = service(store, "high", svc_spec(cpu=CPU, labels={"shoal.priority": "3"}))
    async with running(Scheduler(store)):
        add_tasks(store, low, 1)
        await wait_for(lambda: len(by_state(store, low.ID, TaskState.ASSIGNED)) == 1)
        add_tasks(store, high, 2)
        await wait_for(lambda: len(by_state(store, high.ID, TaskState.ASSIGNED)) == 2)
        # The victim reports it stopped: nothing is freed twice, nothing else moves.
        (victim,) = [t for t in store.tasks_of_service(low.ID) if t.DesiredState is TaskState.SHUTDOWN]
        set_task_state(store, victim.ID, TaskState.SHUTDOWN)
        add_tasks(store, high, 1, start=3)
        await wait_for(lambda: any(t.Status.Err for t in by_state(store, high.ID, TaskState.PENDING)))
    assert len(by_state(store, high.ID, TaskState.ASSIGNED)) == 2


async def test_10000_replicas_with_preferences_and_binpack_stay_fast():
    store = make_store()
    for i in range(1000):
        make_node(store, f"node-{i:04d}", labels={"zone": f"z{i % 4}"})
    spec = svc_spec(cpu=CPU // 10, prefs=["node.labels.zone"], labels={"shoal.strategy": "binpack"})
    async with running(ReplicatedOrchestrator(store), Scheduler(store)):
        t0 = time.perf_counter()
        svc = make_service(store, "big", replicas=10_000, template=spec.TaskTemplate, Labels=spec.Labels)
        await wait_for(lambda: len(by_state(store, svc.ID, TaskState.ASSIGNED)) == 10_000, within=10)
        elapsed = time.perf_counter() - t0
    print(f"10,000 replicas, zone preference + binpack on 1,000 nodes: {elapsed:.2f} s")
    zones = Counter(store.get("node", t.NodeID).Spec.Labels["zone"] for t in store.tasks_of_service(svc.ID))
    assert set(zones.values()) == {2500}
    per_node = Counter(t.NodeID for t in store.tasks_of_service(svc.ID))
    # Binpack inside each zone: 2,500 tasks at 40 per node = 62 full nodes and one with 20.
    assert sorted(Counter(per_node.values()).items()) == [(20, 4), (40, 248)]
    assert elapsed < 5
    t0 = time.perf_counter()
    res = plan(store, svc_spec(100))
    assert len(res) == 100 and time.perf_counter() - t0 < 1


async def test_plan_from_a_live_scheduler_and_preemption_in_plan_change_nothing():
    store = make_store()
    n1 = make_node(store, "n1", nano_cpus=2 * CPU)
    low = service(store, "low", svc_spec(cpu=2 * CPU))
    sched = Scheduler(store)
    async with running(sched):
        add_tasks(store, low, 1)
        await wait_for(lambda: len(by_state(store, low.ID, TaskState.ASSIGNED)) == 1)
        (victim,) = by_state(store, low.ID, TaskState.ASSIGNED)
        before = {t.ID: t.Version.Index for t in store.list("task")}
        reserved = sched.nodes[n1.ID].reserved_cpu
        for live in (None, sched):
            res = plan(store, svc_spec(2, cpu=CPU, labels={"shoal.priority": "2"}), live=live)
            assert res[0] == (1, n1.ID, f"preempts 1 task(s): {victim.ID}")
            assert res[1] == (2, n1.ID, "")
            assert plan(store, svc_spec(1, cpu=CPU), live=live)[0].reason == (
                "no suitable node (insufficient cpu on 1 node)"
            )
        assert {t.ID: t.Version.Index for t in store.list("task")} == before
        assert sched.nodes[n1.ID].reserved_cpu == reserved and victim.ID in sched.nodes[n1.ID].tasks


async def test_task_assigned_and_preempted_in_the_same_pass_is_written_once_as_victim():
    store = make_store()
    n1 = make_node(store, "n1", nano_cpus=2 * CPU)
    low = service(store, "low", svc_spec(cpu=2 * CPU))
    high = service(store, "high", svc_spec(cpu=2 * CPU, labels={"shoal.priority": "4"}))
    g = new_task(low, 0, n1.ID)  # a global task: preassigned, placed before the groups
    with store.tx() as tx:
        tx.create("task", g)
        for t in (new_task(high, 1),):
            tx.create("task", t)
    async with running(Scheduler(store)):  # one reconcile pass sees both
        await wait_for(lambda: len(by_state(store, high.ID, TaskState.ASSIGNED)) == 1)
    v = store.get("task", g.ID)
    assert v.DesiredState is TaskState.SHUTDOWN and v.Status.Message == "preempted by high (priority 4)"
    assert v.NodeID == n1.ID
