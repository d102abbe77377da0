"""Prometheus metrics (shoal/metrics.py): the collectors, the API's /metrics and --metrics-addr."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import msgspec
import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from shoal.api import create_app
from shoal.api.auth import Security
from shoal.bench.scale import free_port_pair
from shoal.cli.main import app as cli_app
from shoal.controlapi import users
from shoal.dispatcher.protocol import TaskStats
from shoal.manager import Manager
from shoal.metrics import (
    Metrics,
    MetricsAddrError,
    TaskStatsCollector,
    parse_metrics_addr,
    scrape_target_groups,
    start_metrics_server,
)
from shoal.models import InitRequest, NodeDescription, TaskState, UserSpec
from shoal.orchestrator.replicated import ReplicatedOrchestrator
from shoal.orchestrator.testutils import make_node, make_service, make_store, set_task_state, wait_for
from tests.unit.test_cli_commands import FakeDaemon, fake  # noqa: F401 (a fixture)
from tests.unit.test_cli_commands import run as run_cli

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample of a scrape, by name and sorted labels (what Prometheus itself would read)."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every sample of ``name`` whose labels include ``labels``."""
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


# ---------------------------------------------------------------------------- the store's counters


def test_task_state_counts_follow_every_write_and_forget_removed_services() -> None:
    store = make_store()
    make_node(store, "n1")
    svc = make_service(store, "metweb", replicas=3)
    ReplicatedOrchestrator(store).reconcile_all()
    tasks = store.tasks_of_service(svc.ID)
    assert store.task_state_counts() == {svc.ID: {"pending": 3}}
    set_task_state(store, [tasks[0].ID], TaskState.RUNNING)
    set_task_state(store, [tasks[1].ID], TaskState.FAILED)
    walked: dict[str, int] = {}
    for t in store.tasks_of_service(svc.ID):
        walked[t.Status.State] = walked.get(t.Status.State, 0) + 1
    assert store.task_state_counts()[svc.ID] == walked == {"pending": 1, "running": 1, "failed": 1}
    with store.tx() as tx:
        for t in store.tasks_of_service(svc.ID):
            tx.delete("task", t.ID)
    assert store.task_state_counts() == {}  # nothing left behind, not even zeros


# ---------------------------------------------------------------------------- a manager's metrics


@pytest.fixture
async def manager(tmp_path: Path) -> AsyncIterator[Manager]:
    m = Manager(tmp_path, engine_info={"Name": "met1"}, advertise_addr="127.0.0.1")
    await m.start()
    try:
        await m.init_swarm(InitRequest(ListenAddr=f"127.0.0.1:{free_port_pair()}", AdvertiseAddr="127.0.0.1"))
        yield m
    finally:
        await m.close()


async def _client(manager: Manager) -> TestClient:
    client = TestClient(TestServer(create_app(manager, Security(anonymous=None))))
    await client.start_server()
    return client


async def test_manager_metrics_move_with_a_service(manager: Manager) -> None:
    store = manager.store
    make_node(store, "metworker")
    svc = make_service(store, "metweb", replicas=3)
    await wait_for(lambda: sum(1 for t in store.tasks_of_service(svc.ID) if t.NodeID) == 3, what="placement")
    await store.wait_durable(within=10)
    assert manager.dispatcher is not None
    node_id = manager.node_id or ""
    session = await manager.dispatcher.register(node_id, NodeDescription(Hostname="met1"), "127.0.0.1")
    await manager.dispatcher.heartbeat(session.session_id)
    await asyncio.sleep(0.12)  # the loop-lag monitor samples every 50 ms
    client = await _client(manager)
    try:
        # A unix socket is the local admin; over TCP without TLS a token says who calls.
        users.put(store, UserSpec(Name="metviewer", Role="viewer"))
        token, _ = users.create_token(store, "metviewer", teams=[], role="viewer")
        headers = {"Authorization": f"Bearer {token}"}
        assert (await client.get(f"/v1.41/services/{svc.ID}", headers=headers)).status == 200
        resp = await client.get("/metrics", headers=headers)
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        s = parse(await resp.text())
    finally:
        await client.close()
    assert total(s, "shoal_tasks", service="metweb") == 3
    assert value(s, "shoal_tasks", service="metweb", state="assigned") == 3
    assert value(s, "shoal_task_placement_seconds_count") >= 3
    assert value(s, "shoal_reconcile_pass_seconds_count", loop="scheduler") >= 1
    assert value(s, "shoal_reconcile_pass_seconds_count", loop="replicated_orchestrator") >= 1
    assert value(s, "shoal_store_commit_seconds_count", backend="sqlite") >= 1
    assert value(s, "shoal_store_committed_objects_total", backend="sqlite") >= 4  # the service and its tasks
    assert value(s, "shoal_event_loop_lag_seconds_count") >= 1
    assert value(s, "shoal_manager_leader") == 1 and value(s, "shoal_node_manager") == 1
    assert value(s, "shoal_dispatcher_sessions") == 1
    assert value(s, "shoal_dispatcher_heartbeats_total") == 1
    assert value(s, "shoal_services") == 1
    assert value(s, "shoal_nodes", role="worker", state="ready", availability="active") == 1
    # The route's pattern, never the raw path (one series per service ID would grow without end).
    route = ("method", "GET"), ("route", "/services/{id}"), ("code", "200")
    assert value(s, "shoal_api_request_duration_seconds_count", **dict(route)) == 1
    assert not any(svc.ID in str(labels) for (_, labels) in s)


