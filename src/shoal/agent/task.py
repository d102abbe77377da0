"""One task's controller on a node: drives its container from what the manager wants to what runs.

Swarmkit's ``agent/exec.Do`` as a loop: each step moves the observed state one notch forward
(ACCEPTED → PREPARING → READY → STARTING → RUNNING → COMPLETE/FAILED) or, when the manager asks for
SHUTDOWN/REMOVE, stops the container and reports SHUTDOWN. It never moves backwards. Between steps it
sleeps until the manager changes the task or the container exits.

Health: a task whose spec has a Docker health check (or whose service has an agent-run check, the
``shoal.health.*`` labels, see agent/health.py) stays STARTING until the container is healthy, as
in Swarm; once RUNNING, an unhealthy verdict fails it ("task: unhealthy container") and stops the
container, so the restart supervisor replaces it like any failed task. The health (status, failing
streak, last probes) rides in ``TaskStatus.Health`` and is reported whenever it changes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from shoal.agent.executor.base import (
    ContainerInfo,
    ContainerNotFound,
    Executor,
    ExecutorError,
    ExitInfo,
    task_ports,
)
from shoal.agent.executor.spec import stop_grace_s
from shoal.agent.health import HEALTHY, STARTING, UNHEALTHY, AgentHealthMonitor, task_check
from shoal.models import (
    DEFAULT_STOP_GRACE,
    ContainerStatus,
    PortConfig,
    PortStatus,
    Task,
    TaskHealth,
    TaskState,
    TaskStatus,
    now_ts,
)

log = logging.getLogger(__name__)

_RUNNING = TaskState.RUNNING.order
# How long a networked task keeps running after it stops taking traffic: the time every node needs
# to hear the records without it and update its kernel (milliseconds normally; 1 s is the bound
# the routing mesh promises for backend changes).
DRAIN_S = 1.0


class Reporter(Protocol):
    def report(self, task_id: str, status: TaskStatus) -> None: ...


def _has_healthcheck(task: Task) -> bool:
    spec = task.Spec.ContainerSpec
    hc = spec.Healthcheck if spec is not None else None
    return bool(hc is not None and hc.Test and hc.Test[0] != "NONE")


def port_status(task: Task, bound: list[PortConfig]) -> PortStatus | None:
    """The task's host-mode ports with the host ports the engine actually bound (0 → a random one)."""
    wanted = task_ports(task, "host")
    if not wanted:
        return None
    by_key = {(p.TargetPort, p.Protocol or "tcp"): p.PublishedPort for p in bound}
    out = [
        PortConfig(
            Name=p.Name,
            Protocol=p.Protocol,
            TargetPort=p.TargetPort,
            PublishedPort=by_key.get((p.TargetPort, p.Protocol or "tcp"), p.PublishedPort),
            PublishMode="host",
        )
        for p in wanted
    ]
    return PortStatus(Ports=out)


