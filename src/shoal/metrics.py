"""Prometheus metrics: one registry per daemon, and the small calls subsystems record through.

Every daemon owns a :class:`Metrics` (its own ``CollectorRegistry``: tests run several daemons in
one process, so the client library's global registry is never used). What changes on events is
recorded by the subsystem as it happens (histograms: placement latency, reconcile passes, store
commits, event-loop lag, API requests); what is a state of the cluster (tasks by state, sessions,
leadership) is read at scrape time by collectors, from counters the store and the dispatcher keep
anyway, so a scrape costs the same at 100,000 tasks as at ten.

Names are ``shoal_*`` with their unit (``_seconds``, ``_bytes``, ``_total``). Served on the API's
``GET /metrics`` and, with ``--metrics-addr HOST:PORT``, on a plain-HTTP listener of its own
(dockerd's flag), which serves ``/metrics`` only.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from shoal.dispatcher.protocol import TaskStats

log = logging.getLogger(__name__)

# Placement and reconcile passes: from a millisecond (one task on an idle manager) to a minute
# (a 100,000-task deploy waiting for its turn).
_PASS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_PLACEMENT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_API_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

DEFAULT_METRICS_PORT = 9323  # dockerd's conventional --metrics-addr port


class Metrics:
    """A daemon's registry and the metrics recorded into it as things happen."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.placement_seconds = Histogram(
            "shoal_task_placement_seconds", "Time from a task's creation to its assignment to a node",
            buckets=_PLACEMENT_BUCKETS, registry=r)
        self.reconcile_seconds = Histogram(
            "shoal_reconcile_pass_seconds", "Duration of one reconcile pass, by loop (scheduler, orchestrators, ...)",
            ["loop"], buckets=_PASS_BUCKETS, registry=r)
        self.loop_lag_seconds = Histogram(
            "shoal_event_loop_lag_seconds", "How late the daemon's event loop woke a periodic timer",
            buckets=_LAG_BUCKETS, registry=r)
        self.store_commit_seconds = Histogram(
            "shoal_store_commit_seconds", "Time to make one (merged) batch of commits durable in the store's backend",
            ["backend"], buckets=_PASS_BUCKETS, registry=r)
        self.store_commit_objects = Counter(
            "shoal_store_committed_objects_total", "Objects written or deleted in durable store batches",
            ["backend"], registry=r)
        self.api_request_seconds = Histogram(
            "shoal_api_request_duration_seconds",
            "API requests by method, route pattern and status code (streams: until the handler returns)",
            ["method", "route", "code"], buckets=_API_BUCKETS, registry=r)

    # ------------------------------------------------------------------ recording

    def observe_placement(self, seconds: Iterable[float]) -> None:
        for s in seconds:
            self.placement_seconds.observe(max(0.0, s))

    def reconcile_observer(self, loop: str) -> Callable[[float], None]:
        """A per-loop recorder, bound once (a label lookup per pass would cost more than the pass)."""
        return self.reconcile_seconds.labels(loop=loop).observe

    def observe_loop_lag(self, seconds: float) -> None:
        self.loop_lag_seconds.observe(seconds)

    def observe_store_commit(self, backend: str, seconds: float, objects: int) -> None:
        """Called on the store writer's thread: the client library's metrics are thread-safe."""
        self.store_commit_seconds.labels(backend=backend).observe(seconds)
        self.store_commit_objects.labels(backend=backend).inc(objects)

    def observe_api(self, method: str, route: str, code: int, seconds: float) -> None:
        self.api_request_seconds.labels(method=method, route=route, code=str(code)).observe(seconds)

    # ------------------------------------------------------------------ collectors and output

    def register(self, collector: Collector) -> None:
        self.registry.register(collector)

    def unregister(self, collector: Collector) -> None:
        self.registry.unregister(collector)

    def render(self) -> bytes:
        """The text format (0.0.4), which every Prometheus reads."""
        return generate_latest(self.registry)

    def negotiate(self, accept: str) -> tuple[bytes, str]:
        """Body and content type for a scraper's ``Accept`` header (OpenMetrics when it asks), by
        the client library's own negotiation."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


def _loop_name(component: object) -> str:
    """``ReplicatedOrchestrator`` → ``replicated_orchestrator``: the ``loop`` label's value."""
    name = type(component).__name__
    return "".join("_" + c.lower() if c.isupper() and i else c.lower() for i, c in enumerate(name))


