"""Issue 14: task stats and autoscaling on a real engine.

A daemon of its own samples its tasks every second (``--stats-interval 1``). A service whose tasks
burn CPU (each limited to a quarter of a CPU) while a file is absent, with a policy of at most 3
replicas at a 50 % CPU target: it scales out from 1 to 3 while they burn, `shoal service stats`
and `docker stats` show the usage, and once the file appears (the load stops) it scales back to 1
after the cooldown. Each decision is in `service inspect`, `shoal service ps` and /events."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import shoal_cli, wait_for
from tests.integration.shoal_process import ShoalProcess
from tests.integration.transport_env import listen_addr

NAME = "as-burn"
BURN = "while [ ! -e /ctl/stop ]; do :; done; exec sleep 3600"


@pytest.fixture(scope="module")
def sampled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShoalProcess]:
    proc = ShoalProcess(tmp_path_factory.mktemp("autoscale"), args=("--stats-interval", "1"))
    proc.start()
    client = proc.client()
    client.swarm.init(advertise_addr="127.0.0.1", listen_addr=listen_addr())
    yield proc
    try:
        client.swarm.leave(force=True)
    except docker.errors.APIError:
        pass
    proc.stop()


def replicas(client: docker.DockerClient) -> int:
    return int(client.services.get(NAME).attrs["Spec"]["Mode"]["Replicated"]["Replicas"])


def test_a_busy_service_scales_out_and_back_in(sampled: ShoalProcess, tmp_path: Path) -> None:
    client = sampled.client()
    ctl = tmp_path / "ctl"
    ctl.mkdir()
    started = time.time()
    svc = client.services.create(
        "busybox:latest", ["sh", "-c", BURN], name=NAME,
        mounts=[docker.types.Mount("/ctl", str(ctl), type="bind", read_only=True)],
        resources=docker.types.Resources(cpu_limit=250_000_000),
        labels={"shoal.autoscale.max": "3", "shoal.autoscale.cpu-target": "50",
                "shoal.autoscale.window": "2s", "shoal.autoscale.cooldown": "3s"},
        stop_grace_period=10**9)
    try:
        wait_for(lambda: replicas(client) == 3, timeout=90)
        status = client.services.get(NAME).attrs["AutoscaleStatus"]
        assert (status["PreviousReplicas"], status["Replicas"], status["Decisions"]) == (2, 3, 2)
        assert "above the target of 50%" in status["Reason"]

        # The usage as the leader has it, per task and for the service; and `docker stats` on a task.
        figures = wait_for(lambda: (f := json.loads(shoal_cli(sampled, "service", "stats", NAME, "--json").stdout)[0])
                           ["Usage"] and f["Usage"]["Tasks"] == 3 and f, timeout=30)
        assert figures["Usage"]["CPULimitPercentAvg"] > 10 and figures["Usage"]["MemoryBytesSum"] > 0
        table = shoal_cli(sampled, "service", "stats", NAME, "--no-stream").stdout
        assert "CPU % OF LIMIT" in table and f"{NAME}: 3 task(s)" in table
        # The host's /metrics has the same samples, per task.
        text = client.api._result(client.api._get(client.api._url("/metrics")))
        series = [s for f in text_string_to_metric_families(text) if f.name == "shoal_task_cpu_limit_percent"
                  for s in f.samples if s.labels.get("service") == NAME]
        assert len(series) == 3 and all(s.value >= 0 for s in series)
        cid = figures["Tasks"][0]["ContainerID"]
        line = sampled.docker_cli("stats", "--no-stream", "--format", "{{.ID}} {{.CPUPerc}}", cid).stdout
        assert line.startswith(cid[:12]) and line.strip().endswith("%")

        (ctl / "stop").touch()  # the load stops: back to the minimum, one step per cooldown
        wait_for(lambda: replicas(client) == 1, timeout=90)
        status = client.services.get(NAME).attrs["AutoscaleStatus"]
        assert (status["PreviousReplicas"], status["Replicas"], status["Decisions"]) == (2, 1, 4)
        assert "under the target of 50%" in status["Reason"]
        wait_for(lambda: len(svc.tasks(filters={"desired-state": "running"})) == 1, timeout=30)
        ps = shoal_cli(sampled, "service", "ps", NAME).stdout
        assert f"{NAME}: autoscaled 2 → 1" in ps

        events = client.events(since=int(started), until=int(time.time()) + 1, decode=True,
                               filters={"type": "service", "service": NAME})
        reasons = [e["Actor"]["Attributes"] for e in events if "autoscale.reason" in e["Actor"]["Attributes"]]
        assert [(r["replicas.old"], r["replicas.new"]) for r in reasons] == [("1", "2"), ("2", "3"), ("3", "2"),
                                                                             ("2", "1")]
    finally:
        svc.remove()


def test_bad_policies_are_refused_and_the_cli_sets_one(sampled: ShoalProcess) -> None:
    client = sampled.client()
    with pytest.raises(docker.errors.APIError) as err:
        client.services.create("busybox:latest", ["sleep", "60"], name="as-bad",
                               labels={"shoal.autoscale.cpu-target": "50"})
    assert err.value.status_code == 400 and "shoal.autoscale.max is required" in str(err.value.explanation)
    svc = client.services.create("busybox:latest", ["sleep", "600"], name="as-cli", stop_grace_period=10**9)
    try:
        res = shoal_cli(sampled, "service", "autoscale", "as-cli", "--max", "4", check=False)
        assert res.returncode == 1 and "needs --cpu-target or --memory-target" in res.stderr
        assert "Traceback" not in res.stderr
        shoal_cli(sampled, "service", "autoscale", "as-cli", "--max", "4", "--cpu-target", "60", "--cooldown", "1m")
        labels = client.services.get("as-cli").attrs["Spec"]["Labels"]
        assert {k: v for k, v in labels.items() if k.startswith("shoal.autoscale.")} == {
            "shoal.autoscale.max": "4", "shoal.autoscale.cpu-target": "60", "shoal.autoscale.cooldown": "1m"}
        shoal_cli(sampled, "service", "autoscale", "as-cli", "--off")
        assert not any(k.startswith("shoal.autoscale.") for k in client.services.get("as-cli").attrs["Spec"]["Labels"])
    finally:
        svc.remove()
