"""Health checks run by the agent itself, in the Rancher 1.x style, for images without a HEALTHCHECK.

Rancher (cattle) probed each container from outside it, with HAProxy: a TCP connect to a port, or an
HTTP request line whose answer must be 2xx/3xx. The agent does the same from the node, against the
container's address on its network, so nothing has to be installed in the image. A check is
configured on the service with ``shoal.health.*`` labels (shoal/extensions.py parses them into a
:class:`~shoal.extensions.HealthCheck`; the Docker API has no word for it, and labels survive the
docker CLI's read-modify-write of a spec). The states follow Rancher's: a new container
is *initializing* until ``healthy_threshold`` probes in a row pass (the task stays STARTING, like a
task with an engine health check), and is unhealthy if that takes longer than
``initializing_timeout``; a healthy one turns unhealthy after ``unhealthy_threshold`` failures in a
row. A container the agent finds running after a restart is *reinitializing*: it keeps running and
gets ``reinitializing_timeout`` to prove itself healthy again. ``strategy`` says what unhealthy
means: ``recreate`` fails the task (the restart supervisor replaces it), ``none`` only reports.

The state machine (:class:`CheckState`) is pure and takes the time as an argument; the loop
(:class:`AgentHealthMonitor`) takes an injectable clock and sleep, so tests need no real waiting.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from shoal.extensions import HealthCheck, parse_health_check
from shoal.models import HealthResult, TaskHealth

log = logging.getLogger(__name__)

LOG_KEEP = 5  # probe results kept in TaskHealth.Log, as the engine keeps in State.Health.Log

STARTING, HEALTHY, UNHEALTHY = "starting", "healthy", "unhealthy"


def task_check(service_labels: dict[str, str] | None) -> HealthCheck | None:
    """The check for a task, leniently: labels were validated at create time, so a bad one here
    (a spec stored before validation existed) is logged and means no check, not a failed task."""
    try:
        return parse_health_check(service_labels)
    except ValueError as e:
        log.warning("ignoring the agent health check: %s", e)
        return None


# --------------------------------------------------------------------------- probes


async def probe(host: str, check: HealthCheck) -> tuple[bool, str]:
    """One probe: (passed, output). TCP: the port accepts a connection. HTTP: the request line is
    answered with a 2xx or 3xx status. Output is short, e.g. ``HTTP 200`` or ``connection refused``."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(check.response_timeout_s):
            reader, writer = await asyncio.open_connection(host, check.port)
            if not check.request_line:
                return True, f"connected to {host}:{check.port}"
            writer.write(_request(check.request_line, host, check.port))
            await writer.drain()
            status_line = await reader.readline()
    except TimeoutError:
        return False, f"timed out after {check.response_timeout_s:g}s"
    except ConnectionRefusedError:
        return False, "connection refused"
    except OSError as e:
        return False, (e.strerror or str(e) or type(e).__name__).lower()
    finally:
        if writer is not None:
            writer.close()
    return _judge(status_line)


def _request(line: str, host: str, port: int) -> bytes:
    parts = line.split()
    if len(parts) == 2:
        parts.append("HTTP/1.0")
    head = [" ".join(parts)]
    if parts[2].upper() == "HTTP/1.1":
        head.append(f"Host: {host}:{port}")  # required by HTTP/1.1
    head += ["User-Agent: shoal-health", "Connection: close", "", ""]
    return "\r\n".join(head).encode()


def _judge(status_line: bytes) -> tuple[bool, str]:
    m = re.match(rb"HTTP/\d(?:\.\d)?\s+(\d{3})", status_line)
    if m is None:
        text = status_line.decode(errors="replace").strip()[:60]
        return False, f"not an HTTP response: {text!r}" if text else "connection closed without a response"
    code = int(m.group(1))
    return 200 <= code < 400, f"HTTP {code}"


# --------------------------------------------------------------------------- state machine


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class CheckState:
    """Rancher's health states for one container, advanced by probe results.

    ``starting`` (initializing, or reinitializing after an agent restart) → ``healthy`` after
    ``healthy_threshold`` passes in a row; → ``unhealthy`` when the (re)initializing timeout passes
    first. ``healthy`` → ``unhealthy`` after ``unhealthy_threshold`` failures in a row; ``unhealthy``
    → ``healthy`` again after ``healthy_threshold`` passes (only visible with strategy none)."""

    def __init__(self, check: HealthCheck, now: float, reinitializing: bool = False) -> None:
        self.check = check
        self.status = STARTING
        timeout = check.reinitializing_timeout_s if reinitializing else check.initializing_timeout_s
        self.deadline = now + timeout
        self.passes = 0
        self.failures = 0
        self.log: list[HealthResult] = []

    def record(self, passed: bool, output: str, start: float, end: float) -> bool:
        """Count one probe; True when what a task reports (status or failing streak) changed."""
        before = (self.status, self.failures)
        self.log = [*self.log, HealthResult(Start=_iso(start), End=_iso(end), ExitCode=0 if passed else 1,
                                            Output=output)][-LOG_KEEP:]
        if passed:
            self.passes, self.failures = self.passes + 1, 0
            if self.status != HEALTHY and self.passes >= self.check.healthy_threshold:
                self.status = HEALTHY
        else:
            self.passes, self.failures = 0, self.failures + 1
            if self.status == HEALTHY and self.failures >= self.check.unhealthy_threshold:
                self.status = UNHEALTHY
        self.expire(end)
        return (self.status, self.failures) != before

    def expire(self, now: float) -> bool:
        """A container still starting when its (re)initializing timeout passes is unhealthy."""
        if self.status == STARTING and now >= self.deadline:
            self.status = UNHEALTHY
            return True
        return False

    def health(self) -> TaskHealth:
        return TaskHealth(Status=self.status, Source="agent", FailingStreak=self.failures, Log=list(self.log))


Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class AgentHealthMonitor:
    """Probes one container every ``interval`` and calls ``on_change`` with its TaskHealth whenever
    the status or the failing streak changes. Runs until cancelled."""

    def __init__(
        self,
        check: HealthCheck,
        host: str,
        on_change: Callable[[TaskHealth], None],
        *,
        reinitializing: bool = False,
        clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
        prober: Callable[[str, HealthCheck], Awaitable[tuple[bool, str]]] = probe,
    ) -> None:
        self.check = check
        self.host = host
        self.on_change = on_change
        self.clock = clock
        self.sleep = sleep
        self.prober = prober
        self.state = CheckState(check, clock(), reinitializing)

    async def run(self) -> None:
        while True:
            start = self.clock()
            passed, output = await self.prober(self.host, self.check)
            if self.state.record(passed, output, start, self.clock()):
                self.on_change(self.state.health())
            await self.sleep(max(0.0, self.check.interval_s - (self.clock() - start)))
            if self.state.expire(self.clock()):
                self.on_change(self.state.health())