async def test_metrics_need_authentication_but_not_a_role(manager: Manager) -> None:
    client = await _client(manager)
    try:
        assert (await client.get("/metrics")).status == 401  # TCP, no TLS, no token
        users.put(manager.store, UserSpec(Name="metviewer2", Role="viewer"))
        token, _ = users.create_token(manager.store, "metviewer2", teams=[], role="viewer")
        headers = {"Authorization": f"Bearer {token}"}
        assert (await client.post("/swarm/leave", headers=headers)).status == 403  # a viewer indeed
        assert (await client.get("/metrics", headers=headers)).status == 200
    finally:
        await client.close()


async def test_a_daemon_outside_a_swarm_says_so() -> None:
    """A worker or a daemon not in a swarm still serves its own metrics (and no cluster state)."""
    metrics = Metrics()
    store = make_store()

    class Outside:  # what ManagerCollector reads of a manager not in a swarm
        is_manager = False
        locked = False

    from shoal.metrics import ManagerCollector

    metrics.register(ManagerCollector(Outside()))  # type: ignore[arg-type]
    s = parse(metrics.render().decode())
    assert value(s, "shoal_node_manager") == 0 and value(s, "shoal_manager_leader") == 0
    assert not any(n == "shoal_tasks" for (n, _) in s)
    assert store.task_state_counts() == {}


# ---------------------------------------------------------------------------- an agent's task stats


def test_task_stats_collector_exposes_each_task_labelled() -> None:
    samples = [
        TaskStats(task_id="t1", service_id="s1", node_id="n1", at=1_700_000_000.5, cpu_percent=150.0,
                  cpu_limit_percent=75.0, cpu_total_ns=2_500_000_000, mem_bytes=64 << 20, mem_limit_bytes=128 << 20,
                  net_rx_bytes=1000, net_tx_bytes=2000, pids=3, service_name="metweb"),
        TaskStats(task_id="t2", service_id="s2", node_id="n1", at=1_700_000_001.0, mem_bytes=1 << 20),
    ]
    calls = []

    def source() -> list[TaskStats]:
        calls.append(1)
        return samples

    metrics = Metrics()
    metrics.register(TaskStatsCollector(source))
    text = metrics.render().decode()
    s = parse(text)
    t1 = {"task": "t1", "service": "metweb", "node": "n1"}
    assert value(s, "shoal_task_cpu_percent", **t1) == 150.0
    assert value(s, "shoal_task_cpu_limit_percent", **t1) == 75.0
    assert value(s, "shoal_task_cpu_seconds_total", **t1) == 2.5
    assert value(s, "shoal_task_memory_bytes", **t1) == 64 << 20
    assert value(s, "shoal_task_memory_limit_bytes", **t1) == 128 << 20
    assert value(s, "shoal_task_network_receive_bytes_total", **t1) == 1000
    assert value(s, "shoal_task_network_transmit_bytes_total", **t1) == 2000
    assert value(s, "shoal_task_pids", **t1) == 3
    # No service name: the ID; no limit: no series (not a misleading 0).
    t2 = {"task": "t2", "service": "s2", "node": "n1"}
    assert value(s, "shoal_task_memory_bytes", **t2) == 1 << 20
    assert ("shoal_task_memory_limit_bytes", tuple(sorted(t2.items()))) not in s
    assert "1700000000500" in text  # the sample's own time, in ms, so a stale sample is not taken as new
    assert calls == [1]  # read once per scrape, at scrape time


def test_task_stats_collector_that_fails_leaves_the_rest_of_the_scrape() -> None:
    def broken() -> list[TaskStats]:
        raise RuntimeError("stats gone")

    metrics = Metrics()
    metrics.register(TaskStatsCollector(broken))
    metrics.observe_loop_lag(0.002)
    s = parse(metrics.render().decode())
    assert value(s, "shoal_event_loop_lag_seconds_count") == 1
    assert not any(n.startswith("shoal_task_cpu") for (n, _) in s)


