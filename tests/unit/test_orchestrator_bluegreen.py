"""Blue-green releases: full scale side by side, the switch only once every new task runs, the old
tasks stopped after, and a failed release (a task failing, or the deadline) leaving the old serving."""

from __future__ import annotations

import msgspec
import pytest

from shoal.errors import InvalidArgument
from shoal.extensions import STANDBY_LABEL, UPDATE_STRATEGY_LABEL, is_standby
from shoal.models import (
    SECOND,
    GlobalService,
    ServiceMode,
    ServiceSpec,
    TaskState,
    UpdateConfig,
)
from shoal.orchestrator import ReplicatedOrchestrator
from shoal.orchestrator.testutils import (
    FakeAgent,
    make_node,
    make_service,
    make_store,
    runnable_tasks,
    running,
    set_task_state,
    settle,
    update_service,
    wait_for,
)
from shoal.scheduler import Scheduler
from shoal.store import MemoryStore

BG = {UPDATE_STRATEGY_LABEL: "blue-green"}


def image(store: MemoryStore, sid: str, img: str):
    """A spec change the way the control API makes it: the old spec becomes PreviousSpec."""
    svc = store.get("service", sid)
    cs = msgspec.structs.replace(svc.Spec.TaskTemplate.ContainerSpec, Image=img)
    spec = msgspec.structs.replace(
        svc.Spec, TaskTemplate=msgspec.structs.replace(svc.Spec.TaskTemplate, ContainerSpec=cs)
    )
    new = msgspec.structs.replace(svc, Spec=spec, PreviousSpec=svc.Spec)
    with store.tx() as tx:
        tx.update("service", new)
    return new


def tasks_of(store: MemoryStore, sid: str, img: str):
    return [t for t in runnable_tasks(store, sid) if t.Spec.ContainerSpec.Image == img]


def all_tasks(store: MemoryStore, sid: str, img: str):
    return [t for t in store.tasks_of_service(sid) if t.Spec.ContainerSpec.Image == img]


def running_ids(store: MemoryStore, sid: str, img: str) -> set[str]:
    return {t.ID for t in tasks_of(store, sid, img) if t.Status.State is TaskState.RUNNING}


def status(store: MemoryStore, sid: str):
    return store.get("service", sid).UpdateStatus


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _started(store: MemoryStore, sid: str, n: int) -> None:
    await wait_for(lambda: len(running_ids(store, sid, "busybox:latest")) == n, what=f"{n} v1 running")


async def test_side_by_side_then_switch_then_old_stopped():
    store = make_store()
    make_node(store, "n1")
    make_node(store, "n2")
    svc = make_service(store, "web", replicas=3, Labels=BG)
    agent = FakeAgent(store)
    async with running(ReplicatedOrchestrator(store), Scheduler(store), agent):
        await _started(store, svc.ID, 3)
        old = running_ids(store, svc.ID, "busybox:latest")
        assert not any(is_standby(t) for t in runnable_tasks(store, svc.ID))  # a fresh service serves at once
        agent.paused = True
        image(store, svc.ID, "busybox:v2")
        # Full scale side by side: three standby tasks of v2, one per slot, beside the three of v1.
        await wait_for(lambda: len(tasks_of(store, svc.ID, "busybox:v2")) == 3, what="3 standby tasks")
        await wait_for(lambda: all(t.NodeID for t in tasks_of(store, svc.ID, "busybox:v2")), what="scheduled")
        new = tasks_of(store, svc.ID, "busybox:v2")
        assert all(is_standby(t) for t in new)
        assert sorted(t.Slot for t in new) == [1, 2, 3]
        assert status(store, svc.ID).State == "updating"

        # Two of three running: no switch; the old ones stay wanted and unlabelled.
        set_task_state(store, [new[0].ID, new[1].ID], TaskState.RUNNING)
        await settle()
        assert running_ids(store, svc.ID, "busybox:latest") == old
        assert all(t.DesiredState is TaskState.RUNNING for t in tasks_of(store, svc.ID, "busybox:latest"))
        assert all(is_standby(t) for t in tasks_of(store, svc.ID, "busybox:v2"))

        # The last one runs: one transaction switches (labels off) and stops the old.
        set_task_state(store, new[2].ID, TaskState.RUNNING)
        await wait_for(lambda: status(store, svc.ID).State == "completed", what="completed")
        assert not any(is_standby(t) for t in tasks_of(store, svc.ID, "busybox:v2"))
        assert {t.ID for t in tasks_of(store, svc.ID, "busybox:latest")} == set()
        assert all(store.get("task", tid).DesiredState is TaskState.SHUTDOWN for tid in old)
        agent.paused = False
        agent.step()
        await wait_for(lambda: all(store.get("task", tid).Status.State is TaskState.SHUTDOWN for tid in old))
        assert len(running_ids(store, svc.ID, "busybox:v2")) == 3
        assert store.get("service", svc.ID).UpdateStatus.Message.startswith("update completed")


