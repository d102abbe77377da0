"""Rolling updates: stop-first / start-first, parallelism, delay, UpdateStatus, ForceUpdate;
failure actions, Monitor, MaxFailureRatio, automatic and manual rollback (on a fake clock)."""

from __future__ import annotations

import asyncio
import contextlib
import time

import msgspec
import pytest

from shoal import controlapi
from shoal.controlapi.networks import create_network, ingress_spec
from shoal.errors import InvalidArgument
from shoal.models import SECOND, ContainerSpec, TaskSpec, TaskState, UpdateConfig
from shoal.orchestrator import GlobalOrchestrator, ReplicatedOrchestrator
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
from shoal.orchestrator.update import Policy, policy_of
from shoal.scheduler import Scheduler

MON = SECOND // 100  # a short Monitor (the default, 5 s, would make every test wait)


def image(store, sid, img):
    svc = store.get("service", sid)
    cs = msgspec.structs.replace(svc.Spec.TaskTemplate.ContainerSpec, Image=img)
    return update_service(store, sid, TaskTemplate=msgspec.structs.replace(svc.Spec.TaskTemplate, ContainerSpec=cs))


def n_running(store, sid, img=None) -> int:
    return sum(
        t.Status.State is TaskState.RUNNING and (img is None or t.Spec.ContainerSpec.Image == img)
        for t in runnable_tasks(store, sid)
    )


class Monitor:
    """Records, after every commit, how many tasks of a service run, and when new ones appear."""

    def __init__(self, store, sid):
        self.store, self.sid = store, sid
        self.min_running = None
        self.created: dict[str, float] = {}

    async def run(self):
        w = self.store.watch("task")
        try:
            while True:
                for e in await w.get():
                    if e.action.value == "create" and e.obj.ServiceID == self.sid:
                        self.created[e.obj.ID] = time.monotonic()
                n = n_running(self.store, self.sid)
                self.min_running = n if self.min_running is None else min(self.min_running, n)
        finally:
            w.close()


async def start(store, svc, n):
    await wait_for(lambda: n_running(store, svc.ID) == n, what=f"{n} running")


async def test_stop_first_one_at_a_time():
    store = make_store()
    make_node(store, "n1")
    make_node(store, "n2")
    svc = make_service(store, "web", replicas=3, UpdateConfig=UpdateConfig(Monitor=MON, Parallelism=1))
    agent = FakeAgent(store)
    async with running(ReplicatedOrchestrator(store), Scheduler(store), agent):
        await start(store, svc, 3)
        agent.paused = True
        mon = Monitor(store, svc.ID)
        async with running(mon):
            image(store, svc.ID, "busybox:v2")
            await wait_for(lambda: store.get("service", svc.ID).UpdateStatus is not None)
            st = store.get("service", svc.ID).UpdateStatus
            assert (st.State, st.Message) == ("updating", "update in progress") and st.StartedAt
            await settle()
            shut = [t for t in store.tasks_of_service(svc.ID) if t.DesiredState is TaskState.SHUTDOWN]
            assert len(shut) == 1, "parallelism 1: one old task stopped"
            assert len(store.tasks_of_service(svc.ID)) == 3, "stop-first: no new task before the old one stops"
            agent.paused = False
            agent.step()
            await wait_for(lambda: n_running(store, svc.ID, "busybox:v2") == 3, what="all updated")
            await wait_for(lambda: store.get("service", svc.ID).UpdateStatus.State == "completed")
        assert mon.min_running == 2, "never more than one slot down at a time"
    st = store.get("service", svc.ID).UpdateStatus
    assert st.Message == "update completed" and st.CompletedAt >= st.StartedAt
    tasks = store.tasks_of_service(svc.ID)
    assert len(tasks) == 6
    assert sorted(t.Slot for t in runnable_tasks(store, svc.ID)) == [1, 2, 3]
    assert all(t.DesiredState is TaskState.SHUTDOWN for t in tasks if t.Spec.ContainerSpec.Image != "busybox:v2")


