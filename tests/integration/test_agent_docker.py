"""Agent + DockerExecutor against the real engine, talking to a Dispatcher over a store in-process.

Tasks are written into the store as the scheduler would (NodeID set, state ASSIGNED); the tests then
watch the states the agent reports and inspect the containers it made. Each test has its own node ID
and removes every container carrying it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import docker
import msgspec
import pytest

from shoal.agent.agent import Agent
from shoal.agent.executor.docker import DockerExecutor
from shoal.dispatcher.dispatcher import Dispatcher
from shoal.dispatcher.inprocess import InProcessClient
from shoal.dispatcher.protocol import LogMessage, LogOptions
from shoal.ids import new_id
from shoal.models import (
    SECOND,
    ContainerSpec,
    Driver,
    Endpoint,
    HealthConfig,
    Mount,
    Node,
    NodeSpec,
    NodeState,
    PortConfig,
    ResourceLimits,
    ResourceRequirements,
    ResourceReservations,
    Task,
    TaskSpec,
    TaskState,
    TaskStatus,
    Ulimit,
    Version,
)
from shoal.store import MemoryStore, NullBackend

pytestmark = pytest.mark.integration

IMAGE = "busybox:latest"
FAST_STOP = 1 * SECOND  # busybox `sleep` as PID 1 ignores SIGTERM: don't wait the default 10 s


@dataclass
class Env:
    store: MemoryStore
    dispatcher: Dispatcher
    node_id: str
    engine: docker.DockerClient
    agent: Agent | None = None
    agent_task: asyncio.Task[None] | None = None

    async def start_agent(self) -> Agent:
        self.agent = Agent(InProcessClient(self.dispatcher), DockerExecutor(), self.node_id, "127.0.0.1")
        self.dispatcher.register_log_source(self.node_id, self.agent)
        self.agent_task = asyncio.create_task(self.agent.run())
        await asyncio.wait_for(self.agent.connected.wait(), 10)
        return self.agent

    async def stop_agent(self) -> None:
        if self.agent_task is not None:
            self.agent_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.agent_task
            self.agent_task = None
        if self.agent is not None:
            await self.agent.close()
            self.agent = None

    def add(self, *tasks: Task) -> None:
        with self.store.tx() as tx:
            for t in tasks:
                tx.create("task", t)

    def update(self, task_id: str, **changes: Any) -> None:
        with self.store.tx() as tx:
            tx.update("task", msgspec.structs.replace(self.store.get("task", task_id), **changes))

    def delete(self, task_id: str) -> None:
        with self.store.tx() as tx:
            tx.delete("task", task_id)

    def task(self, task_id: str) -> Task:
        return self.store.get("task", task_id)

    async def wait_state(self, task_id: str, *states: TaskState, within: float = 15.0) -> Task:
        return await wait_until(
            lambda: (t := self.task(task_id)) is not None and t.Status.State in states and t, within
        )

    def containers(self, task_id: str | None = None) -> list[Any]:
        label = f"shoal.task.id={task_id}" if task_id else f"shoal.node.id={self.node_id}"
        return self.engine.containers.list(all=True, sparse=True, filters={"label": label})


async def wait_until(predicate: Callable[[], Any], within: float = 15.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + within
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(interval)


def make_task(
    node_id: str,
    *args: str,
    command: list[str] | None = None,
    slot: int = 1,
    service_id: str = "svc-test",
    endpoint: Endpoint | None = None,
    desired: TaskState = TaskState.RUNNING,
    **spec: Any,
) -> Task:
    spec.setdefault("Image", IMAGE)
    spec.setdefault("StopGracePeriod", FAST_STOP)
    container = ContainerSpec(Command=command, Args=list(args) or None, **spec)
    return Task(
        ID=new_id(),
        Version=Version(),
        CreatedAt="",
        UpdatedAt="",
        Spec=TaskSpec(ContainerSpec=container),
        ServiceID=service_id,
        Status=TaskStatus(State=TaskState.ASSIGNED, Message="scheduler assigned task to node"),
        DesiredState=desired,
        NodeID=node_id,
        Slot=slot,
        Endpoint=endpoint,
        ServiceAnnotations={"Name": "agenttest"},
    )


def sleeper(node_id: str, **kw: Any) -> Task:
    return make_task(node_id, "300", command=["sleep"], **kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


async def http_get(port: int) -> bytes:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    writer.write(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return data


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    store = MemoryStore(NullBackend())
    node_id = "agenttest" + new_id()[:16]
    with store.tx() as tx:
        tx.create("node", Node(ID=node_id, Version=Version(), CreatedAt="", UpdatedAt="", Spec=NodeSpec()))
    dispatcher = Dispatcher(store, heartbeat_period_s=0.5)
    runner = asyncio.create_task(dispatcher.run())
    engine = docker.from_env()
    e = Env(store, dispatcher, node_id, engine)
    try:
        yield e
    finally:
        await e.stop_agent()
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
        for c in engine.containers.list(all=True, sparse=True, filters={"label": f"shoal.node.id={node_id}"}):
            with contextlib.suppress(docker.errors.APIError):
                c.remove(force=True, v=True)
        engine.close()


# ---------------------------------------------------------------------------------------------- lifecycle


async def test_task_runs_with_its_spec_applied(env: Env) -> None:
    await env.start_agent()
    node = env.store.get("node", env.node_id)
    assert node.Status.State == NodeState.READY
    assert node.Description.Platform.OS == "linux" and node.Description.Resources.NanoCPUs > 0
    assert node.Description.Engine.EngineVersion

    t = make_task(
        env.node_id,
        "300",
        command=["sleep"],
        Env=["FOO=bar"],
        Labels={"app": "web"},
        Dir="/tmp",
        User="nobody",
        Hostname="web-{{.Task.Slot}}",
        Hosts=["10.1.2.3 db.local db"],
        Init=True,
        ReadOnly=True,
        StopSignal="SIGINT",
        Mounts=[Mount(Type="tmpfs", Target="/scratch")],
        CapabilityDrop=["NET_RAW"],
        Sysctls={"net.core.somaxconn": "1024"},
        Ulimits=[Ulimit(Name="nofile", Soft=1024, Hard=2048)],
    )
    t.Spec.LogDriver = Driver(Name="json-file", Options={"max-size": "1m"})
    t.Spec.Resources = ResourceRequirements(
        Limits=ResourceLimits(NanoCPUs=500_000_000, MemoryBytes=64 << 20, Pids=100),
        Reservations=ResourceReservations(NanoCPUs=100_000_000, MemoryBytes=32 << 20),
    )
    env.add(t)
    done = await env.wait_state(t.ID, TaskState.RUNNING)
    assert done.Status.Message == "started"
    cid = done.Status.ContainerStatus.ContainerID
    info = env.engine.api.inspect_container(cid)
    cfg, host = info["Config"], info["HostConfig"]
    assert info["Name"] == f"/agenttest.1.{t.ID}"
    assert info["State"]["Running"]
    assert cfg["Entrypoint"] == ["sleep"] and cfg["Cmd"] == ["300"]
    assert "FOO=bar" in cfg["Env"]
    assert cfg["WorkingDir"] == "/tmp" and cfg["User"] == "nobody" and cfg["Hostname"] == "web-1"
    assert cfg["StopSignal"] == "SIGINT" and cfg["StopTimeout"] == 1
    labels = cfg["Labels"]
    assert labels["app"] == "web"
    assert labels["shoal.task.id"] == t.ID and labels["shoal.node.id"] == env.node_id
    assert labels["shoal.service.id"] == "svc-test" and labels["shoal.service.name"] == "agenttest"
    assert labels["shoal.task.slot"] == "1"
    assert labels["com.docker.swarm.task.id"] == t.ID and labels["com.docker.swarm.node.id"] == env.node_id
    assert labels["com.docker.swarm.task.name"] == f"agenttest.1.{t.ID}"
    assert host["NanoCpus"] == 500_000_000 and host["Memory"] == 64 << 20 and host["PidsLimit"] == 100
    assert host["MemoryReservation"] == 32 << 20
    assert host["ExtraHosts"] == ["db.local:10.1.2.3", "db:10.1.2.3"]
    assert host["Init"] is True and host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["NET_RAW"]
    assert host["Sysctls"] == {"net.core.somaxconn": "1024"}
    assert host["Ulimits"] == [{"Name": "nofile", "Soft": 1024, "Hard": 2048}]
    assert host["LogConfig"] == {"Type": "json-file", "Config": {"max-size": "1m"}}
    assert [m["Target"] for m in host["Mounts"]] == ["/scratch"] and host["Mounts"][0]["Type"] == "tmpfs"


async def test_exit_codes_complete_and_fail(env: Env) -> None:
    await env.start_agent()
    ok = make_task(env.node_id, "-c", "exit 0", command=["sh"], slot=1)
    bad = make_task(env.node_id, "-c", "exit 3", command=["sh"], slot=2)
    env.add(ok, bad)
    done = await env.wait_state(ok.ID, TaskState.COMPLETE)
    assert done.Status.Message == "finished" and done.Status.ContainerStatus.ExitCode == 0
    failed = await env.wait_state(bad.ID, TaskState.FAILED)
    assert failed.Status.Err == "task: non-zero exit (3)"
    assert failed.Status.ContainerStatus.ExitCode == 3
    # The containers stay (as in Swarm) until the tasks are deleted.
    assert len(env.containers(bad.ID)) == 1


async def test_missing_image_is_rejected_fast(env: Env) -> None:
    await env.start_agent()
    t = make_task(env.node_id, Image="shoal-no-such-image:nope")
    start = time.monotonic()
    env.add(t)
    rejected = await env.wait_state(t.ID, TaskState.REJECTED, within=10)
    assert time.monotonic() - start < 5
    # The engine's reason follows (here the registry cannot be reached, or has no such repository).
    assert rejected.Status.Err.startswith("No such image: shoal-no-such-image:nope (pull failed: "), rejected.Status.Err
    assert env.containers(t.ID) == []


async def test_desired_shutdown_stops_and_delete_removes(env: Env) -> None:
    await env.start_agent()
    t = sleeper(env.node_id)
    env.add(t)
    running = await env.wait_state(t.ID, TaskState.RUNNING)
    cid = running.Status.ContainerStatus.ContainerID
    env.update(t.ID, DesiredState=TaskState.SHUTDOWN)
    shut = await env.wait_state(t.ID, TaskState.SHUTDOWN)
    assert shut.Status.ContainerStatus.ContainerID == cid
    assert env.engine.api.inspect_container(cid)["State"]["Running"] is False
    env.delete(t.ID)
    await wait_until(lambda: env.containers(t.ID) == [])


async def test_leave_removes_containers_whose_create_was_cut_off(env: Env) -> None:
    """`swarm leave` stops the agent mid-create: the engine still makes a container whose create
    call is gone. The executor remembers the cut-off names and remove_all waits for them, so
    nothing of the node is left (four created containers were, before)."""
    executor = DockerExecutor()
    try:
        for delay in (0.002, 0.005, 0.01, 0.02):
            creating = [asyncio.create_task(executor.create(sleeper(env.node_id))) for _ in range(4)]
            await asyncio.sleep(delay)
            for c in creating:
                c.cancel()
            await asyncio.gather(*creating, return_exceptions=True)
        assert executor.cut_off  # some create calls were cut off on the wire
        await executor.remove_all(env.node_id, executor.cut_off)  # at once, as `swarm leave` does
    finally:
        await executor.close()
    await asyncio.sleep(1.5)  # a create the engine would still finish has come by now
    assert env.containers() == []


async def test_deleting_a_running_task_removes_its_container(env: Env) -> None:
    await env.start_agent()
    t = sleeper(env.node_id)
    env.add(t)
    await env.wait_state(t.ID, TaskState.RUNNING)
    env.delete(t.ID)
    await wait_until(lambda: env.containers(t.ID) == [])


async def test_desired_ready_prepares_without_starting(env: Env) -> None:
    await env.start_agent()
    t = sleeper(env.node_id, desired=TaskState.READY)
    env.add(t)
    ready = await env.wait_state(t.ID, TaskState.READY)
    await asyncio.sleep(0.3)
    assert env.task(t.ID).Status.State == TaskState.READY
    cid = ready.Status.ContainerStatus.ContainerID
    assert env.engine.api.inspect_container(cid)["State"]["Status"] == "created"
    env.update(t.ID, DesiredState=TaskState.RUNNING)
    running = await env.wait_state(t.ID, TaskState.RUNNING)
    assert running.Status.ContainerStatus.ContainerID == cid


async def test_healthcheck_gates_running_and_unhealthy_fails(env: Env) -> None:
    await env.start_agent()
    probe = {"Interval": SECOND // 5, "Timeout": SECOND, "Retries": 1}
    good = sleeper(env.node_id, slot=1, Healthcheck=HealthConfig(Test=["CMD", "true"], **probe))
    bad = sleeper(env.node_id, slot=2, Healthcheck=HealthConfig(Test=["CMD", "false"], **probe))
    env.add(good, bad)
    await env.wait_state(good.ID, TaskState.RUNNING)
    failed = await env.wait_state(bad.ID, TaskState.FAILED)
    assert failed.Status.Err == "task: unhealthy container"


# ---------------------------------------------------------------------------------------------- restarts


async def test_restarted_agent_adopts_running_and_removes_stale(env: Env) -> None:
    await env.start_agent()
    keep, gone = sleeper(env.node_id, slot=1), sleeper(env.node_id, slot=2)
    env.add(keep, gone)
    cid = (await env.wait_state(keep.ID, TaskState.RUNNING)).Status.ContainerStatus.ContainerID
    gone_cid = (await env.wait_state(gone.ID, TaskState.RUNNING)).Status.ContainerStatus.ContainerID
    started_at = env.engine.api.inspect_container(cid)["State"]["StartedAt"]

    await env.stop_agent()  # the daemon stops; containers keep running
    assert env.engine.api.inspect_container(cid)["State"]["Running"]
    env.delete(gone.ID)  # meanwhile the manager forgot this task

    await env.start_agent()
    await wait_until(lambda: env.containers(gone.ID) == [])
    assert [c.id for c in env.containers(keep.ID)] == [cid]  # adopted, not recreated
    info = env.engine.api.inspect_container(cid)["State"]
    assert info["Running"] and info["StartedAt"] == started_at
    assert env.task(keep.ID).Status.State == TaskState.RUNNING
    assert gone_cid not in [c.id for c in env.containers()]
    # And it is really driven again: a shutdown request reaches the adopted container.
    env.update(keep.ID, DesiredState=TaskState.SHUTDOWN)
    await env.wait_state(keep.ID, TaskState.SHUTDOWN)


async def test_restarted_agent_stops_a_task_orphaned_while_it_was_away(env: Env) -> None:
    await env.start_agent()
    t = sleeper(env.node_id)
    env.add(t)
    cid = (await env.wait_state(t.ID, TaskState.RUNNING)).Status.ContainerStatus.ContainerID
    await env.stop_agent()  # the host's daemon dies; its container keeps running
    # Meanwhile the manager saw the node down, orphaned the task and replaced it elsewhere.
    cur = env.task(t.ID)
    env.update(t.ID, DesiredState=TaskState.SHUTDOWN,
               Status=msgspec.structs.replace(cur.Status, State=TaskState.ORPHANED, Message="task orphaned: node down"))
    await env.start_agent()
    await wait_until(lambda: not env.engine.api.inspect_container(cid)["State"]["Running"])
    assert env.task(t.ID).Status.State == TaskState.ORPHANED  # never reported running again


async def test_session_loss_keeps_containers_and_reconnects(env: Env) -> None:
    agent = await env.start_agent()
    t = sleeper(env.node_id)
    env.add(t)
    cid = (await env.wait_state(t.ID, TaskState.RUNNING)).Status.ContainerStatus.ContainerID
    old_session = agent.session.session_id
    # The manager forgets the session (as after a manager restart or a missed heartbeat).
    env.dispatcher._close(env.dispatcher._sessions[old_session])
    await wait_until(
        lambda: agent.session is not None and agent.session.session_id != old_session and agent.connected.is_set()
    )
    assert [c.id for c in env.containers(t.ID)] == [cid]
    env.update(t.ID, DesiredState=TaskState.SHUTDOWN)
    await env.wait_state(t.ID, TaskState.SHUTDOWN)


# ---------------------------------------------------------------------------------------------- networking


async def test_host_mode_port_is_published_and_reported(env: Env) -> None:
    await env.start_agent()
    ports = [PortConfig(Name="web", Protocol="tcp", TargetPort=80, PublishedPort=0, PublishMode="host")]
    t = make_task(env.node_id, "-f", "-p", "80", "-h", "/var/www", command=["httpd"], endpoint=Endpoint(Ports=ports))
    env.add(t)
    running = await env.wait_state(t.ID, TaskState.RUNNING)
    [p] = running.Status.PortStatus.Ports
    assert p.Name == "web" and p.TargetPort == 80 and p.PublishMode == "host" and p.PublishedPort > 0
    body = await wait_until_async(lambda: http_get(p.PublishedPort))
    assert b"<h1>shoal</h1>" in body


async def wait_until_async(fn: Callable[[], Any], within: float = 10.0) -> Any:
    deadline = time.monotonic() + within
    while True:
        try:
            return await fn()
        except (OSError, TimeoutError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


# ---------------------------------------------------------------------------------------------- logs


async def collect(stream: AsyncIterator[LogMessage], n: int, within: float = 10.0) -> list[LogMessage]:
    out: list[LogMessage] = []

    async def take() -> None:
        async for m in stream:
            out.append(m)
            if len(out) >= n:
                return

    await asyncio.wait_for(take(), within)
    return out


async def test_logs_split_streams_and_follow(env: Env) -> None:
    await env.start_agent()
    script = "echo out1; echo err1 >&2; echo out2; i=0; while true; do echo tick$i; i=$((i+1)); sleep 0.2; done"
    t = make_task(env.node_id, "-c", script, command=["sh"])
    env.add(t)
    running = await env.wait_state(t.ID, TaskState.RUNNING)
    await asyncio.sleep(0.5)

    got = [m async for m in env.dispatcher.logs([running], LogOptions())]
    # stdout and stderr are separate pipes: their relative order is not guaranteed, each one's is.
    assert [m.data for m in got if m.stream == 1][:3] == [b"out1\n", b"out2\n", b"tick0\n"]
    assert [m.data for m in got if m.stream == 2] == [b"err1\n"]
    assert all(m.task_id == t.ID and m.node_id == env.node_id and m.timestamp.endswith("Z") for m in got)

    only_err = [m async for m in env.dispatcher.logs([running], LogOptions(stdout=False))]
    assert [m.data for m in only_err] == [b"err1\n"]

    tail = [m async for m in env.dispatcher.logs([running], LogOptions(tail=1))]
    assert len(tail) == 1 and tail[0].data.startswith(b"tick")

    # since: nothing older than the cut.
    cut = time.time()
    await asyncio.sleep(0.5)
    recent = [m async for m in env.dispatcher.logs([running], LogOptions(since=cut))]
    assert recent and all(m.data.startswith(b"tick") for m in recent)

    # follow: lines written after the call keep arriving.
    follow = env.dispatcher.logs([running], LogOptions(follow=True, tail=0))
    try:
        new = await collect(follow, 3)
    finally:
        await follow.aclose()
    ticks = [int(m.data[4:]) for m in new]
    last_seen = max(int(m.data[4:]) for m in got if m.data.startswith(b"tick"))
    assert ticks == sorted(ticks) and ticks[0] > last_seen


async def test_logs_of_a_tty_task(env: Env) -> None:
    await env.start_agent()
    t = make_task(env.node_id, "-c", "echo hello; echo world; sleep 300", command=["sh"], TTY=True)
    env.add(t)
    running = await env.wait_state(t.ID, TaskState.RUNNING)
    got = await collect(env.agent.task_logs([running], LogOptions(follow=True)), 2)
    assert [(m.stream, m.data.rstrip(b"\r\n")) for m in got] == [(1, b"hello"), (1, b"world")]
