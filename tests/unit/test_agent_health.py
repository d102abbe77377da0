"""Agent-run health checks: label parsing, real probes on 127.0.0.1, the Rancher state machine on a
fake clock, and a task controller driven by its check (hollow executor, real sockets)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import msgspec
import pytest

from shoal.agent.executor.hollow import HollowExecutor
from shoal.agent.health import HEALTHY, STARTING, UNHEALTHY, AgentHealthMonitor, CheckState, probe
from shoal.agent.task import TaskController
from shoal.extensions import HealthCheck, parse_duration_s, parse_health_check
from shoal.models import ContainerSpec, Task, TaskHealth, TaskSpec, TaskState, TaskStatus, Version, now_ts

# --------------------------------------------------------------------------- labels


def test_durations_are_go_durations_or_rancher_milliseconds() -> None:
    assert parse_duration_s("2000") == 2.0
    assert parse_duration_s(1500) == 1.5
    assert parse_duration_s("2s") == 2.0
    assert parse_duration_s("1m30s") == 90.0
    assert parse_duration_s("250ms") == 0.25
    with pytest.raises(ValueError):
        parse_duration_s("2 seconds")


def test_parse_check_defaults_and_values() -> None:
    assert parse_health_check({"other": "x"}) is None
    c = parse_health_check({"shoal.health.port": "8080"})
    assert c == HealthCheck(port=8080)
    assert c is not None and c.kind == "tcp" and c.healthy_threshold == 2 and c.strategy == "recreate"
    c = parse_health_check(
        {
            "shoal.health.port": "80",
            "shoal.health.request-line": "GET /healthz HTTP/1.0",
            "shoal.health.interval": "2000",
            "shoal.health.response-timeout": "500ms",
            "shoal.health.healthy-threshold": "3",
            "shoal.health.unhealthy-threshold": "4",
            "shoal.health.initializing-timeout": "1m",
            "shoal.health.reinitializing-timeout": "30000",
            "shoal.health.strategy": "none",
        }
    )
    assert c == HealthCheck(80, "GET /healthz HTTP/1.0", 2.0, 0.5, 3, 4, 60.0, 30.0, "none")
    assert c.kind == "http"


@pytest.mark.parametrize(
    ("labels", "fragment"),
    [
        ({"shoal.health.interval": "2s"}, "shoal.health.port is required"),
        ({"shoal.health.port": "http"}, "must be a whole number"),
        ({"shoal.health.port": "70000"}, "port number"),
        ({"shoal.health.port": "80", "shoal.health.strategy": "recreateOnQuorum"}, "must be one of recreate, none"),
        ({"shoal.health.port": "80", "shoal.health.interval": "soon"}, "shoal.health.interval='soon'"),
        ({"shoal.health.port": "80", "shoal.health.interval": "0"}, "more than 0"),
        ({"shoal.health.port": "80", "shoal.health.healthy-threshold": "0"}, "at least 1"),
        ({"shoal.health.port": "80", "shoal.health.request-line": "/healthz"}, "METHOD /path"),
        ({"shoal.health.port": "80", "shoal.health.request-line": "GET /x HTTP/2"}, "HTTP/1.0 or HTTP/1.1"),
        ({"shoal.health.port": "80", "shoal.health.retries": "3"}, "unknown health check setting"),
    ],
)
def test_parse_check_rejects_bad_labels(labels: dict[str, str], fragment: str) -> None:
    with pytest.raises(ValueError) as exc:
        parse_health_check(labels)
    assert fragment in str(exc.value)


# --------------------------------------------------------------------------- probes on 127.0.0.1

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def server(handler: Handler) -> AsyncIterator[int]:
    srv = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        yield srv.sockets[0].getsockname()[1]
    finally:
        srv.close()
        await srv.wait_closed()


def http(status: int, seen: list[bytes] | None = None) -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if seen is not None:
            seen.append(head)
        writer.write(f"HTTP/1.0 {status} X\r\nContent-Length: 0\r\n\r\n".encode())
        await writer.drain()
        writer.close()

    return handle


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await asyncio.sleep(5)
    writer.close()


async def free_port() -> int:
    async with server(silent) as port:
        return port  # closed on exit: nothing listens there afterwards


async def test_tcp_probe_connects_and_reports_refusal() -> None:
    async with server(silent) as port:
        ok, out = await probe("127.0.0.1", HealthCheck(port=port))
        assert ok and out == f"connected to 127.0.0.1:{port}"
    ok, out = await probe("127.0.0.1", HealthCheck(port=await free_port()))
    assert (ok, out) == (False, "connection refused")


async def test_http_probe_counts_2xx_and_3xx_as_healthy() -> None:
    seen: list[bytes] = []
    for status, healthy in ((200, True), (301, True), (404, False), (503, False)):
        async with server(http(status, seen)) as port:
            check = HealthCheck(port=port, request_line="GET /healthz HTTP/1.1")
            assert await probe("127.0.0.1", check) == (healthy, f"HTTP {status}")
    assert seen[0].startswith(b"GET /healthz HTTP/1.1\r\n")
    assert b"\r\nHost: 127.0.0.1:" in seen[0]


async def test_http_probe_times_out_on_a_silent_server() -> None:
    async with server(silent) as port:
        check = HealthCheck(port=port, request_line="GET /", response_timeout_s=0.1)
        assert await probe("127.0.0.1", check) == (False, "timed out after 0.1s")


# --------------------------------------------------------------------------- the state machine


def test_initializing_until_healthy_threshold() -> None:
    st = CheckState(HealthCheck(port=1, healthy_threshold=2, initializing_timeout_s=10), now=100.0)
    assert st.status == STARTING
    st.record(False, "connection refused", 100, 100)
    assert st.status == STARTING and st.failures == 1  # failures while initializing count no verdict
    st.record(True, "HTTP 200", 102, 102)
    assert st.status == STARTING
    assert st.record(True, "HTTP 200", 104, 104)
    assert st.status == HEALTHY and st.health().FailingStreak == 0


def test_initializing_timeout_makes_it_unhealthy() -> None:
    st = CheckState(HealthCheck(port=1, initializing_timeout_s=5, reinitializing_timeout_s=50), now=0.0)
    st.record(False, "connection refused", 1, 1)
    assert not st.expire(4.9) and st.status == STARTING
    assert st.expire(5.0) and st.status == UNHEALTHY
    # After an agent restart the other timeout applies.
    check = HealthCheck(port=1, initializing_timeout_s=5, reinitializing_timeout_s=50)
    st = CheckState(check, now=0.0, reinitializing=True)
    assert not st.expire(10) and st.expire(50)


def test_healthy_to_unhealthy_and_back() -> None:
    st = CheckState(HealthCheck(port=1, healthy_threshold=1, unhealthy_threshold=3), now=0.0)
    st.record(True, "HTTP 200", 0, 0)
    assert st.status == HEALTHY
    assert st.record(False, "HTTP 500", 1, 1)  # the failing streak changed: report it
    st.record(False, "HTTP 500", 2, 2)
    assert st.status == HEALTHY
    st.record(False, "connection refused", 3, 3)
    assert st.status == UNHEALTHY
    assert not st.record(True, "HTTP 200", 4, 4) or st.status == HEALTHY
    assert st.status == HEALTHY  # threshold 1: one pass is enough
    for i in range(10):
        st.record(True, "HTTP 200", 5 + i, 5 + i)
    h = st.health()
    assert len(h.Log or []) == 5 and h.Source == "agent" and (h.Log or [])[-1].Output == "HTTP 200"


async def test_monitor_on_a_fake_clock() -> None:
    """The loop probes every interval and reports only changes; time is the test's."""
    now = [1000.0]
    results = iter([False, False, True, True, True, False, False])
    changes: list[TaskHealth] = []
    done = asyncio.Event()

    async def prober(host: str, check: HealthCheck) -> tuple[bool, str]:
        try:
            ok = next(results)
        except StopIteration:
            done.set()
            await asyncio.sleep(3600)
            raise
        return ok, "ok" if ok else "connection refused"

    async def sleep(s: float) -> None:
        now[0] += s

    check = HealthCheck(port=1, interval_s=2, healthy_threshold=2, unhealthy_threshold=2, initializing_timeout_s=60)
    mon = AgentHealthMonitor(check, "10.0.0.5", changes.append, clock=lambda: now[0], sleep=sleep, prober=prober)
    runner = asyncio.create_task(mon.run())
    await asyncio.wait_for(done.wait(), 2)
    runner.cancel()
    assert [(h.Status, h.FailingStreak) for h in changes] == [
        (STARTING, 1), (STARTING, 2), (STARTING, 0), (HEALTHY, 0), (HEALTHY, 1), (UNHEALTHY, 2)
    ]
    assert now[0] == 1000.0 + 7 * 2


