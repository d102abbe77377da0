"""Scheduled jobs on the real engine: a cron job fires on schedule and its runs' tasks complete.

Real waiting would be slow (cron's finest step is a minute), so this daemon runs with the test-only
``SHOAL_TEST_CRON_SPEED=30``: the cron scheduler's clock, and only it, runs 30 times faster than real
time, so ``* * * * *`` is due every 2 real seconds. Everything else is real: the runs are started
through the control API as any ``service update --force``, the jobs orchestrator, scheduler, agent
and dockerd run the containers, and tasks report their real exit codes. Runs recorded by the
scheduler (``JobStatus.LastExecution``) are in its fast clock, i.e. ahead of real time.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator

import docker
import pytest

from shoal.models import parse_ts
from tests.integration.conftest import shoal_cli, wait_for
from tests.integration.shoal_process import ShoalProcess

pytestmark = pytest.mark.integration

SPEED = 30


def _free_port_pair() -> int:
    """A port whose next one is free too (the cluster listener and the bootstrap one beside it)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port < 65535:
            with socket.socket() as s2:
                try:
                    s2.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return int(port)
    raise RuntimeError("no free port pair")


@pytest.fixture(scope="module")
def fast_cron(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShoalProcess]:
    """A daemon of its own with the accelerated cron clock, in a one-node swarm on a free port."""
    mp = pytest.MonkeyPatch()
    mp.setenv("SHOAL_TEST_CRON_SPEED", str(SPEED))
    proc = ShoalProcess(tmp_path_factory.mktemp("cron"))
    try:
        proc.start()
    finally:
        mp.undo()
    client = proc.client()
    client.swarm.init(advertise_addr="127.0.0.1", listen_addr=f"127.0.0.1:{_free_port_pair()}")
    yield proc
    try:
        client.swarm.leave(force=True)
    except docker.errors.APIError:
        pass
    proc.stop()


def _service(proc: ShoalProcess, name: str) -> dict:
    return proc.client().api.inspect_service(name)


def _tasks(proc: ShoalProcess, service_id: str) -> list[dict]:
    return proc.client().api.tasks(filters={"service": service_id})


def test_a_cron_job_fires_on_schedule_and_its_runs_complete(fast_cron: ShoalProcess) -> None:
    out = shoal_cli(fast_cron, "job", "create", "--name", "tick", "--schedule", "* * * * *", "--history", "2",
                    "--replicas", "2", "busybox:latest", "sh", "-c", "echo tick").stdout
    service_id = out.strip().splitlines()[-1]
    try:
        svc = _service(fast_cron, "tick")
        assert svc["Spec"]["Labels"]["shoal.schedule"] == "* * * * *"
        assert "ReplicatedJob" in svc["Spec"]["Mode"]

        # Creating a job runs it (Swarm semantics, iteration 0); then the schedule adds runs, each a
        # new JobIteration. Wait for two scheduled runs whose tasks all completed.
        def scheduled_runs_completed() -> list[int]:
            by_iter: dict[int, list[dict]] = {}
            for t in _tasks(fast_cron, service_id):
                by_iter.setdefault(t.get("JobIteration", {}).get("Index", -1), []).append(t)
            return sorted(
                i for i, ts in by_iter.items()
                if i >= 1 and len([t for t in ts if t["Status"]["State"] == "complete"]) == 2
            )

        done = wait_for(lambda: len(scheduled_runs_completed()) >= 2 and scheduled_runs_completed(), timeout=40)
        for t in _tasks(fast_cron, service_id):
            if t["Status"]["State"] == "complete":
                assert t["Status"]["ContainerStatus"]["ExitCode"] == 0
        svc = _service(fast_cron, "tick")
        assert svc["JobStatus"]["JobIteration"]["Index"] >= max(done)
        last = parse_ts(svc["JobStatus"]["LastExecution"])
        # The scheduler's runs land on its (fast) clock's minute boundaries.
        assert last % 60 < 60 / SPEED * 2 + 1

        # History: at most 2 finished runs keep their tasks, beside a run still going.
        wait_for(lambda: len({t.get("JobIteration", {}).get("Index") for t in _tasks(fast_cron, service_id)}) <= 3)

        ls = shoal_cli(fast_cron, "job", "ls").stdout.splitlines()
        assert ls[0].split()[:3] == ["NAME", "SCHEDULE", "LAST"]
        row = next(line for line in ls if line.startswith("tick"))
        assert "* * * * *" in row and "UTC" in row
        assert ("completed (2 completed)" in row) or ("running" in row)
        runs = shoal_cli(fast_cron, "job", "runs", "tick").stdout.splitlines()
        assert runs[0].split()[:3] == ["RUN", "STARTED", "TASKS"]
        # A completed scheduled run is listed (not necessarily max(done): on the fast clock, a loaded
        # machine may have run and trimmed more by now, keeping 2 finished runs).
        assert any(int(line.split()[0]) >= 1 and "completed (2 completed)" in line for line in runs[1:]), runs

        before = _service(fast_cron, "tick")["Spec"]["TaskTemplate"].get("ForceUpdate", 0)
        shoal_cli(fast_cron, "job", "run", "tick")
        assert _service(fast_cron, "tick")["Spec"]["TaskTemplate"].get("ForceUpdate", 0) >= before + 1
    finally:
        res = shoal_cli(fast_cron, "job", "rm", "tick", check=False)
    assert res.returncode == 0, res.stderr
    wait_for(lambda: not fast_cron.client().services.list(filters={"name": "tick"}))


@pytest.mark.parametrize(("flags", "message"), [
    (["--schedule", "61 * * * *"], "invalid cron expression"),
    (["--schedule", "@daily", "--timezone", "Mars/Olympus"], "unknown time zone"),
])
def test_a_bad_schedule_is_a_400_and_creates_nothing(fast_cron: ShoalProcess, flags: list[str], message: str) -> None:
    res = shoal_cli(fast_cron, "job", "create", "--name", "bad", *flags, "busybox:latest", check=False)
    assert res.returncode == 1 and message in res.stderr, res.stderr
    assert fast_cron.client().services.list(filters={"name": "bad"}) == []
    # The docker CLI's way in (labels on a job service) gets the same answer.
    res2 = subprocess.run(
        ["docker", "-H", fast_cron.host, "service", "create", "--detach", "--name", "bad", "--mode",
         "replicated-job", "--label", "shoal.schedule=99 * * * *", "busybox:latest"],
        capture_output=True, text=True, timeout=60,
    )
    assert res2.returncode != 0 and "invalid cron expression" in res2.stderr
    assert fast_cron.client().services.list(filters={"name": "bad"}) == []