def test_registries_are_per_daemon() -> None:
    a, b = Metrics(), Metrics()
    a.observe_placement([0.1, 0.2])
    assert value(parse(a.render().decode()), "shoal_task_placement_seconds_count") == 2
    assert value(parse(b.render().decode()), "shoal_task_placement_seconds_count") == 0


# ---------------------------------------------------------------------------- --metrics-addr


@pytest.mark.parametrize(("addr", "expected"), [
    ("127.0.0.1:9323", ("127.0.0.1", 9323)),
    ("0.0.0.0:1", ("0.0.0.0", 1)),
    ("[::1]:9323", ("::1", 9323)),
    ("localhost:80", ("localhost", 80)),
])
def test_metrics_addr_parses(addr: str, expected: tuple[str, int]) -> None:
    assert parse_metrics_addr(addr) == expected


@pytest.mark.parametrize("addr", ["9323", ":9323", "127.0.0.1:", "127.0.0.1:99999", "127.0.0.1:0", "::1:9323",
                                  "[nope]:9323", "host:port"])
def test_bad_metrics_addr_is_refused(addr: str) -> None:
    with pytest.raises(MetricsAddrError, match="--metrics-addr"):
        parse_metrics_addr(addr)


async def test_metrics_listener_serves_metrics_only() -> None:
    metrics = Metrics()
    metrics.observe_placement([0.5])
    port = free_port_pair()
    runner = await start_metrics_server(metrics, f"127.0.0.1:{port}")
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/metrics") as r:
                assert r.status == 200
                assert value(parse(await r.text()), "shoal_task_placement_seconds_count") == 1
            async with http.get(f"http://127.0.0.1:{port}/info") as r:
                assert r.status == 404
            async with http.post(f"http://127.0.0.1:{port}/metrics") as r:
                assert r.status == 405
        # The port is taken now: a second listener says so in one line.
        with pytest.raises(MetricsAddrError, match=rf"cannot listen on --metrics-addr 127.0.0.1:{port}: .*in use"):
            await start_metrics_server(Metrics(), f"127.0.0.1:{port}")
    finally:
        await runner.cleanup()


def test_daemon_with_a_bad_metrics_addr_is_one_line_exit_1(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli_app, ["daemon", "-H", f"unix://{tmp_path}/s.sock", "--data-root",
                                          str(tmp_path / "d"), "--metrics-addr", "nope"])
    assert result.exit_code == 1
    assert result.stderr == ("shoal daemon: invalid --metrics-addr 'nope': expected HOST:PORT, "
                             "e.g. 127.0.0.1:9323\n")
    assert not (tmp_path / "d").exists()  # refused before anything started


def test_daemon_whose_metrics_port_is_taken_is_one_line_exit_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli_app, ["daemon", "-H", f"unix://{tmp_path}/s.sock", "--data-root",
                                              str(tmp_path / "d"), "--metrics-addr", f"127.0.0.1:{port}"])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"shoal daemon: cannot listen on --metrics-addr 127.0.0.1:{port}: ")
    assert result.stderr.count("\n") == 1
    assert not (tmp_path / "s.sock").exists()  # the API never started


# ---------------------------------------------------------------------------- file_sd targets


def test_scrape_targets_one_group_per_node_with_an_address() -> None:
    nodes = [
        {"ID": "b", "Description": {"Hostname": "w1"}, "Spec": {"Role": "worker"}, "Status": {"Addr": "10.0.0.2"}},
        {"ID": "a", "Description": {"Hostname": "m1"}, "Spec": {"Role": "manager"}, "Status": {"Addr": "10.0.0.1"},
         "ManagerStatus": {"Leader": True}},
        {"ID": "c", "Description": {"Hostname": "v6"}, "Spec": {"Role": "worker"}, "Status": {"Addr": "fd00::3"}},
        {"ID": "d", "Description": {"Hostname": "gone"}, "Spec": {"Role": "worker"}, "Status": {"Addr": ""}},
    ]
    groups = scrape_target_groups(nodes, 9323)
    assert [g["targets"] for g in groups] == [["10.0.0.1:9323"], ["[fd00::3]:9323"], ["10.0.0.2:9323"]]
    assert groups[0]["labels"] == {"shoal_node_id": "a", "shoal_node": "m1", "shoal_role": "manager",
                                   "shoal_leader": "true"}
    assert msgspec.json.decode(msgspec.json.encode(groups)) == groups  # plain JSON, as file_sd reads it