# --------------------------------------------------------------------------- a task controller


class Reports:
    def __init__(self) -> None:
        self.statuses: list[TaskStatus] = []
        self.changed = asyncio.Event()

    def report(self, task_id: str, status: TaskStatus) -> None:
        self.statuses.append(status)
        self.changed.set()

    async def until(self, pred: Callable[[TaskStatus], bool], within: float = 5.0) -> TaskStatus:
        async def look() -> TaskStatus:
            while True:
                for st in self.statuses:
                    if pred(st):
                        return st
                self.changed.clear()
                await self.changed.wait()

        return await asyncio.wait_for(look(), within)


def checked_task(labels: dict[str, str]) -> Task:
    ts = now_ts()
    return Task(
        ID="t1", Version=Version(Index=1), CreatedAt=ts, UpdatedAt=ts,
        Spec=TaskSpec(ContainerSpec=ContainerSpec(Image="busybox")), ServiceID="s1",
        Status=TaskStatus(State=TaskState.ASSIGNED), DesiredState=TaskState.RUNNING, NodeID="n1",
        ServiceAnnotations={"Name": "web", "Labels": labels},
    )


def fast_labels(port: int, strategy: str = "recreate") -> dict[str, str]:
    return {
        "shoal.health.port": str(port), "shoal.health.interval": "30ms", "shoal.health.response-timeout": "200ms",
        "shoal.health.healthy-threshold": "2", "shoal.health.unhealthy-threshold": "2",
        "shoal.health.initializing-timeout": "2s", "shoal.health.strategy": strategy,
    }