async def test_failed_new_task_removes_new_keeps_old_and_rolls_the_spec_back():
    store = make_store()
    make_node(store, "n1")
    svc = make_service(store, "web", replicas=2, Labels=BG)
    agent = FakeAgent(store)
    async with running(ReplicatedOrchestrator(store), Scheduler(store), agent):
        await _started(store, svc.ID, 2)
        old = running_ids(store, svc.ID, "busybox:latest")
        agent.paused = True
        image(store, svc.ID, "busybox:broken")
        await wait_for(lambda: len(tasks_of(store, svc.ID, "busybox:broken")) == 2, what="standby tasks")
        await wait_for(lambda: all(t.NodeID for t in tasks_of(store, svc.ID, "busybox:broken")))
        new = tasks_of(store, svc.ID, "busybox:broken")
        set_task_state(store, new[0].ID, TaskState.RUNNING)
        set_task_state(store, new[1].ID, TaskState.FAILED, exit_code=1, err="task: non-zero exit (1)")
        await wait_for(lambda: status(store, svc.ID).State == "rollback_completed", what="rolled back")

        st = status(store, svc.ID)
        assert "blue-green release failed" in st.Message and new[1].ID in st.Message and "non-zero exit" in st.Message
        cur = store.get("service", svc.ID)
        assert cur.Spec.TaskTemplate.ContainerSpec.Image == "busybox:latest"
        assert cur.Spec.Labels[UPDATE_STRATEGY_LABEL] == "blue-green"  # the strategy stays
        assert cur.PreviousSpec is None
        # The new tasks are gone from the wanted set, the old ones never stopped.
        assert tasks_of(store, svc.ID, "busybox:broken") == []
        assert running_ids(store, svc.ID, "busybox:latest") == old
        agent.paused = False
        agent.step()
        await settle(50)
        assert running_ids(store, svc.ID, "busybox:latest") == old
        assert len(all_tasks(store, svc.ID, "busybox:broken")) == 2  # none made only to be dropped
        assert all(t.Status.State.terminal for t in all_tasks(store, svc.ID, "busybox:broken"))


async def test_deadline_fails_the_release():
    store = make_store()
    make_node(store, "n1")
    clock = Clock()
    svc = make_service(store, "web", replicas=2, Labels=BG, UpdateConfig=UpdateConfig(Monitor=10 * SECOND))
    agent = FakeAgent(store)
    orch = ReplicatedOrchestrator(store, clock=clock)
    async with running(orch, Scheduler(store), agent):
        await _started(store, svc.ID, 2)
        old = running_ids(store, svc.ID, "busybox:latest")
        agent.paused = True
        image(store, svc.ID, "busybox:slow")
        await wait_for(lambda: len(tasks_of(store, svc.ID, "busybox:slow")) == 2, what="standby tasks")
        new = tasks_of(store, svc.ID, "busybox:slow")
        set_task_state(store, new[0].ID, TaskState.RUNNING)
        clock.now += 9.5
        orch._poke(svc.ID)
        await settle()
        assert status(store, svc.ID).State == "updating"
        clock.now += 1
        orch._poke(svc.ID)  # what the deadline timer does
        await wait_for(lambda: status(store, svc.ID).State == "rollback_completed", what="rolled back")
        assert "1 of 2 new tasks not running within 10s" in status(store, svc.ID).Message
        assert tasks_of(store, svc.ID, "busybox:slow") == []
        assert running_ids(store, svc.ID, "busybox:latest") == old


