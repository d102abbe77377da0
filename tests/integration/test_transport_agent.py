"""The real Agent (DockerExecutor on the machine's dockerd) joined over the network and driven over gRPC.

What a remote host does: join with a token, then run the Agent with a GrpcDispatcherClient and
serve its logs. The manager side is a Dispatcher over a store; tasks are written as the scheduler
would. Containers carry the joined node's ID and are all removed at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path

import docker
import pytest

from shoal.agent.agent import Agent
from shoal.agent.executor.docker import DockerExecutor
from shoal.dispatcher.protocol import LogOptions, LogRecord
from shoal.ids import new_id
from shoal.models import SECOND, ContainerSpec, NodeState, Task, TaskSpec, TaskState, TaskStatus, Version
from shoal.transport.bootstrap import join_cluster
from shoal.transport.client import GrpcDispatcherClient
from tests.integration.test_transport_certs import wait_until
from tests.integration.transport_env import manager_side

pytestmark = pytest.mark.integration


def echo_task(node_id: str) -> Task:
    spec = ContainerSpec(Image="busybox:latest", Command=["sh", "-c", "echo hello from $HOSTNAME; sleep 300"],
                         Hostname="transport-test", StopGracePeriod=1 * SECOND,
                         Labels={"aliyun.log_store_lgs": "stdout"})  # collected: shipped over gRPC too
    return Task(
        ID=new_id(), Version=Version(), CreatedAt="", UpdatedAt="", Spec=TaskSpec(ContainerSpec=spec),
        ServiceID="svc-transport", Slot=1, NodeID=node_id, DesiredState=TaskState.RUNNING,
        Status=TaskStatus(State=TaskState.ASSIGNED, Message="scheduler assigned task to node"),
        ServiceAnnotations={"Name": "transporttest"},
    )


async def test_remote_agent_runs_a_task_and_serves_its_logs(tmp_path: Path) -> None:
    async with manager_side(tmp_path) as mgr:
        creds = await join_cluster(mgr.addr, mgr.tokens.Worker, "transport-host", "127.0.0.1", "active",
                                   tmp_path / "certs")
        client = GrpcDispatcherClient(creds, tmp_path / "certs")
        agent = Agent(client, DockerExecutor(), creds.node_id, "127.0.0.1")
        running = asyncio.create_task(agent.run())
        serving = asyncio.create_task(client.serve_logs(agent))
        collected: list[LogRecord] = []
        mgr.dispatcher.log_sink = collected.extend
        engine = docker.from_env()
        try:
            await asyncio.wait_for(agent.connected.wait(), 15)
            assert mgr.store.get("node", creds.node_id).Status.State == NodeState.READY
            task = echo_task(creds.node_id)
            with mgr.store.tx() as tx:
                tx.create("task", task)
            await wait_until(lambda: mgr.store.get("task", task.ID).Status.State == TaskState.RUNNING, within=20)
            containers = engine.containers.list(filters={"label": f"shoal.task.id={task.ID}"})
            assert len(containers) == 1
            assert containers[0].labels["shoal.node.id"] == creds.node_id

            async def first_line() -> bytes:
                async for msg in mgr.dispatcher.logs([mgr.store.get("task", task.ID)], LogOptions()):
                    return msg.data
                return b""

            line = await wait_until_async(first_line)
            assert line == b"hello from transport-test\n"
            # The log store the task's labels name arrived with the agent's ShipLogs call.
            await wait_until(lambda: bool(collected), within=10)
            got = collected[0]
            assert (got.line, got.store, got.source, got.task_id, got.node_id, got.service) == \
                ("hello from transport-test", "lgs", "stdout", task.ID, creds.node_id, "transporttest")

            with mgr.store.tx() as tx:  # the task is deleted: the agent removes its container
                tx.delete("task", task.ID)
            label = {"label": f"shoal.task.id={task.ID}"}
            await wait_until(lambda: not engine.containers.list(all=True, sparse=True, filters=label), within=20)
        finally:
            for t in (serving, running):
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await t
            await agent.close()
            await client.close()
            for c in engine.containers.list(all=True, sparse=True, filters={"label": f"shoal.node.id={creds.node_id}"}):
                with contextlib.suppress(docker.errors.APIError):
                    c.remove(force=True, v=True)
            engine.close()


async def wait_until_async(fetch: Callable[[], Awaitable[bytes]], within: float = 10.0) -> bytes:
    """Retry an async fetch until it returns something (the line may not be written yet)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        value = await fetch()
        if value or loop.time() > deadline:
            return value
        await asyncio.sleep(0.1)