async def test_controller_runs_when_healthy_and_fails_when_the_port_closes() -> None:
    ex, reports = HollowExecutor(start_delay_s=0), Reports()
    async with server(silent) as port:
        ctrl = TaskController(checked_task(fast_labels(port)), ex, reports)
        starting = await reports.until(lambda s: s.State == TaskState.STARTING)
        running = await reports.until(lambda s: s.State == TaskState.RUNNING)
        assert running.Health is not None and running.Health.Status == HEALTHY and running.Health.Source == "agent"
        assert starting.Health is None or starting.Health.Status == STARTING
    failed = await reports.until(lambda s: s.State == TaskState.FAILED)
    assert failed.Err == "task: unhealthy container"
    assert failed.Health is not None and failed.Health.Status == UNHEALTHY and failed.Health.FailingStreak >= 2
    assert (failed.Health.Log or [])[-1].Output == "connection refused"
    unhealthy_running = [s for s in reports.statuses if s.State == TaskState.RUNNING and s.Health
                         and s.Health.FailingStreak == 1]
    assert unhealthy_running and unhealthy_running[0].Timestamp == running.Timestamp  # the state's own time
    assert ex.running == 0  # the container was stopped
    ctrl.remove()
    await asyncio.wait_for(ctrl.runner, 2)


async def test_controller_never_healthy_fails_at_the_initializing_timeout() -> None:
    ex, reports = HollowExecutor(start_delay_s=0), Reports()
    labels = {**fast_labels(await free_port()), "shoal.health.initializing-timeout": "200ms"}
    ctrl = TaskController(checked_task(labels), ex, reports)
    failed = await reports.until(lambda s: s.State.terminal)
    assert (failed.State, failed.Message, failed.Err) == (TaskState.FAILED, "starting", "task: unhealthy container")
    assert not any(s.State == TaskState.RUNNING for s in reports.statuses)
    ctrl.remove()
    await asyncio.wait_for(ctrl.runner, 2)


async def test_strategy_none_only_reports() -> None:
    ex, reports = HollowExecutor(start_delay_s=0), Reports()
    async with server(silent) as port:
        ctrl = TaskController(checked_task(fast_labels(port, "none")), ex, reports)
        await reports.until(lambda s: s.State == TaskState.RUNNING and s.Health is not None
                            and s.Health.Status == HEALTHY)
    st = await reports.until(lambda s: s.Health is not None and s.Health.Status == UNHEALTHY)
    assert st.State == TaskState.RUNNING
    await asyncio.sleep(0.2)
    assert ex.running == 1 and not any(s.State.terminal for s in reports.statuses)
    ctrl.remove()
    await asyncio.wait_for(ctrl.runner, 2)