async def test_newer_spec_supersedes_a_release_in_flight():
    store = make_store()
    make_node(store, "n1")
    svc = make_service(store, "web", replicas=2, Labels=BG)
    agent = FakeAgent(store)
    async with running(ReplicatedOrchestrator(store), Scheduler(store), agent):
        await _started(store, svc.ID, 2)
        agent.paused = True
        image(store, svc.ID, "busybox:v2")
        await wait_for(lambda: len(tasks_of(store, svc.ID, "busybox:v2")) == 2, what="v2 standby")
        image(store, svc.ID, "busybox:v3")
        await wait_for(lambda: len(tasks_of(store, svc.ID, "busybox:v3")) == 2, what="v3 standby")
        assert tasks_of(store, svc.ID, "busybox:v2") == []
        assert len(tasks_of(store, svc.ID, "busybox:latest")) == 2
        agent.paused = False
        agent.step()
        await wait_for(lambda: status(store, svc.ID).State == "completed", what="completed")
        await wait_for(lambda: len(running_ids(store, svc.ID, "busybox:v3")) == 2)
        await wait_for(lambda: tasks_of(store, svc.ID, "busybox:latest") == [])


async def test_scale_up_during_release_and_an_old_task_failing():
    """Slot accounting: two tasks per slot are not extras; new slots and restarts join as standby."""
    store = make_store()
    make_node(store, "n1")
    svc = make_service(store, "web", replicas=2, Labels=BG)
    agent = FakeAgent(store)
    orch = ReplicatedOrchestrator(store, default_restart_delay_ns=0)
    async with running(orch, Scheduler(store), agent):
        await _started(store, svc.ID, 2)
        agent.paused = True
        image(store, svc.ID, "busybox:v2")
        await wait_for(lambda: len(tasks_of(store, svc.ID, "busybox:v2")) == 2, what="v2 standby")
        update_service(store, svc.ID, replicas=3)
        await wait_for(lambda: len(tasks_of(store, svc.ID, "busybox:v2")) == 3, what="3 standby")
        await settle()
        assert all(is_standby(t) for t in tasks_of(store, svc.ID, "busybox:v2"))
        assert len(tasks_of(store, svc.ID, "busybox:latest")) == 2  # no old-version task for the new slot
        # An old task dies: the slot keeps its standby task, no unlabelled v2 task appears.
        victim = tasks_of(store, svc.ID, "busybox:latest")[0]
        set_task_state(store, victim.ID, TaskState.FAILED, exit_code=1)
        await settle(50)
        assert len(tasks_of(store, svc.ID, "busybox:v2")) == 3
        assert all(is_standby(t) for t in tasks_of(store, svc.ID, "busybox:v2"))
        agent.paused = False
        agent.step()
        await wait_for(lambda: status(store, svc.ID).State == "completed", what="completed")
        await wait_for(lambda: len(running_ids(store, svc.ID, "busybox:v2")) == 3)
        assert tasks_of(store, svc.ID, "busybox:latest") == []


async def test_rolling_service_is_left_to_the_updater():
    store = make_store()
    make_node(store, "n1")
    svc = make_service(store, "web", replicas=2)
    agent = FakeAgent(store)
    async with running(ReplicatedOrchestrator(store), Scheduler(store), agent):
        await _started(store, svc.ID, 2)
        image(store, svc.ID, "busybox:v2")
        await wait_for(lambda: len(running_ids(store, svc.ID, "busybox:v2")) == 2, what="rolled")
        assert not any(STANDBY_LABEL in (t.Labels or {}) for t in store.tasks_of_service(svc.ID))