def observe_components(metrics: Metrics, components: Iterable[object]) -> None:
    """Give every reconcile loop among ``components`` its pass recorder (see orchestrator/base.py)."""
    for c in components:
        if hasattr(c, "observe_pass"):
            c.observe_pass = metrics.reconcile_observer(_loop_name(c))  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------- manager state


class ManagerCollector(Collector):
    """The cluster's state as this manager sees it, read at scrape time: tasks by service and
    state (from the store's counters, never a walk over the tasks), nodes, agent sessions and
    heartbeats (the dispatcher's), leadership, and how far durable writes lag behind."""

    def __init__(self, manager: Any) -> None:
        # The Manager, read duck-typed: the API (below the manager) serves these metrics, so this
        # module sits below both and may not import the manager, not even for typing.
        self.manager = manager

    def describe(self) -> Iterable[Metric]:
        return []  # state-dependent families: nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        m = self.manager
        manager_here = m.is_manager and not m.locked
        leads = manager_here and m.leads and m.dispatcher is not None
        g = GaugeMetricFamily("shoal_node_manager", "1 if this node is a manager of its swarm")
        g.add_metric([], 1.0 if manager_here else 0.0)
        yield g
        g = GaugeMetricFamily("shoal_manager_leader", "1 if this manager is the swarm's leader")
        g.add_metric([], 1.0 if leads else 0.0)
        yield g
        if not manager_here or m.broken or m.loading:
            return
        store = m.store
        tasks = GaugeMetricFamily("shoal_tasks", "Tasks by service and current state", labels=["service", "state"])
        for sid, states in store.task_state_counts().items():
            svc = store.get("service", sid)
            name = svc.Spec.Name if svc is not None else sid
            for state, n in states.items():
                if n:
                    tasks.add_metric([name, state], n)
        yield tasks
        g = GaugeMetricFamily("shoal_services", "Services in the swarm")
        g.add_metric([], store.count("service"))
        yield g
        nodes = GaugeMetricFamily("shoal_nodes", "Nodes by role, state and availability",
                                  labels=["role", "state", "availability"])
        counts: dict[tuple[str, str, str], int] = {}
        for n in store.list("node"):
            key = (str(n.Spec.Role), str(n.Status.State), str(n.Spec.Availability))
            counts[key] = counts.get(key, 0) + 1
        for key, c in counts.items():
            nodes.add_metric(list(key), c)
        yield nodes
        g = GaugeMetricFamily("shoal_store_revision", "The store's latest committed revision")
        g.add_metric([], store.revision)
        yield g
        g = GaugeMetricFamily("shoal_store_undurable_revisions", "Committed revisions not yet durable in the backend")
        g.add_metric([], store.writer.lag)
        yield g
        d = m.dispatcher if leads else None
        if d is not None:
            g = GaugeMetricFamily("shoal_dispatcher_sessions", "Live agent sessions on this manager's dispatcher")
            g.add_metric([], d.session_count)
            yield g
            c = CounterMetricFamily("shoal_dispatcher_heartbeats", "Agent heartbeats received (this term)")
            c.add_metric([], d.heartbeats_received)
            yield c


# ---------------------------------------------------------------------------- agent: per-task stats


class TaskStatsCollector(Collector):
    """Per-task CPU, memory and network of this node's running tasks, from the latest sample the
    agent's stats collector keeps of each (``source``: called at scrape time, must be cheap)."""

    def __init__(self, source: Callable[[], Iterable[TaskStats]]) -> None:
        self.source = source

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        labels = ["task", "service", "node"]
        cpu = GaugeMetricFamily("shoal_task_cpu_percent", "CPU use as docker stats shows it (100: one CPU)",
                                labels=labels)
        cpu_limit = GaugeMetricFamily("shoal_task_cpu_limit_percent",
                                      "CPU use over the task's CPU limit (else the node's CPUs)", labels=labels)
        cpu_total = CounterMetricFamily("shoal_task_cpu_seconds", "CPU time used by the task's container",
                                        labels=labels)
        mem = GaugeMetricFamily("shoal_task_memory_bytes", "Memory used by the task's container", labels=labels)
        mem_limit = GaugeMetricFamily("shoal_task_memory_limit_bytes", "Memory limit of the task's container",
                                      labels=labels)
        rx = CounterMetricFamily("shoal_task_network_receive_bytes", "Bytes received by the task's container",
                                 labels=labels)
        tx = CounterMetricFamily("shoal_task_network_transmit_bytes", "Bytes sent by the task's container",
                                 labels=labels)
        pids = GaugeMetricFamily("shoal_task_pids", "Processes in the task's container", labels=labels)
        try:
            samples = list(self.source())
        except Exception:  # a scrape must still answer with the rest of the daemon's metrics
            log.exception("task stats could not be read for /metrics")
            samples = []
        for s in samples:
            values = [s.task_id, s.service_name or s.service_id, s.node_id]
            cpu.add_metric(values, s.cpu_percent, timestamp=s.at)
            cpu_limit.add_metric(values, s.cpu_limit_percent, timestamp=s.at)
            cpu_total.add_metric(values, s.cpu_total_ns / 1e9, timestamp=s.at)
            mem.add_metric(values, s.mem_bytes, timestamp=s.at)
            if s.mem_limit_bytes:
                mem_limit.add_metric(values, s.mem_limit_bytes, timestamp=s.at)
            rx.add_metric(values, s.net_rx_bytes, timestamp=s.at)
            tx.add_metric(values, s.net_tx_bytes, timestamp=s.at)
            pids.add_metric(values, s.pids, timestamp=s.at)
        yield from (cpu, cpu_limit, cpu_total, mem, mem_limit, rx, tx, pids)


