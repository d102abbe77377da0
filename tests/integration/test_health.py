"""Health checks on the real engine: a Docker HEALTHCHECK that turns unhealthy, and the agent's own
Rancher-style tcp and http checks (``shoal.health.*`` labels), through the docker CLI and SDK."""

from __future__ import annotations

from typing import Any

import docker

from tests.integration.conftest import shoal_cli, wait_for
from tests.integration.shoal_process import ShoalProcess

FAST = ["--restart-delay", "200ms", "--stop-grace-period", "1s"]


def tasks(client: docker.DockerClient, name: str) -> list[dict[str, Any]]:
    return client.services.get(name).tasks()


def replaced(client: docker.DockerClient, name: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(the first task, failed; a newer task in its slot, running) once the slot was refilled."""
    ts = sorted(tasks(client, name), key=lambda t: t["CreatedAt"])
    if len(ts) < 2 or ts[0]["Status"]["State"] != "failed":
        return None
    running = [t for t in ts[1:] if t["Status"]["State"] == "running" and t["Slot"] == ts[0]["Slot"]]
    return (ts[0], running[0]) if running else None


def test_engine_healthcheck_turning_unhealthy_is_replaced(shoal: ShoalProcess, swarm: docker.DockerClient) -> None:
    shoal.docker_cli(
        "service", "create", "-d", "--name", "hc", *FAST,
        "--health-cmd", "test -f /tmp/ok", "--health-interval", "300ms", "--health-timeout", "1s",
        "--health-retries", "2", "--health-start-period", "0s",
        "busybox", "sh", "-c", "touch /tmp/ok; sleep 2; rm /tmp/ok; sleep 600",
    )
    first = wait_for(lambda: [t for t in tasks(swarm, "hc") if t["Status"]["State"] == "running"], timeout=20)
    health = first[0]["Status"].get("Health") or {}  # type: ignore[index]
    assert health.get("Status") == "healthy" and health.get("Source") == "engine"
    old, new = wait_for(lambda: replaced(swarm, "hc"), timeout=30)  # type: ignore[misc]
    assert old["Status"]["Err"] == "task: unhealthy container"
    # GET /tasks/{id} (docker inspect <task>) shows the health with the engine's last probes.
    inspected = swarm.api.inspect_task(old["ID"])
    h = inspected["Status"]["Health"]
    assert h["Status"] == "unhealthy" and h["Source"] == "engine" and h["FailingStreak"] >= 2
    assert h["Log"] and h["Log"][-1]["ExitCode"] == 1
    assert new["ID"] != old["ID"]
    out = shoal.docker_cli("inspect", "--type", "task", "--format", "{{.Status.Health.Status}}", old["ID"]).stdout
    assert out.strip() == "unhealthy"
    ps = shoal_cli(shoal, "service", "ps", "--no-trunc", "hc").stdout
    row = next(line for line in ps.splitlines() if line.startswith(old["ID"]))
    assert "(unhealthy)" in row and "task: unhealthy container" in row
    swarm.services.get("hc").remove()


AGENT_TCP = [
    "--label", "shoal.health.port=8080",
    "--label", "shoal.health.interval=200ms",
    "--label", "shoal.health.response-timeout=300",  # ms, as rancher-compose.yml wrote them
    "--label", "shoal.health.healthy-threshold=2",
    "--label", "shoal.health.unhealthy-threshold=2",
    "--label", "shoal.health.initializing-timeout=10s",
]


def test_agent_tcp_check_recreates_a_task_that_stops_listening(
    shoal: ShoalProcess, swarm: docker.DockerClient
) -> None:
    shoal.docker_cli(
        "service", "create", "-d", "--name", "tcp", *FAST, *AGENT_TCP,
        # httpd without -f goes to the background: a listener that can be stopped under the shell.
        "busybox", "sh", "-c", "httpd -p 8080; sleep 2; killall httpd; sleep 600",
    )
    running = wait_for(lambda: [t for t in tasks(swarm, "tcp") if t["Status"]["State"] == "running"], timeout=20)
    h = running[0]["Status"]["Health"]  # type: ignore[index]
    assert h["Status"] == "healthy" and h["Source"] == "agent"
    assert h["Log"][-1]["Output"].startswith("connected to ")
    old, new = wait_for(lambda: replaced(swarm, "tcp"), timeout=30)  # type: ignore[misc]
    assert old["Status"]["Err"] == "task: unhealthy container"
    h = swarm.api.inspect_task(old["ID"])["Status"]["Health"]
    assert h["Status"] == "unhealthy" and h["FailingStreak"] >= 2
    assert h["Log"][-1]["Output"] == "connection refused"
    assert new["Status"]["Health"]["Status"] == "healthy"  # the replacement passed its check to run
    assert not swarm.containers.list(filters={"label": f"shoal.task.id={old['ID']}"})  # stopped
    swarm.services.get("tcp").remove()


def test_agent_http_check_healthy_and_bad_labels_refused(shoal: ShoalProcess, swarm: docker.DockerClient) -> None:
    bad = shoal.docker_cli("service", "create", "-d", "--name", "bad", "--label", "shoal.health.port=80",
                           "--label", "shoal.health.strategy=restart", "busybox", "sleep", "60", check=False)
    assert bad.returncode != 0 and "shoal.health.strategy='restart': must be one of recreate, none" in bad.stderr
    assert not swarm.services.list(filters={"name": "bad"})
    shoal.docker_cli(
        "service", "create", "-d", "--name", "web", *FAST, *AGENT_TCP,
        "--label", "shoal.health.request-line=GET /healthz HTTP/1.1",
        "busybox", "sh", "-c", "mkdir -p /www && echo ok > /www/healthz && exec httpd -f -p 8080 -h /www",
    )
    running = wait_for(lambda: [t for t in tasks(swarm, "web") if t["Status"]["State"] == "running"], timeout=20)
    h = running[0]["Status"]["Health"]  # type: ignore[index]
    assert (h["Status"], h["Source"], h["Log"][-1]["Output"]) == ("healthy", "agent", "HTTP 200")
    ps = shoal_cli(shoal, "service", "ps", "web").stdout
    assert "ago (healthy)" in ps
    swarm.services.get("web").remove()