def test_strategy_label_is_validated():
    from shoal.controlapi.validate import validate_service_spec
    from shoal.models import ContainerSpec, TaskSpec

    def spec(labels, mode=None):
        return ServiceSpec(
            Name="web", Labels=labels, TaskTemplate=TaskSpec(ContainerSpec=ContainerSpec(Image="busybox")), Mode=mode
        )

    validate_service_spec(spec(BG))
    validate_service_spec(spec({UPDATE_STRATEGY_LABEL: "rolling"}))
    with pytest.raises(InvalidArgument, match="unknown update strategy 'purple'"):
        validate_service_spec(spec({UPDATE_STRATEGY_LABEL: "purple"}))
    with pytest.raises(InvalidArgument, match="replicated services only"):
        validate_service_spec(spec(BG, ServiceMode(Global=GlobalService())))
    with pytest.raises(InvalidArgument, match="reserved"):
        validate_service_spec(spec({STANDBY_LABEL: "standby"}))


def test_compose_extension_key_and_deploy_labels(tmp_path):
    from shoal.compose import load, to_service_specs

    text = (
        "services:\n"
        "  web:\n    image: busybox\n    x-shoal-update-strategy: blue-green\n"
        "  api:\n    image: busybox\n    deploy:\n      labels:\n        shoal.update-strategy: blue-green\n"
        "  db:\n    image: busybox\n"
    )
    path = tmp_path / "compose.yml"
    path.write_text(text)
    specs = to_service_specs(load([path], env={}), "app")
    assert specs["web"].Labels[UPDATE_STRATEGY_LABEL] == "blue-green"
    assert specs["api"].Labels[UPDATE_STRATEGY_LABEL] == "blue-green"
    assert UPDATE_STRATEGY_LABEL not in (specs["db"].Labels or {})


def test_cli_progress_reports_a_failed_release_instead_of_waiting():
    from shoal.cli.client import CLIError
    from shoal.cli.progress import snapshot

    svc = {
        "Spec": {"Mode": {"Replicated": {"Replicas": 1}}},
        "UpdateStatus": {"State": "rollback_completed", "Message": "blue-green release failed: task x rejected"},
    }
    old = {"ID": "old", "Slot": 1, "Status": {"State": "running"}}
    with pytest.raises(CLIError, match="blue-green release failed"):
        snapshot(svc, [old], frozenset({"old"}))


async def test_a_paused_release_stays_paused_across_a_manager_restart():
    """Without a PreviousSpec a failed release pauses; a new orchestrator (a restarted manager)
    must read that from the stored status instead of trying the broken version again."""
    store = make_store()
    make_node(store, "n1")
    svc = make_service(store, "web", replicas=2, Labels=BG)
    agent = FakeAgent(store)
    async with running(ReplicatedOrchestrator(store), Scheduler(store), agent):
        await _started(store, svc.ID, 2)
        agent.paused = True
        cur = image(store, svc.ID, "busybox:broken")
        with store.tx() as tx:  # no previous spec to roll back to
            tx.update("service", msgspec.structs.replace(cur, PreviousSpec=None))
        await wait_for(lambda: len(tasks_of(store, svc.ID, "busybox:broken")) == 2, what="standby tasks")
        await wait_for(lambda: all(t.NodeID for t in tasks_of(store, svc.ID, "busybox:broken")))
        bad = tasks_of(store, svc.ID, "busybox:broken")[0]
        set_task_state(store, bad.ID, TaskState.FAILED, exit_code=1, err="boom")
        await wait_for(lambda: status(store, svc.ID).State == "paused", what="paused")
    made = len(all_tasks(store, svc.ID, "busybox:broken"))
    agent.paused = False
    async with running(ReplicatedOrchestrator(store), Scheduler(store), agent):  # the "restarted" manager
        await settle(50)
        assert status(store, svc.ID).State == "paused"
        assert len(all_tasks(store, svc.ID, "busybox:broken")) == made  # no new attempt
        assert len(running_ids(store, svc.ID, "busybox:latest")) == 2