# ---------------------------------------------------------------------------- HTTP


METRICS_KEY: web.AppKey[Metrics] = web.AppKey("shoal.metrics", Metrics)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def route_label(request: web.Request) -> str:
    """The route's pattern without the ``/v1.xx`` prefix: a raw path (IDs, names) would make a
    label value per object and grow the registry without bound."""
    route = request.match_info.route
    resource = route.resource if route is not None else None
    canonical = resource.canonical if resource is not None else ""
    prefix = "/v{api_version}"
    if canonical.startswith(prefix + "/"):
        canonical = canonical.removeprefix(prefix)
    return canonical or "unmatched"


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Time every API request by route pattern. Outermost, so the status is the one the client gets
    (the errors middleware below turns exceptions into Docker's JSON answers)."""
    metrics = request.app.get(METRICS_KEY)
    t0 = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as e:
        status = e.status
        raise
    finally:
        if metrics is not None:
            metrics.observe_api(request.method, route_label(request), status, time.perf_counter() - t0)


async def serve_metrics(request: web.Request) -> web.Response:
    body, content_type = request.app[METRICS_KEY].negotiate(request.headers.get("Accept", ""))
    return web.Response(body=body, headers={"Content-Type": content_type})


class MetricsAddrError(ValueError):
    """A ``--metrics-addr`` that cannot be used: said in one line, the daemon exits 1."""


def parse_metrics_addr(addr: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6), as dockerd's ``--metrics-addr`` takes it."""
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise MetricsAddrError(
            f"invalid --metrics-addr {addr!r}: expected HOST:PORT, e.g. 127.0.0.1:{DEFAULT_METRICS_PORT}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise MetricsAddrError(f"invalid --metrics-addr {addr!r}: {host!r} is not an IPv6 address") from None
    elif ":" in host:
        raise MetricsAddrError(f"invalid --metrics-addr {addr!r}: write an IPv6 address in brackets, [::1]:PORT")
    return host, int(port)


async def start_metrics_server(metrics: Metrics, addr: str) -> web.AppRunner:
    """The ``--metrics-addr`` listener: plain HTTP, ``GET /metrics`` only, nothing else of the API
    (it is meant for a scraper on the node's network, without the API's credentials)."""
    host, port = parse_metrics_addr(addr)
    app = web.Application()
    app[METRICS_KEY] = metrics
    app.router.add_get("/metrics", serve_metrics)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as e:
        await runner.cleanup()
        raise MetricsAddrError(f"cannot listen on --metrics-addr {addr}: {e.strerror or e}") from None
    return runner


def scrape_target_groups(nodes: list[dict[str, Any]], port: int) -> list[dict[str, Any]]:
    """Prometheus file_sd target groups, one per node with an address, from ``GET /nodes``."""
    groups = []
    for n in sorted(nodes, key=lambda n: (n.get("Description", {}).get("Hostname", ""), n.get("ID", ""))):
        addr = str(n.get("Status", {}).get("Addr") or "")
        if not addr or addr == "0.0.0.0":
            continue
        host = f"[{addr}]" if ":" in addr else addr
        ms = n.get("ManagerStatus") or {}
        groups.append({
            "targets": [f"{host}:{port}"],
            "labels": {
                "shoal_node_id": str(n.get("ID", "")),
                "shoal_node": str(n.get("Description", {}).get("Hostname", "")),
                "shoal_role": str(n.get("Spec", {}).get("Role", "")),
                "shoal_leader": "true" if ms.get("Leader") else "false",
            },
        })
    return groups
