"""The status reporter: batches, keeps the session through a failed call, drops it when it is over."""

from __future__ import annotations

import asyncio
import contextlib

from shoal.agent.agent import Agent
from shoal.agent.executor.hollow import HollowExecutor
from shoal.agent.reporter import StatusReporter
from shoal.dispatcher.dispatcher import SessionInvalid
from shoal.dispatcher.protocol import TaskStatusUpdate
from shoal.models import TaskState, TaskStatus


class FlakyClient:
    """Fails the first calls with the given errors, then records what it is sent."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.sent: list[TaskStatusUpdate] = []

    async def update_task_status(self, session_id: str, updates: list[TaskStatusUpdate]) -> None:
        if self.errors:
            raise self.errors.pop(0)
        self.sent.extend(updates)


async def run_reporter(client: FlakyClient) -> tuple[StatusReporter, asyncio.Task[None]]:
    r = StatusReporter(client, interval_s=0.01)  # type: ignore[arg-type]
    r.set_session("s1")
    return r, asyncio.create_task(r.run())


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_a_failed_call_is_retried_on_the_same_session() -> None:
    client = FlakyClient(TimeoutError("deadline exceeded"), ConnectionError("busy"))
    r, task = await run_reporter(client)
    r.report("t1", TaskStatus(State=TaskState.STARTING))
    r.report("t1", TaskStatus(State=TaskState.RUNNING))
    for _ in range(200):
        if client.sent:
            break
        await asyncio.sleep(0.01)
    await stop(task)
    assert [(u.task_id, u.status.State) for u in client.sent] == [("t1", TaskState.RUNNING)]
    assert r._session == "s1"


async def test_an_ended_session_is_dropped_until_the_agent_registers_again() -> None:
    client = FlakyClient(SessionInvalid())
    r, task = await run_reporter(client)
    r.report("t1", TaskStatus(State=TaskState.RUNNING))
    for _ in range(100):
        if r._session is None:
            break
        await asyncio.sleep(0.01)
    assert r._session is None and client.sent == [] and r.pending == 1
    r.set_session("s2")  # the agent registered again
    for _ in range(100):
        if client.sent:
            break
        await asyncio.sleep(0.01)
    await stop(task)
    assert [u.task_id for u in client.sent] == ["t1"]


async def test_the_agent_restarts_a_reporter_that_a_stray_cancellation_stopped() -> None:
    """A grpc.aio call whose channel closes raises CancelledError in its caller; the reporter used
    to end on it for good, and the node's tasks ran unreported ever after."""
    client = FlakyClient(asyncio.CancelledError())  # type: ignore[arg-type]
    agent = Agent(client, HollowExecutor(hostname="h1"), "n1", "127.0.0.1", report_interval_s=0.01)  # type: ignore[arg-type]
    agent.reporter.set_session("s1")
    keeper = asyncio.create_task(agent._keep_reporting())
    agent.reporter.report("t1", TaskStatus(State=TaskState.RUNNING))
    for _ in range(200):
        if client.sent:
            break
        await asyncio.sleep(0.01)
    assert [(u.task_id, u.status.State) for u in client.sent] == [("t1", TaskState.RUNNING)]
    assert not keeper.done()
    await stop(keeper)  # a real cancellation still ends it
    assert keeper.cancelled()
