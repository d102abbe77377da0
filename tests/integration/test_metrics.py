"""Prometheus metrics of a real daemon: ``--metrics-addr`` and the API's ``/metrics``, scraped and
parsed with prometheus_client's own parser while a real service runs on the real engine."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from docker.types import ServiceMode
from prometheus_client.parser import text_string_to_metric_families

from shoal.metrics import Metrics
from shoal.store import MemoryStore, NullBackend
from shoal.store.election import LeaderElection
from shoal.store.etcd import etcd_client
from shoal.store.replica import EtcdReplica
from tests.integration.conftest import free_port, leave_and_stop, wait_for
from tests.integration.shoal_process import ShoalProcess
from tests.integration.test_store_etcd import running, service
from tests.integration.transport_env import listen_addr

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]



def parse(text: str) -> Samples:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture(scope="module")
def metd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ShoalProcess, str]]:
    """One daemon for the module, in a one-node swarm, serving metrics on a loopback port."""
    addr = f"127.0.0.1:{free_port()}"
    proc = ShoalProcess(tmp_path_factory.mktemp("metrics"), args=("--metrics-addr", addr))
    proc.start()
    client = proc.client()
    try:
        client.swarm.init(advertise_addr="127.0.0.1", listen_addr=listen_addr())
        yield proc, f"http://{addr}/metrics"
    finally:
        leave_and_stop(proc)


def scrape_api(proc: ShoalProcess) -> Samples:
    api = proc.client().api
    resp = api._get(api._url("/metrics"))
    resp.raise_for_status()
    return parse(resp.text)


def test_a_service_moves_the_metrics(metd: tuple[ShoalProcess, str]) -> None:
    proc, url = metd
    client = proc.client()
    svc = client.services.create("busybox:latest", ["sleep", "3600"], name="metweb", mode=ServiceMode("replicated", 2))
    try:
        def running() -> Samples | None:
            s = parse(requests.get(url, timeout=10).text)
            return s if value(s, "shoal_tasks", service="metweb", state="running") == 2 else None

        s = wait_for(running, timeout=60)
        assert isinstance(s, dict)
        assert value(s, "shoal_task_placement_seconds_count") >= 2
        assert value(s, "shoal_reconcile_pass_seconds_count", loop="scheduler") >= 1
        assert value(s, "shoal_store_commit_seconds_count", backend="sqlite") >= 1
        assert value(s, "shoal_manager_leader") == 1
        assert value(s, "shoal_dispatcher_sessions") == 1  # this host's own agent
        assert value(s, "shoal_event_loop_lag_seconds_count") > 0
        assert value(s, "shoal_nodes", role="manager", state="ready", availability="active") == 1
        # The create went through the API: its latency is there under the route's pattern.
        created = [v for (n, labels), v in s.items() if n == "shoal_api_request_duration_seconds_count"
                   and ("route", "/services/create") in labels and ("method", "POST") in labels]
        assert created and sum(created) >= 1

        # The API's own /metrics serves the same registry (and times itself like any route).
        api = scrape_api(proc)
        assert value(api, "shoal_tasks", service="metweb", state="running") == 2
        again = scrape_api(proc)
        assert value(again, "shoal_api_request_duration_seconds_count",
                     method="GET", route="/metrics", code="200") >= 1

        # --metrics-addr serves /metrics and nothing else of the API.
        assert requests.get(url.replace("/metrics", "/info"), timeout=10).status_code == 404
    finally:
        svc.remove()


@pytest.mark.skipif(shutil.which("etcd") is None, reason="etcd-server is not installed")
async def test_store_commit_latency_on_etcd(tmp_path: Path) -> None:
    """The leader of a store on a real etcd reports each durable batch as backend="etcd" (the
    daemon's metrics set the same hook: Manager.store's setter)."""
    async with running(tmp_path, 1) as (etcd,):
        url = [etcd.client_url]
        store = MemoryStore(NullBackend())
        metrics = Metrics()
        store.observe_persist = metrics.observe_store_commit
        replica = EtcdReplica(store, url, timeout_s=3)
        client = etcd_client(url)
        election = LeaderElection(client, member_id="metleader", ttl_s=5)
        try:
            await replica.lead((await election.campaign()).fence, lambda _e: None)
            with store.tx() as tx:
                tx.create("service", service(1))
                tx.create("service", service(2))
            await store.wait_durable(within=10)
            s = parse(metrics.render().decode())
            assert value(s, "shoal_store_commit_seconds_count", backend="etcd") >= 1
            assert value(s, "shoal_store_commit_seconds_sum", backend="etcd") > 0
            assert value(s, "shoal_store_committed_objects_total", backend="etcd") >= 2
        finally:
            await election.close()
            await replica.close()
            await client.close()