# --------------------------------------------------------------------------- the control API


def test_create_and_update_check_the_labels() -> None:
    from shoal import controlapi
    from shoal.errors import InvalidArgument
    from shoal.models import ServiceSpec
    from shoal.store import MemoryStore, NullBackend

    store = MemoryStore(NullBackend())

    def spec(labels: dict[str, str]) -> ServiceSpec:
        task = TaskSpec(ContainerSpec=ContainerSpec(Image="busybox"))
        return ServiceSpec(Name="web", Labels=labels, TaskTemplate=task)

    with pytest.raises(InvalidArgument) as exc:
        controlapi.create_service(store, spec({"shoal.health.port": "80", "shoal.health.strategy": "restart"}))
    assert exc.value.message == "label shoal.health.strategy='restart': must be one of recreate, none"
    assert store.list("service") == []
    svc = controlapi.create_service(store, spec(fast_labels(8080)))
    rev = store.revision
    bad = spec({**fast_labels(8080), "shoal.health.interval": "-1s"})
    with pytest.raises(InvalidArgument, match=r"shoal\.health\.interval='-1s'"):
        controlapi.update_service(store, svc.ID, svc.Version.Index, bad)
    assert store.revision == rev and store.get("service", svc.ID) == svc


# --------------------------------------------------------------------------- `shoal service ps`


def test_service_ps_shows_the_health_beside_the_state() -> None:
    from shoal.cli.service import task_rows

    def task(tid: str, slot: int, state: str, health: dict[str, object] | None) -> dict[str, object]:
        status: dict[str, object] = {"State": state, "Timestamp": "2026-11-21T23:00:00Z"}
        if health is not None:
            status["Health"] = health
        return {"ID": tid, "ServiceID": "s1", "Slot": slot, "NodeID": "n1", "DesiredState": "running",
                "CreatedAt": "2026-11-21T23:00:00Z", "Spec": {"ContainerSpec": {"Image": "busybox"}},
                "Status": status}

    now = 1_795_302_005.0  # 2026-11-21T23:00:05Z
    rows = task_rows(
        [task("a" * 25, 1, "running", {"Status": "healthy", "Source": "agent"}),
         task("b" * 25, 2, "starting", {"Status": "starting", "Source": "engine", "FailingStreak": 1}),
         task("c" * 25, 3, "running", None)],
        {"s1": "web"}, {"n1": "node-1"}, no_trunc=False, now=now,
    )
    states = {r[1]: r[5] for r in rows}
    assert states["web.1"] == "Running 5 seconds ago (healthy)"
    assert states["web.2"] == "Starting 5 seconds ago (starting)"
    assert states["web.3"] == "Running 5 seconds ago"


async def test_adopted_container_is_reinitializing_and_never_healthy_none_runs() -> None:
    """After an agent restart a running container stays RUNNING while its check starts again, and
    fails at the reinitializing timeout; with strategy none, a never-healthy one runs anyway."""
    ex, reports = HollowExecutor(start_delay_s=0), Reports()
    labels = {**fast_labels(await free_port()), "shoal.health.reinitializing-timeout": "150ms"}
    task = checked_task(labels)
    cid = await ex.create(task)
    info = await ex.start(task, cid)
    info.ip = "127.0.0.1"
    running = msgspec.structs.replace(task, Status=TaskStatus(State=TaskState.RUNNING))
    ctrl = TaskController(running, ex, reports, adopted=info, adopting=True)
    first = await reports.until(lambda s: s.State == TaskState.RUNNING)
    assert first.Health is not None and first.Health.Status == STARTING
    failed = await reports.until(lambda s: s.State.terminal)
    assert failed.Err == "task: unhealthy container" and ex.running == 0
    ctrl.remove()
    await asyncio.wait_for(ctrl.runner, 2)

    ex, reports = HollowExecutor(start_delay_s=0), Reports()
    labels = {**fast_labels(await free_port(), "none"), "shoal.health.initializing-timeout": "150ms"}
    ctrl = TaskController(checked_task(labels), ex, reports)
    st = await reports.until(lambda s: s.State == TaskState.RUNNING)
    assert st.Health is not None and st.Health.Status == UNHEALTHY and ex.running == 1
    ctrl.remove()
    await asyncio.wait_for(ctrl.runner, 2)