def test_metrics_targets_cli_writes_file_sd(fake: tuple[FakeDaemon, str], tmp_path: Path) -> None:  # noqa: F811
    _, host = fake
    out = tmp_path / "shoal-targets.json"
    result = run_cli(host, "metrics", "targets", "--port", "9400", "-o", str(out))
    assert result.exit_code == 0, result.stderr
    groups = json.loads(out.read_text())
    assert [(g["targets"], g["labels"]["shoal_node"], g["labels"]["shoal_role"]) for g in groups] == [
        (["10.0.0.1:9400"], "alpha", "manager"), (["10.0.0.1:9400"], "beta", "worker")]
    assert [p.name for p in tmp_path.iterdir()] == ["shoal-targets.json"]  # no temporary left behind
    printed = run_cli(host, "metrics", "targets")
    assert json.loads(printed.stdout)[0]["targets"] == ["10.0.0.1:9323"]  # dockerd's usual port by default
    bad = run_cli(host, "metrics", "targets", "-o", str(tmp_path / "nodir" / "t.json"))
    assert bad.exit_code == 1 and bad.stderr.startswith(f"cannot write {tmp_path}/nodir/t.json: ")
    assert bad.stderr.count("\n") == 1


# ---------------------------------------------------------------------------- deploy/


DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


async def test_grafana_dashboard_panels_query_metrics_shoal_exports(manager: Manager) -> None:
    """Every panel's expression names only series a Shoal daemon serves (from a real registry: a
    leading manager with a placed service, and an agent's task stats)."""
    store = manager.store
    make_node(store, "metworker")
    svc = make_service(store, "metdash", replicas=1)
    await wait_for(lambda: any(t.NodeID for t in store.tasks_of_service(svc.ID)), what="placement")
    await store.wait_durable(within=10)
    manager.metrics.register(TaskStatsCollector(lambda: [
        TaskStats(task_id="t1", service_id=svc.ID, node_id="n1", at=1.0, mem_limit_bytes=1)]))
    manager.metrics.observe_api("GET", "/_ping", 200, 0.001)
    exported = {s.name for family in manager.metrics.registry.collect() for s in family.samples}
    assert "shoal_dispatcher_heartbeats_total" in exported and "shoal_task_cpu_percent" in exported

    dash = json.loads((DEPLOY / "grafana" / "shoal-dashboard.json").read_text())
    assert isinstance(dash["schemaVersion"], int) and dash["title"] and dash["uid"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    used: set[str] = set()
    for p in dash["panels"]:
        assert p["type"] in {"row", "stat", "timeseries"} and p["title"]
        assert {"h", "w", "x", "y"} <= p["gridPos"].keys() and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        if p["type"] == "row":
            continue
        assert p["targets"], p["title"]
        for t in p["targets"]:
            names = set(re.findall(r"\bshoal_[a-z0-9_]+", t["expr"]))
            assert names, t["expr"]
            assert names <= exported, (p["title"], names - exported)
            used |= names
    # ... and the dashboard shows every kind of metric the brief asks for.
    for family in ("shoal_tasks", "shoal_task_placement_seconds_bucket", "shoal_reconcile_pass_seconds_bucket",
                   "shoal_event_loop_lag_seconds_bucket", "shoal_store_commit_seconds_bucket",
                   "shoal_dispatcher_heartbeats_total", "shoal_dispatcher_sessions", "shoal_manager_leader",
                   "shoal_api_request_duration_seconds_bucket", "shoal_task_cpu_percent", "shoal_task_memory_bytes",
                   "shoal_task_network_receive_bytes_total"):
        assert family in used, family
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert {"datasource", "service"} <= variables


def test_prometheus_config_scrapes_the_file_sd_targets() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics" and job["scheme"] == "http"
    assert job["file_sd_configs"][0]["files"] == ["/etc/prometheus/shoal-targets.json"]


def test_store_commit_backend_label_names_the_backend(tmp_path: Path) -> None:
    """sqlite for one manager, etcd for HA (the leader persists through its fenced writer)."""
    from shoal.store import NullBackend, SqliteBackend
    from shoal.store.etcd import EtcdBackend
    from shoal.store.replica import FencedWriter
    from shoal.store.writer import backend_name

    assert backend_name(SqliteBackend(tmp_path / "s.db")) == "sqlite"
    assert backend_name(NullBackend()) == "null"
    assert backend_name(FencedWriter.__new__(FencedWriter)) == "etcd"
    assert backend_name(EtcdBackend.__new__(EtcdBackend)) == "etcd"