class TaskController:
    def __init__(
        self,
        task: Task,
        executor: Executor,
        reporter: Reporter,
        adopted: ContainerInfo | None = None,
        adopting: bool = False,
        on_done: Callable[[TaskController], None] | None = None,
    ) -> None:
        self.task = task
        self.executor = executor
        self.reporter = reporter
        self.state = task.Status.State
        self.container_id = adopted.id if adopted is not None else ""
        self._adopted = adopted
        # True on the agent's first full assignment set: we know what containers exist, so a task the
        # store thinks is running without one really lost its container.
        self._adopting = adopting
        self._info: ContainerInfo | None = None  # after start: ports and IP
        self._exit_code = 0
        self._removed = False
        self._wake = asyncio.Event()
        self._exit: asyncio.Future[ExitInfo] | None = None
        self._on_done = on_done
        # Health: the engine's check wins; the agent's own check is for images without one.
        self._check = None if _has_healthcheck(task) else task_check((task.ServiceAnnotations or {}).get("Labels"))
        self._health: TaskHealth | None = None
        self._health_task: asyncio.Task[None] | None = None
        self._health_changed = asyncio.Event()
        self._last: tuple[TaskState, str, str, str] | None = None  # last report: state, message, err, time
        self.runner = asyncio.create_task(self._run(), name=f"task-{task.ID}")

    # ------------------------------------------------------------------ from the worker

    def update(self, task: Task) -> None:
        self.task = task
        self._wake.set()

    def remove(self) -> None:
        """The task is gone from the store (or this node): stop and remove its container, then end."""
        self._removed = True
        self._wake.set()

    async def cancel(self) -> None:
        """Stop driving the task but leave its container as it is (agent shutting down)."""
        self.runner.cancel()
        await asyncio.gather(self.runner, return_exceptions=True)

    # ------------------------------------------------------------------ reporting

    def _report(self, state: TaskState, message: str, err: str = "", ts: str = "") -> None:
        self.state = state
        ts = ts or now_ts()
        self._last = (state, message, err, ts)
        if state.terminal:
            self._stop_health()
        cs = None
        if self.container_id:
            cs = ContainerStatus(
                ContainerID=self.container_id, PID=self._info.pid if self._info else 0, ExitCode=self._exit_code
            )
        ps = port_status(self.task, self._info.ports) if self._info is not None else None
        status = TaskStatus(
            Timestamp=ts, State=state, Message=message, Err=err, ContainerStatus=cs, PortStatus=ps, Health=self._health
        )
        self.reporter.report(self.task.ID, status)

    def report_again(self) -> None:
        """The last reported status once more (a new session: the manager may have lost it)."""
        if self._last is not None:
            state, message, err, ts = self._last
            self._report(state, message, err, ts)

    def _report_health(self) -> None:
        """The same state again with the new health; its timestamp stays the state's own, so
        "Running 5 minutes ago" does not restart at every health change."""
        if self._last is not None and not self.state.terminal:
            state, message, err, ts = self._last
            self._report(state, message, err, ts)

    # ------------------------------------------------------------------ the loop

    async def _run(self) -> None:
        try:
            if self._adopted is not None or self._adopting:
                await self._guarded(self._adopt)
            while not self._removed:
                self._wake.clear()
                if not await self._guarded(self._step):
                    await self._wait()
            await self._guarded(self._remove)
        finally:  # cancelled: the agent is stopping, and the container is left as it is
            if self._exit is not None:
                self._exit.cancel()
            self._stop_health()
        if self._on_done is not None:
            self._on_done(self)

    async def _guarded(self, step: Callable[[], Awaitable[bool | None]]) -> bool:
        """Run a step; an unexpected error fails the task instead of killing the controller (which
        must live on to remove the container when the task is deleted)."""
        try:
            return await step() is not False
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("task %s: %s failed", self.task.ID, step.__name__)
            if self.state.terminal:
                return False
            self._report(TaskState.FAILED, "controller error", str(exc))
            return True

    async def _wait(self) -> None:
        """Until the manager changes the task, or (while running) the container exits."""
        waits: list[asyncio.Future[object]] = [asyncio.ensure_future(self._wake.wait())]
        if self._exit is not None and self.state == TaskState.RUNNING:
            waits.append(self._exit)  # type: ignore[arg-type]
            if self._health_task is not None:
                waits.append(asyncio.ensure_future(self._health_changed.wait()))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waits[0].cancel()
            if len(waits) > 2:
                waits[2].cancel()

    async def _step(self) -> bool:
        """One move towards the desired state; False when there is nothing to do but wait."""
        s, desired = self.state, self.task.DesiredState
        if s.terminal:
            return False
        if desired.order > _RUNNING:
            await self._shutdown()
            return True
        if s.order < TaskState.ACCEPTED.order:
            self._report(TaskState.ACCEPTED, "accepted")
        elif s == TaskState.ACCEPTED:
            self._report(TaskState.PREPARING, "preparing")
        elif s == TaskState.PREPARING:
            if not self.container_id:
                try:
                    self.container_id = await self.executor.create(self.task)
                except ExecutorError as exc:
                    self._report(TaskState.REJECTED, "preparing", str(exc))
                    return True
            self._report(TaskState.READY, "prepared")
        elif s == TaskState.READY:
            if desired.order < _RUNNING:
                return False  # prepared, not to be started yet
            self._report(TaskState.STARTING, "starting")
        elif s == TaskState.STARTING:
            await self._start()
        elif s == TaskState.RUNNING:
            if self._exit is None:
                self._exit = asyncio.ensure_future(self.executor.wait_exit(self.container_id))
            if self._exit.done():
                self._exited(self._exit.result())
            elif self._health_changed.is_set():
                self._health_changed.clear()
                if self._health is not None and self._health.Status == UNHEALTHY and self._recreates():
                    await self._fail_unhealthy()
                else:
                    self._report_health()
            else:
                return False
        return True

    async def _start(self) -> None:
        try:
            self._info = await self.executor.start(self.task, self.container_id)
        except ExecutorError as exc:
            self._report(TaskState.FAILED, "starting", str(exc))
            return
        self._exit = asyncio.ensure_future(self.executor.wait_exit(self.container_id))
        if await self._watch_health() and not await self._healthy():
            return
        self._running()

    async def _healthy(self) -> bool:
        """Swarm keeps a task with a healthcheck STARTING until the container reports healthy."""
        assert self._exit is not None
        changed = asyncio.ensure_future(self._health_changed.wait())
        wake = asyncio.ensure_future(self._wake.wait())
        try:
            while True:
                self._health_changed.clear()
                status = self._health.Status if self._health is not None else STARTING
                if status == HEALTHY:
                    return True
                if status == UNHEALTHY:
                    if not self._recreates():
                        return True  # strategy none: it runs, reported unhealthy
                    await self.executor.stop(self.container_id, 0)
                    self._report(TaskState.FAILED, "starting", "task: unhealthy container")
                    return False
                await asyncio.wait([changed, self._exit, wake], return_when=asyncio.FIRST_COMPLETED)
                if self._exit.done():
                    self._exited(self._exit.result())
                    return False
                if wake.done():
                    if self._removed or self.task.DesiredState.order > _RUNNING:
                        return False  # the loop shuts it down
                    self._wake.clear()
                    wake = asyncio.ensure_future(self._wake.wait())
                if changed.done():
                    self._report_health()  # still STARTING: the failing streak and probes so far
                    changed = asyncio.ensure_future(self._health_changed.wait())
        finally:
            changed.cancel()
            wake.cancel()

    # ------------------------------------------------------------------ health

    def _recreates(self) -> bool:
        """Whether unhealthy fails the task: always for the engine's check (Swarm), per strategy for ours."""
        return self._check is None or self._check.strategy == "recreate"

    def _set_health(self, health: TaskHealth) -> None:
        self._health = health
        self._health_changed.set()

    def _stop_health(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            self._health_task = None

    async def _watch_health(self, reinitializing: bool = False) -> bool:
        """Start following the started container's health; False when the task has no check.
        ``reinitializing``: a container found running after an agent restart."""
        if self._health_task is not None:
            return True
        if _has_healthcheck(self.task):
            health = None
            if reinitializing:  # no event comes for a status it already has
                inspect = getattr(self.executor, "inspect_health", None)
                health = await inspect(self.container_id) if inspect is not None else None
            self._health = health or TaskHealth(Status=STARTING, Source="engine")
            self._health_task = asyncio.create_task(self._follow_engine(), name=f"health-{self.task.ID}")
            if self._health.Status == UNHEALTHY:
                self._health_changed.set()
            return True
        if self._check is None:
            return False
        ip = self._info.ip if self._info is not None else ""
        if not ip:
            try:
                self._info = await self.executor.inspect(self.container_id)
                ip = self._info.ip
            except ExecutorError as exc:
                log.warning("task %s: no address to probe: %s", self.task.ID, exc)
        monitor = AgentHealthMonitor(
            self._check, ip or "127.0.0.1", self._set_health, reinitializing=reinitializing  # host network
        )
        self._health = monitor.state.health()
        self._health_task = asyncio.create_task(monitor.run(), name=f"health-{self.task.ID}")
        return True

    async def _follow_engine(self) -> None:
        """Each health_status event of the container, with the engine's streak and probe log."""
        inspect = getattr(self.executor, "inspect_health", None)  # the hollow executor has none
        while True:
            ok = await self.executor.wait_health(self.container_id)
            status = HEALTHY if ok else UNHEALTHY
            health = await inspect(self.container_id) if inspect is not None else None
            if health is None or health.Status != status:  # it changed again since: the next event says so
                health = TaskHealth(
                    Status=status,
                    Source="engine",
                    FailingStreak=health.FailingStreak if health is not None else 0,
                    Log=health.Log if health is not None else None,
                )
            self._set_health(health)

    async def _fail_unhealthy(self) -> None:
        """A running container turned unhealthy: stop it and fail the task, so it is replaced."""
        self._stop_health()
        await self._stop()
        self._report(TaskState.FAILED, "started", "task: unhealthy container")

    def _running(self) -> None:
        self._report(TaskState.RUNNING, "started")

    def _exited(self, info: ExitInfo) -> None:
        self._exit_code = info.exit_code
        if info.exit_code == 0:
            self._report(TaskState.COMPLETE, "finished")
            return
        err = f"task: non-zero exit ({info.exit_code})"
        if info.error:
            err = f"{err}: {info.error}"
        self._report(TaskState.FAILED, "started", err)

    async def _shutdown(self) -> None:
        if self.container_id and self.state.order >= TaskState.STARTING.order:
            if self.state is TaskState.RUNNING and self.task.NetworksAttachments:
                # The task takes traffic (a VIP, the routing mesh, DNS): every node drops it from its
                # balancers when the manager's records change, which the same desired-state change
                # triggers. Stopping only after that keeps new connections from reaching a container
                # that is going away (a rolling update or blue-green switch then fails no request).
                await asyncio.sleep(DRAIN_S)
            await self._stop()
        self._report(TaskState.SHUTDOWN, "shutdown")

    async def _stop(self) -> None:
        spec = self.task.Spec.ContainerSpec
        await self.executor.stop(self.container_id, stop_grace_s(spec, DEFAULT_STOP_GRACE))
        if self._exit is not None and not self._exit.done():
            try:
                self._exit_code = (await asyncio.wait_for(asyncio.shield(self._exit), 5)).exit_code
            except TimeoutError:
                pass

    async def _remove(self) -> None:
        if not self.container_id:
            return
        if self.state.order >= TaskState.STARTING.order and not self.state.terminal:
            await self._stop()  # as swarmkit: a graceful stop before removal
        await self.executor.remove(self.container_id)

    # ------------------------------------------------------------------ adoption (agent restart)

    async def _adopt(self) -> None:
        """Take over what a previous agent left: never recreate a container that exists."""
        info = self._adopted
        if self.state.terminal:
            if info is not None and info.running:
                # The manager gave up on this task while this node was away (orphaned, replaced
                # elsewhere): its container must not keep running beside the replacement.
                await self._stop()
            return
        if info is None:
            if self.state.order >= TaskState.STARTING.order:
                self._report(TaskState.FAILED, "started", "task: container not found")
            return  # earlier states: prepare it as usual
        if info.running:
            self._info = info
            self._exit = asyncio.ensure_future(self.executor.wait_exit(self.container_id))
            await self._watch_health(reinitializing=True)
            self._running()
            return
        if info.state == "created" and self.state.order <= TaskState.STARTING.order:
            return  # prepared but never started: the loop goes on from here with this container
        try:
            done = await self.executor.inspect(self.container_id)
        except ContainerNotFound:
            self.container_id = ""
            return
        self._exited(ExitInfo(done.exit_code, done.error))
