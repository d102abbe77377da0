"""Aliyun's labels on a real engine: ``shoal stack deploy`` of an Aliyun V2 template. The service with
``aliyun.depends`` is created only once its dependency's task runs and is healthy by its
``aliyun.probe.url`` (checked against the container's own start time), ``aliyun.scale`` sets the
replicas, ``aliyun.probe.cmd`` runs as the engine's health check; an unknown ``aliyun.*`` label
deploys nothing and says file, line and key."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import docker
import pytest

from tests.integration.conftest import shoal_cli
from tests.integration.shoal_process import ShoalProcess

pytestmark = pytest.mark.integration

STACK = "aly"
DB_DELAY_S = 2  # the dependency listens only after this long, so "healthy" cannot come sooner

COMPOSE = f"""\
version: "2"
services:
  db:
    image: busybox:latest
    command: ["sh", "-c", "sleep {DB_DELAY_S}; mkdir -p /www && echo ok > /www/ping && exec httpd -f -p 8080 -h /www"]
    stop_grace_period: 1s
    labels:
      aliyun.probe.url: http://container:8080/ping
      aliyun.probe.timeout_seconds: 1
  web:
    image: busybox:latest
    command: ["sleep", "3600"]
    stop_grace_period: 1s
    labels:
      aliyun.scale: 2
      aliyun.depends: db
      aliyun.rolling_updates: true
      aliyun.probe.cmd: "true"
"""


def ts(text: str) -> datetime:
    """An RFC 3339 timestamp from Docker or Shoal (nanoseconds cut to what Python parses)."""
    head, _, frac = text.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}+00:00")


def test_aliyun_template_deploys_in_dependency_order(shoal: ShoalProcess, swarm: docker.DockerClient,
                                                    tmp_path: Path) -> None:
    engine = docker.from_env()
    bad = tmp_path / "bad.yml"
    bad.write_text(COMPOSE.replace("aliyun.scale: 2", "aliyun.scael: 2"))
    res = shoal_cli(shoal, "stack", "deploy", "-c", str(bad), STACK, check=False)
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert f"{bad}:15: services.web.labels.aliyun.scael: web: aliyun.scael: unknown Aliyun label" in res.stderr
    assert swarm.api.services() == []

    f = tmp_path / "docker-compose.yml"
    f.write_text(COMPOSE)
    try:
        out = shoal_cli(shoal, "stack", "deploy", "-c", str(f), STACK).stdout  # returns once all runs
        assert f"{STACK}_web" in out
        svcs = {s["Spec"]["Name"]: s for s in swarm.api.services(status=True)}
        web, db = svcs[f"{STACK}_web"], svcs[f"{STACK}_db"]
        assert web["ServiceStatus"]["RunningTasks"] == 2
        assert web["Spec"]["UpdateConfig"]["Parallelism"] == 1
        assert web["Spec"]["TaskTemplate"]["ContainerSpec"]["Healthcheck"]["Test"] == ["CMD-SHELL", "true"]
        assert db["Spec"]["Labels"]["shoal.health.request-line"] == "GET /ping HTTP/1.0"

        db_task = next(t for t in swarm.api.tasks(filters={"service": db["ID"]}) if t["Status"]["State"] == "running")
        assert db_task["Status"]["Health"]["Status"] == "healthy"
        assert db_task["Status"]["Health"]["Source"] == "agent"
        started = ts(engine.api.inspect_container(db_task["Status"]["ContainerStatus"]["ContainerID"])
                     ["State"]["StartedAt"])
        # web was created after db's task had listened (DB_DELAY_S after its start) and passed its probes.
        assert (ts(web["CreatedAt"]) - started).total_seconds() >= DB_DELAY_S
        for t in swarm.api.tasks(filters={"service": web["ID"], "desired-state": "running"}):
            assert t["Status"]["Health"]["Source"] == "engine"
    finally:
        shoal_cli(shoal, "stack", "rm", STACK, check=False)