async def test_start_first_keeps_capacity():
    store = make_store()
    make_node(store, "n1")
    svc = make_service(
        store, "web", replicas=2, UpdateConfig=UpdateConfig(Monitor=MON, Parallelism=1, Order="start-first")
    )
    agent = FakeAgent(store)
    async with running(ReplicatedOrchestrator(store), Scheduler(store), agent):
        await start(store, svc, 2)
        agent.paused = True
        mon = Monitor(store, svc.ID)
        async with running(mon):
            image(store, svc.ID, "busybox:v2")
            await wait_for(lambda: len(store.tasks_of_service(svc.ID)) == 3, what="one new task")
            await settle()
            assert len(store.tasks_of_service(svc.ID)) == 3
            assert all(t.DesiredState is TaskState.RUNNING for t in store.tasks_of_service(svc.ID))
            agent.paused = False
            agent.step()
            await wait_for(lambda: n_running(store, svc.ID, "busybox:v2") == 2, what="all updated")
            await wait_for(lambda: len(runnable_tasks(store, svc.ID)) == 2)
            await wait_for(lambda: store.get("service", svc.ID).UpdateStatus.State == "completed")
        assert mon.min_running >= 2, "start-first never drops below the replica count"


async def test_parallelism_zero_replaces_all_at_once():
    store = make_store()
    make_node(store, "n1")
    svc = make_service(store, "web", replicas=3, UpdateConfig=UpdateConfig(Monitor=MON, Parallelism=0))
    agent = FakeAgent(store)
    async with running(ReplicatedOrchestrator(store), Scheduler(store), agent):
        await start(store, svc, 3)
        agent.paused = True
        image(store, svc.ID, "busybox:v2")
        await wait_for(
            lambda: sum(t.DesiredState is TaskState.SHUTDOWN for t in store.tasks_of_service(svc.ID)) == 3,
            what="all old tasks stopped together",
        )
        agent.paused = False
        agent.step()
        await wait_for(lambda: n_running(store, svc.ID, "busybox:v2") == 3)


async def test_parallelism_two_with_delay_between_batches():
    store = make_store()
    make_node(store, "n1")
    delay = SECOND // 4
    svc = make_service(store, "web", replicas=4, UpdateConfig=UpdateConfig(Monitor=MON, Parallelism=2, Delay=delay))
    async with running(ReplicatedOrchestrator(store), Scheduler(store), FakeAgent(store)):
        await start(store, svc, 4)
        mon = Monitor(store, svc.ID)
        async with running(mon):
            image(store, svc.ID, "busybox:v2")
            await wait_for(lambda: n_running(store, svc.ID, "busybox:v2") == 4, within=5)
        times = sorted(mon.created.values())
    assert len(times) == 4
    assert times[1] - times[0] < 0.1, "first batch of two together"
    assert times[2] - times[1] >= 0.24, "the delay separates batches"
    assert mon.min_running >= 2


async def test_force_update_replaces_and_scale_alone_does_not():
    store = make_store()
    make_node(store, "n1")
    svc = make_service(store, "web", replicas=2, UpdateConfig=UpdateConfig(Monitor=MON, Parallelism=0))
    async with running(ReplicatedOrchestrator(store), Scheduler(store), FakeAgent(store)):
        await start(store, svc, 2)
        update_service(store, svc.ID, replicas=3)
        await start(store, svc, 3)
        await settle()
        assert store.get("service", svc.ID).UpdateStatus is None, "scaling is not an update"
        old = {t.ID for t in store.tasks_of_service(svc.ID)}
        tmpl = store.get("service", svc.ID).Spec.TaskTemplate
        update_service(store, svc.ID, TaskTemplate=msgspec.structs.replace(tmpl, ForceUpdate=1))
        await wait_for(
            lambda: n_running(store, svc.ID) == 3 and not old & {t.ID for t in runnable_tasks(store, svc.ID)},
            what="all tasks replaced",
        )
        await wait_for(lambda: store.get("service", svc.ID).UpdateStatus.State == "completed")


