"""Swarm jobs on the real engine, driven by the real docker CLI: a replicated job runs to completion
within its concurrency (measured from the containers' own start and finish times), `--force` runs it
again, and a global job runs once on the node."""

from __future__ import annotations

import json
import random
import socket
from datetime import datetime
from typing import Any

import docker
import pytest

from tests.integration.conftest import wait_for
from tests.integration.shoal_process import ShoalProcess

pytestmark = pytest.mark.integration

ENGINE = "unix:///var/run/docker.sock"


def init_swarm(shoal: ShoalProcess) -> None:
    """A one-node swarm on a free cluster port (and the bootstrap port after it), so this file can
    run beside other tests that hold the default 2377."""
    for _ in range(50):
        port = random.randrange(32000, 60000, 2)
        try:
            for p in (port, port + 1):
                with socket.socket() as s:
                    s.bind(("0.0.0.0", p))
        except OSError:
            continue
        shoal.docker_cli("swarm", "init", "--advertise-addr", "127.0.0.1", "--listen-addr", f"0.0.0.0:{port}")
        return
    raise AssertionError("no free port pair for the swarm")


def _ts(value: str) -> float:
    """Docker's RFC 3339 times with nanoseconds, to epoch seconds."""
    main, _, frac = value.rstrip("Z").partition(".")
    return datetime.fromisoformat(main + "+00:00").timestamp() + float("0." + (frac[:6] or "0"))


def job_tasks(shoal: ShoalProcess, service: str) -> list[dict[str, Any]]:
    ids = shoal.docker_cli("service", "ps", "-q", "--no-trunc", service).stdout.split()
    return json.loads(shoal.docker_cli("inspect", *ids).stdout) if ids else []


def run_intervals(engine: docker.DockerClient, tasks: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """(started, finished) of each task's container, as the engine recorded them."""
    out = []
    for t in tasks:
        c = engine.api.inspect_container(t["Status"]["ContainerStatus"]["ContainerID"])
        out.append((_ts(c["State"]["StartedAt"]), _ts(c["State"]["FinishedAt"])))
    return out


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    edges = sorted([(s, 1) for s, _ in intervals] + [(f, -1) for _, f in intervals])  # ends sort first
    peak = cur = 0
    for _, step in edges:
        cur += step
        peak = max(peak, cur)
    return peak


def replicas(shoal: ShoalProcess, service: str) -> str:
    out = shoal.docker_cli("service", "ls", "--filter", f"name={service}", "--format", "{{.Mode}}|{{.Replicas}}")
    return out.stdout.strip()


def test_replicated_job_runs_to_completion_and_reruns_on_force(shoal: ShoalProcess) -> None:
    init_swarm(shoal)
    engine = docker.DockerClient(base_url=ENGINE)
    try:
        # Without --detach the CLI follows the job's progress (JobIteration, slots 0..3) to the end.
        res = shoal.docker_cli("service", "create", "--name", "batch", "--mode", "replicated-job",
                               "--max-concurrent", "2", "--replicas", "4", "busybox:latest",
                               "sh", "-c", "sleep 1; echo done", timeout=60)
        assert res.stdout.rstrip().endswith("job complete")
        assert replicas(shoal, "batch") == "replicated job|0/2 (4/4 completed)"
        svc = json.loads(shoal.docker_cli("service", "inspect", "batch").stdout)[0]
        assert svc["Spec"]["Mode"]["ReplicatedJob"] == {"MaxConcurrent": 2, "TotalCompletions": 4}
        assert svc["JobStatus"]["JobIteration"].get("Index", 0) == 0 and svc["JobStatus"]["LastExecution"]

        tasks = job_tasks(shoal, "batch")
        assert len(tasks) == 4 and sorted(t["Slot"] for t in tasks) == [0, 1, 2, 3]
        assert {(t["Status"]["State"], t["DesiredState"]) for t in tasks} == {("complete", "complete")}
        assert {t["JobIteration"].get("Index", 0) for t in tasks} == {0}
        first = run_intervals(engine, tasks)
        assert max_overlap(first) == 2  # the concurrency was used, and never exceeded
        logs = shoal.docker_cli("service", "logs", "--raw", "batch").stdout
        assert logs.split().count("done") == 4

        # `--force` is an update: a new iteration, counted from zero, runs the whole job again.
        shoal.docker_cli("service", "update", "--detach", "--force", "batch")
        wait_for(lambda: replicas(shoal, "batch").endswith("(4/4 completed)")
                 and len(job_tasks(shoal, "batch")) == 8, timeout=40)
        svc = json.loads(shoal.docker_cli("service", "inspect", "batch").stdout)[0]
        assert svc["JobStatus"]["JobIteration"].get("Index", 0) == 1
        again = [t for t in job_tasks(shoal, "batch") if t["JobIteration"].get("Index", 0) == 1]
        assert len(again) == 4 and all(t["Status"]["State"] == "complete" for t in again)
        second = run_intervals(engine, again)
        assert max_overlap(second) <= 2
        assert min(s for s, _ in second) >= max(f for _, f in first)  # a new run, after the first
        assert _ts(svc["JobStatus"]["LastExecution"]) <= min(s for s, _ in second)
        shoal.docker_cli("service", "rm", "batch")
    finally:
        shoal.docker_cli("swarm", "leave", "--force", check=False)
        engine.close()


def test_global_job_runs_once_on_the_node(shoal: ShoalProcess) -> None:
    init_swarm(shoal)
    try:
        shoal.docker_cli("service", "create", "--detach", "--name", "once", "--mode", "global-job",
                         "busybox:latest", "true")
        wait_for(lambda: replicas(shoal, "once") == "global job|0/0 (1/1 completed)", timeout=30)
        tasks = job_tasks(shoal, "once")
        assert len(tasks) == 1 and tasks[0]["Status"]["State"] == "complete"
        node = shoal.docker_cli("node", "inspect", "self", "--format", "{{.ID}}").stdout.strip()
        assert tasks[0]["NodeID"] == node
        # A failing global job is retried on its node per the restart policy, never duplicated.
        shoal.docker_cli("service", "create", "--detach", "--name", "flaky", "--mode", "global-job",
                         "--restart-delay", "0s", "--restart-max-attempts", "1", "busybox:latest", "false")
        wait_for(lambda: len(job_tasks(shoal, "flaky")) == 2
                 and all(t["Status"]["State"] == "failed" for t in job_tasks(shoal, "flaky")), timeout=30)
        assert replicas(shoal, "flaky") == "global job|0/0 (0/0 completed)"
    finally:
        shoal.docker_cli("swarm", "leave", "--force", check=False)