async def test_global_rolling_update():
    store = make_store()
    nodes = [make_node(store, f"n{i}") for i in range(3)]
    svc = make_service(store, "agent", global_=True, UpdateConfig=UpdateConfig(Monitor=MON, Parallelism=1))
    async with running(GlobalOrchestrator(store), Scheduler(store), FakeAgent(store)):
        await start(store, svc, 3)
        mon = Monitor(store, svc.ID)
        async with running(mon):
            image(store, svc.ID, "busybox:v2")
            await wait_for(lambda: n_running(store, svc.ID, "busybox:v2") == 3, what="all updated")
        assert mon.min_running == 2
        assert {t.NodeID for t in runnable_tasks(store, svc.ID)} == {n.ID for n in nodes}
        await wait_for(lambda: store.get("service", svc.ID).UpdateStatus.State == "completed")


async def test_update_never_runs_two_tasks_for_a_slot_when_new_task_fails():
    store = make_store()
    make_node(store, "n1")
    tmpl = TaskSpec(ContainerSpec=ContainerSpec(Image="busybox:latest"))
    uc = UpdateConfig(Monitor=MON, Order="start-first")
    svc = make_service(store, "web", replicas=1, template=tmpl, UpdateConfig=uc)
    agent = FakeAgent(store)
    orch = ReplicatedOrchestrator(store, default_restart_delay_ns=SECOND // 10)
    async with running(orch, Scheduler(store), agent):
        await start(store, svc, 1)
        agent.paused = True
        image(store, svc.ID, "busybox:v2")
        await wait_for(lambda: len(store.tasks_of_service(svc.ID)) == 2)
        new = next(t for t in store.tasks_of_service(svc.ID) if t.Spec.ContainerSpec.Image == "busybox:v2")
        await wait_for(lambda: store.get("task", new.ID).Status.State is TaskState.ASSIGNED)
        set_task_state(store, new.ID, TaskState.FAILED, exit_code=1)
        await asyncio.sleep(0.2)
        agent.paused = False
        agent.step()
        await wait_for(lambda: n_running(store, svc.ID, "busybox:v2") == 1)
        await wait_for(lambda: len(runnable_tasks(store, svc.ID)) == 1)
        with contextlib.suppress(AssertionError):
            await wait_for(lambda: len(store.tasks_of_service(svc.ID)) > 3, within=0.2)
    # old + failed new + its restart: exactly three tasks, never a duplicate for slot 1
    assert len(store.tasks_of_service(svc.ID)) == 3


async def test_update_survives_orchestrator_restart_without_duplicates():
    store = make_store()
    make_node(store, "n1")
    svc = make_service(store, "web", replicas=3, UpdateConfig=UpdateConfig(Monitor=MON, Parallelism=1))
    agent = FakeAgent(store)
    async with running(ReplicatedOrchestrator(store), Scheduler(store), agent):
        await start(store, svc, 3)
        agent.paused = True
        image(store, svc.ID, "busybox:v2")
        await wait_for(lambda: any(t.DesiredState is TaskState.SHUTDOWN for t in store.tasks_of_service(svc.ID)))
        started = store.get("service", svc.ID).UpdateStatus.StartedAt
    # The manager restarts mid-update: the old task is still stopping.
    agent.paused = False
    async with running(ReplicatedOrchestrator(store), Scheduler(store), agent):
        await wait_for(lambda: n_running(store, svc.ID, "busybox:v2") == 3, what="update finished")
        await wait_for(lambda: store.get("service", svc.ID).UpdateStatus.State == "completed")
        await settle()
    assert len(store.tasks_of_service(svc.ID)) == 6
    assert sorted(t.Slot for t in runnable_tasks(store, svc.ID)) == [1, 2, 3]
    assert store.get("service", svc.ID).UpdateStatus.StartedAt == started


async def test_manual_rollback_keeps_rollback_wording():
    store = make_store()
    make_node(store, "n1")
    fast = UpdateConfig(Monitor=MON, Parallelism=0)
    svc = make_service(store, "web", replicas=2, UpdateConfig=fast, RollbackConfig=fast)
    async with running(ReplicatedOrchestrator(store), Scheduler(store), FakeAgent(store)):
        await start(store, svc, 2)
        image(store, svc.ID, "busybox:v2")
        await wait_for(lambda: n_running(store, svc.ID, "busybox:v2") == 2)
        await wait_for(lambda: store.get("service", svc.ID).UpdateStatus.State == "completed")
        # What the control API writes for `docker service rollback`.
        cur = store.get("service", svc.ID)
        status = msgspec.structs.replace(
            cur.UpdateStatus, State="rollback_started", Message="manually requested rollback", CompletedAt=""
        )
        with store.tx() as tx:
            tx.update("service", msgspec.structs.replace(cur, Spec=cur.PreviousSpec or svc.Spec, UpdateStatus=status))
        await wait_for(lambda: n_running(store, svc.ID, "busybox:latest") == 2)
        await wait_for(lambda: store.get("service", svc.ID).UpdateStatus.State == "rollback_completed")
    assert store.get("service", svc.ID).UpdateStatus.Message == "rollback completed"


# --------------------------------------------------------------------------- failures and rollback
# These run on a fake clock: restart delays, update delays and Monitor only pass when a test says so.


class _Handle:
    def __init__(self, due: float, cb) -> None:
        self.due, self.cb, self.cancelled = due, cb, False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """The updater's and restart supervisor's clock and timers; ``advance`` fires what came due."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.timers: list[_Handle] = []

    def __call__(self) -> float:
        return self.now

    def schedule(self, delay: float, cb) -> _Handle:
        h = _Handle(self.now + max(delay, 0.0), cb)
        self.timers.append(h)
        return h

    def advance(self, dt: float) -> None:
        self.now += dt
        due = sorted((h for h in self.timers if h.due <= self.now), key=lambda h: h.due)
        self.timers = [h for h in self.timers if h.due > self.now]
        for h in due:
            if not h.cancelled:
                h.cb()


def clocked(store, clock: FakeClock, cls=ReplicatedOrchestrator):
    """An orchestrator whose time is ``clock``: a 1 s restart delay, Monitor and Delay all fake."""
    orch = cls(store, clock=clock, default_restart_delay_ns=SECOND)
    orch.updater._schedule = clock.schedule
    orch.restarts._schedule = clock.schedule
    return orch


class FailingAgent(FakeAgent):
    """FakeAgent, but tasks of the images in ``bad`` fail instead of starting (a missing image)."""

    def __init__(self, store, bad=("busybox:bad",)) -> None:
        super().__init__(store)
        self.bad = set(bad)

    def step(self) -> int:
        if self.paused:
            return 0
        fail = [
            t.ID
            for t in self.store.list("task")
            if t.NodeID
            and t.Spec.ContainerSpec.Image in self.bad
            and t.DesiredState is TaskState.RUNNING
            and TaskState.ASSIGNED.order <= t.Status.State.order < TaskState.RUNNING.order
        ]
        if fail:
            set_task_state(self.store, fail, TaskState.REJECTED, err="No such image")
        return len(fail) + super().step()


async def run_clock(clock: FakeClock, pred, step: float = 0.5, within: float = 3.0, what: str = "condition"):
    """Advance the fake clock a little at a time until ``pred`` holds (real time bounded)."""
    deadline = time.monotonic() + within
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        clock.advance(step)
        await asyncio.sleep(0.005)


def api_update(store, sid, *, img=None, rollback=None, **spec_changes):
    """What `docker service update` does: through the control API (which resets UpdateStatus)."""
    cur = store.get("service", sid)
    spec = cur.Spec
    if img is not None:
        cs = msgspec.structs.replace(spec.TaskTemplate.ContainerSpec, Image=img)
        spec = msgspec.structs.replace(spec, TaskTemplate=msgspec.structs.replace(spec.TaskTemplate, ContainerSpec=cs))
    spec = msgspec.structs.replace(spec, **spec_changes)
    return controlapi.update_service(store, sid, cur.Version.Index, spec, rollback=rollback)


def status(store, sid):
    return store.get("service", sid).UpdateStatus


def state_of(store, sid) -> str:
    st = store.get("service", sid).UpdateStatus
    return st.State if st is not None else ""


def images_by_slot(store, sid) -> dict[int, set[str]]:
    out: dict[int, set[str]] = {}
    for t in store.tasks_of_service(sid):
        out.setdefault(t.Slot, set()).add(t.Spec.ContainerSpec.Image)
    return out


def test_policy_defaults_are_swarmkits():
    assert policy_of(None) == Policy(
        parallelism=1, delay_s=0, failure_action="pause", monitor_s=5.0, max_failure_ratio=0, start_first=False
    )
    # An UpdateConfig as the API sends it: Parallelism 0 is "all at once", Monitor 0 is "unset".
    p = policy_of(UpdateConfig(Parallelism=0, Order="start-first", FailureAction="rollback"))
    assert (p.parallelism, p.monitor_s, p.start_first, p.failure_action) == (0, 5.0, True, "rollback")


async def test_failure_pauses_the_update_until_the_next_update():
    store, clock = make_store(), FakeClock()
    make_node(store, "n1")
    svc = make_service(store, "web", replicas=3, UpdateConfig=UpdateConfig(Parallelism=1))  # pause, 5 s monitor
    orch = clocked(store, clock)
    async with running(orch, Scheduler(store), FailingAgent(store)):
        await start(store, svc, 3)
        api_update(store, svc.ID, img="busybox:bad")
        await wait_for(lambda: state_of(store, svc.ID) == "paused", what="paused")
        bad = [t for t in store.tasks_of_service(svc.ID) if t.Spec.ContainerSpec.Image == "busybox:bad"]
        assert len(bad) == 1
        st = status(store, svc.ID)
        assert st.Message == f"update paused due to failure or early termination of task {bad[0].ID}"
        assert st.StartedAt and not st.CompletedAt
        # Time passes, the failed slot is restarted (and fails again): no other slot is touched.
        for _ in range(4):
            clock.advance(1.5)
            await settle()
        await asyncio.sleep(0.05)
        slots = images_by_slot(store, svc.ID)
        assert sum("busybox:bad" in imgs for imgs in slots.values()) == 1, slots
        assert n_running(store, svc.ID, "busybox:latest") == 2
        assert state_of(store, svc.ID) == "paused"
        # The next `service update` starts again (and this time the image is good).
        api_update(store, svc.ID, img="busybox:v3")
        await wait_for(lambda: state_of(store, svc.ID) == "updating")
        await run_clock(clock, lambda: n_running(store, svc.ID, "busybox:v3") == 3, what="all on v3")
        await run_clock(clock, lambda: state_of(store, svc.ID) == "completed", what="completed")
    assert status(store, svc.ID).Message == "update completed"


async def test_an_update_is_not_complete_while_a_restart_is_refilling_an_outdated_slot():
    # The failed slot's restart is booked when the next update (back to the old image) arrives:
    # the restart's task has the new spec, and the update completes only once it runs (found by
    # tests/integration/test_rolling_update.py, which once saw "completed" with 2 of 3 running).
    store, clock = make_store(), FakeClock()
    make_node(store, "n1")
    svc = make_service(store, "web", replicas=3, UpdateConfig=UpdateConfig(Parallelism=1, Monitor=SECOND))
    agent = FailingAgent(store)
    async with running(clocked(store, clock), Scheduler(store), agent):
        await start(store, svc, 3)
        api_update(store, svc.ID, img="busybox:bad")
        await wait_for(lambda: state_of(store, svc.ID) == "paused", what="paused")
        agent.paused = True  # the restart's new task will wait in `assigned`
        api_update(store, svc.ID, img="busybox:latest")
        await settle()
        for _ in range(6):
            clock.advance(1.0)  # the restart fires, and Monitor passes many times over
            await settle()
        await asyncio.sleep(0.05)
        assert n_running(store, svc.ID) == 2
        assert state_of(store, svc.ID) == "updating"
        agent.paused = False
        agent.step()
        await run_clock(clock, lambda: state_of(store, svc.ID) == "completed", what="completed")
        assert n_running(store, svc.ID, "busybox:latest") == 3


async def test_max_failure_ratio_counts_failures_over_the_slots_to_update():
    store, clock = make_store(), FakeClock()
    make_node(store, "n1")
    uc = UpdateConfig(Parallelism=1, MaxFailureRatio=0.5, FailureAction="pause")
    svc = make_service(store, "web", replicas=4, UpdateConfig=uc)
    async with running(clocked(store, clock), Scheduler(store), FailingAgent(store)):
        await start(store, svc, 4)
        api_update(store, svc.ID, img="busybox:bad")
        # 1/4 and 2/4 are within 0.5; the third failure (3/4) pauses.
        await wait_for(lambda: state_of(store, svc.ID) == "paused", what="paused")
        bad = sorted(
            (t for t in store.tasks_of_service(svc.ID) if t.Spec.ContainerSpec.Image == "busybox:bad"),
            key=lambda t: t.Status.Timestamp,
        )
        assert len(bad) == 3
        assert status(store, svc.ID).Message.endswith(f"task {bad[-1].ID}")
        assert n_running(store, svc.ID, "busybox:latest") == 1


async def test_failure_action_continue_updates_every_slot():
    store, clock = make_store(), FakeClock()
    make_node(store, "n1")
    uc = UpdateConfig(Parallelism=1, FailureAction="continue", Monitor=2 * SECOND)
    svc = make_service(store, "web", replicas=3, UpdateConfig=uc)
    async with running(clocked(store, clock), Scheduler(store), FailingAgent(store)):
        await start(store, svc, 3)
        api_update(store, svc.ID, img="busybox:bad")
        await wait_for(
            lambda: all("busybox:bad" in imgs for imgs in images_by_slot(store, svc.ID).values()),
            what="every slot tried",
        )
        assert state_of(store, svc.ID) == "updating"
        await run_clock(clock, lambda: state_of(store, svc.ID) == "completed", what="completed")


async def test_monitor_counts_failures_only_within_the_window():
    store, clock = make_store(), FakeClock()
    make_node(store, "n1")
    uc = UpdateConfig(Parallelism=1, Delay=20 * SECOND, Monitor=10 * SECOND)
    svc = make_service(store, "web", replicas=2, UpdateConfig=uc)
    agent = FakeAgent(store)
    async with running(clocked(store, clock), Scheduler(store), agent):
        await start(store, svc, 2)
        api_update(store, svc.ID, img="busybox:v2")
        await wait_for(lambda: n_running(store, svc.ID, "busybox:v2") == 1, what="first slot updated")
        await settle()
        first = next(t for t in runnable_tasks(store, svc.ID) if t.Spec.ContainerSpec.Image == "busybox:v2")
        clock.advance(11)  # past Monitor, still within Delay
        await settle()
        set_task_state(store, first.ID, TaskState.FAILED, exit_code=1)
        await asyncio.sleep(0.05)
        assert state_of(store, svc.ID) == "updating", "a failure after Monitor is not the update's"
        assert n_running(store, svc.ID, "busybox:v2") == 0, "the delay holds the second slot"
        clock.advance(10)  # Delay over: the second slot goes (and the first one's restart comes due)
        await wait_for(lambda: n_running(store, svc.ID, "busybox:v2") == 2, what="second slot updated")
        await settle()
        second = max(
            (t for t in runnable_tasks(store, svc.ID) if t.Slot != first.Slot), key=lambda t: t.Status.Timestamp
        )
        clock.advance(2)
        set_task_state(store, second.ID, TaskState.FAILED, exit_code=1)
        await wait_for(lambda: state_of(store, svc.ID) == "paused", what="paused")
    assert status(store, svc.ID).Message == f"update paused due to failure or early termination of task {second.ID}"


async def test_update_completes_one_monitor_after_the_last_slot():
    store, clock = make_store(), FakeClock()
    make_node(store, "n1")
    svc = make_service(store, "web", replicas=1)  # no UpdateConfig: swarmkit's defaults, Monitor 5 s
    async with running(clocked(store, clock), Scheduler(store), FakeAgent(store)):
        await start(store, svc, 1)
        api_update(store, svc.ID, img="busybox:v2")
        await wait_for(lambda: n_running(store, svc.ID, "busybox:v2") == 1)
        await asyncio.sleep(0.02)
        clock.advance(4.9)
        await asyncio.sleep(0.02)
        assert state_of(store, svc.ID) == "updating"
        clock.advance(0.2)
        await wait_for(lambda: state_of(store, svc.ID) == "completed")
    st = status(store, svc.ID)
    assert st.Message == "update completed" and st.CompletedAt >= st.StartedAt


async def test_automatic_rollback_on_failure():
    store, clock = make_store(), FakeClock()
    make_node(store, "n1")
    svc = make_service(
        store,
        "web",
        replicas=3,
        UpdateConfig=UpdateConfig(Parallelism=1, FailureAction="rollback"),
        RollbackConfig=UpdateConfig(Parallelism=0, Monitor=SECOND),
    )
    async with running(clocked(store, clock), Scheduler(store), FailingAgent(store)):
        await start(store, svc, 3)
        api_update(store, svc.ID, img="busybox:bad")
        await wait_for(lambda: state_of(store, svc.ID).startswith("rollback"), what="rollback started")
        cur = store.get("service", svc.ID)
        bad = next(t for t in store.tasks_of_service(svc.ID) if t.Spec.ContainerSpec.Image == "busybox:bad")
        assert cur.UpdateStatus.Message == f"update rolled back due to failure or early termination of task {bad.ID}"
        assert cur.Spec.TaskTemplate.ContainerSpec.Image == "busybox:latest"
        assert cur.PreviousSpec is None, "as swarmkit: an automatic rollback consumes the previous spec"
        await run_clock(clock, lambda: state_of(store, svc.ID) == "rollback_completed", what="rolled back")
        await run_clock(clock, lambda: n_running(store, svc.ID, "busybox:latest") == 3, what="3 on the old image")
    st = status(store, svc.ID)
    assert st.Message == "rollback completed" and st.CompletedAt
    assert all(t.Spec.ContainerSpec.Image == "busybox:latest" for t in runnable_tasks(store, svc.ID))
    with pytest.raises(InvalidArgument, match="does not have a previous spec"):
        api_update(store, svc.ID, rollback="previous")


async def test_manual_rollback_uses_rollback_config():
    store, clock = make_store(), FakeClock()
    make_node(store, "n1")
    svc = make_service(
        store,
        "web",
        replicas=3,
        UpdateConfig=UpdateConfig(Parallelism=0, Monitor=SECOND),
        RollbackConfig=UpdateConfig(Parallelism=0, Order="start-first", Monitor=SECOND),
    )
    agent = FakeAgent(store)
    async with running(clocked(store, clock), Scheduler(store), agent):
        await start(store, svc, 3)
        api_update(store, svc.ID, img="busybox:v2")
        await run_clock(clock, lambda: state_of(store, svc.ID) == "completed")
        agent.paused = True
        api_update(store, svc.ID, rollback="previous")
        assert status(store, svc.ID).Message == "manually requested rollback"
        # RollbackConfig: all three at once, started before the old ones stop.
        await wait_for(lambda: len(runnable_tasks(store, svc.ID)) == 6, what="three new tasks beside the old")
        agent.paused = False
        agent.step()
        await run_clock(clock, lambda: state_of(store, svc.ID) == "rollback_completed")
        await wait_for(lambda: len(runnable_tasks(store, svc.ID)) == 3)
    assert n_running(store, svc.ID, "busybox:latest") == 3
    cur = store.get("service", svc.ID)
    assert cur.PreviousSpec.TaskTemplate.ContainerSpec.Image == "busybox:v2", "a manual rollback swaps the specs"


async def test_a_failing_rollback_pauses_and_is_never_rolled_back():
    store, clock = make_store(), FakeClock()
    make_node(store, "n1")
    svc = make_service(
        store,
        "web",
        replicas=2,
        UpdateConfig=UpdateConfig(Parallelism=0, Monitor=SECOND),
        RollbackConfig=UpdateConfig(Parallelism=1, FailureAction="rollback", Monitor=SECOND),
    )
    agent = FailingAgent(store, bad=())
    async with running(clocked(store, clock), Scheduler(store), agent):
        await start(store, svc, 2)
        api_update(store, svc.ID, img="busybox:v2")
        await run_clock(clock, lambda: state_of(store, svc.ID) == "completed")
        agent.bad.add("busybox:latest")  # the old image is gone meanwhile
        api_update(store, svc.ID, rollback="previous")
        await wait_for(lambda: state_of(store, svc.ID) == "rollback_paused", what="rollback paused")
        failed = next(
            t for t in store.tasks_of_service(svc.ID)
            if t.Spec.ContainerSpec.Image == "busybox:latest" and t.Status.State is TaskState.REJECTED
        )
        msg = f"rollback paused due to failure or early termination of task {failed.ID}"
        assert status(store, svc.ID).Message == msg
        cur = store.get("service", svc.ID)
        assert cur.Spec.TaskTemplate.ContainerSpec.Image == "busybox:latest", "not rolled back again"
        assert n_running(store, svc.ID, "busybox:v2") == 1, "parallelism 1: the other slot was left alone"


async def test_global_service_pauses_on_failure():
    store, clock = make_store(), FakeClock()
    for i in range(3):
        make_node(store, f"n{i}")
    svc = make_service(store, "agent", global_=True, UpdateConfig=UpdateConfig(Parallelism=1))
    async with running(clocked(store, clock, GlobalOrchestrator), Scheduler(store), FailingAgent(store)):
        await start(store, svc, 3)
        api_update(store, svc.ID, img="busybox:bad")
        await wait_for(lambda: state_of(store, svc.ID) == "paused", what="paused")
        await asyncio.sleep(0.05)
        assert n_running(store, svc.ID, "busybox:latest") == 2


async def test_a_new_update_during_the_delay_carries_on():
    """Superseding a rollout that is cooling down must not leave it waiting on the old one's timer."""
    store, clock = make_store(), FakeClock()
    make_node(store, "n1")
    uc = UpdateConfig(Parallelism=1, Delay=5 * SECOND, Monitor=SECOND)
    svc = make_service(store, "web", replicas=2, UpdateConfig=uc)
    async with running(clocked(store, clock), Scheduler(store), FakeAgent(store)):
        await start(store, svc, 2)
        api_update(store, svc.ID, img="busybox:v2")
        await wait_for(lambda: n_running(store, svc.ID, "busybox:v2") == 1)
        await settle()
        api_update(store, svc.ID, img="busybox:v3")  # while the first worker cools down
        await wait_for(lambda: n_running(store, svc.ID, "busybox:v3") == 1)
        await settle()
        for _ in range(3):
            clock.advance(6)
            await asyncio.sleep(0.02)
        await wait_for(lambda: n_running(store, svc.ID, "busybox:v3") == 2, what="second slot updated")
        await run_clock(clock, lambda: state_of(store, svc.ID) == "completed")


async def test_automatic_rollback_restores_the_previous_endpoint():
    """An update that also moved the published port and failed: the rolled-back service publishes
    its old port again (the endpoint is recomputed from the previous spec, not kept)."""
    from shoal.models import ContainerSpec as CS
    from shoal.models import EndpointSpec, PortConfig, ReplicatedService, ServiceMode, ServiceSpec, TaskSpec

    store, clock = make_store(), FakeClock()
    create_network(store, ingress_spec())  # swarm init makes it; ingress ports need it
    make_node(store, "n1")
    svc = controlapi.create_service(store, ServiceSpec(
        Name="web", TaskTemplate=TaskSpec(ContainerSpec=CS(Image="busybox:latest")),
        Mode=ServiceMode(Replicated=ReplicatedService(Replicas=2)),
        UpdateConfig=UpdateConfig(Parallelism=1, FailureAction="rollback"),
        RollbackConfig=UpdateConfig(Parallelism=0, Monitor=SECOND),
        EndpointSpec=EndpointSpec(Ports=[PortConfig(TargetPort=80, PublishedPort=8080)]),
    ))
    async with running(clocked(store, clock), Scheduler(store), FailingAgent(store)):
        await start(store, svc, 2)
        api_update(store, svc.ID, img="busybox:bad",
                   EndpointSpec=EndpointSpec(Ports=[PortConfig(TargetPort=80, PublishedPort=9090)]))
        assert [p.PublishedPort for p in store.get("service", svc.ID).Endpoint.Ports] == [9090]
        await wait_for(lambda: state_of(store, svc.ID).startswith("rollback"), what="rollback started")
    cur = store.get("service", svc.ID)
    assert [p.PublishedPort for p in cur.Spec.EndpointSpec.Ports] == [8080]
    assert [p.PublishedPort for p in cur.Endpoint.Ports] == [8080]
