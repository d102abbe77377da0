"""The seed's dockercoins as a Rancher user runs it, on one real engine: `shoal compose -p rchcoins up -d`
with docker-compose.yml + rancher-compose.yml found in the working directory (busybox standing in for
the images), `scale rng=3` under rng's self anti-affinity (one runs, two wait and say why), `logs`,
an in-service `upgrade` (and `up --upgrade`), a service-to-service `upgrade`, `ps` and `rm`."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.integration.conftest import wait_for
from tests.integration.shoal_process import ShoalProcess
from tests.integration.transport_env import listen_addr

pytestmark = pytest.mark.integration

STACK = "rchcoins"
SLEEPER = '["sh", "-c", "trap \'exit 0\' TERM; echo $$SVC up $$VERSION; sleep 600 & wait"]'
COMPOSE = f"""\
version: "2"
services:
  rng:
    image: busybox:latest
    command: {SLEEPER}
    environment: {{SVC: rng}}
    labels:
      io.rancher.scheduler.affinity:container_label_ne: io.rancher.stack_service.name=${{stack_name}}/${{service_name}}
  worker:
    image: busybox:latest
    command: {SLEEPER}
    environment: {{SVC: worker, VERSION: "@VERSION@"}}
"""
WORKER2 = f"""\
  worker2:
    image: busybox:latest
    command: {SLEEPER}
    environment: {{SVC: worker2}}
"""
RANCHER = """\
version: '2'
services:
  rng:
    scale: 1
    start_on_create: true
  worker:
    scale: 2
    upgrade_strategy:
      start_first: true
      batch_size: 2
      interval_millis: 100
"""
REASON = ("no suitable node (io.rancher.scheduler.affinity:container_label_ne: "
          f"io.rancher.stack_service.name={STACK}/rng not satisfied on 1 node)")


@pytest.fixture(scope="module")
def cluster(shoal: ShoalProcess) -> Iterator[docker.DockerClient]:
    client = shoal.client()
    client.swarm.init(advertise_addr="127.0.0.1", listen_addr=listen_addr())
    try:
        yield client
    finally:
        subprocess.run([str(Path(sys.executable).with_name("shoal")), "-H", shoal.host, "stack", "rm", STACK],
                       capture_output=True, timeout=60)
        client.swarm.leave(force=True)


def rc(shoal: ShoalProcess, cwd: Path, *args: str) -> str:
    """`shoal compose -p rchcoins ARGS` in ``cwd`` (where the files are found); its stdout."""
    exe = str(Path(sys.executable).with_name("shoal"))
    res = subprocess.run([exe, "-H", shoal.host, "compose", "-p", STACK, *args], cwd=cwd, capture_output=True,
                         text=True, timeout=120, env={**os.environ, "COLUMNS": "250"})
    if res.returncode != 0:
        raise AssertionError(f"shoal compose {' '.join(args)} failed ({res.returncode}): {res.stderr}")
    return res.stdout


def tasks(client: docker.DockerClient, service: str, state: str | None = None) -> list[dict]:
    out = client.api.tasks(filters={"service": f"{STACK}_{service}", "desired-state": "running"})
    return [t for t in out if state is None or t["Status"]["State"] == state]


def env_of(engine: docker.DockerClient, service: str) -> list[list[str]]:
    cs = engine.api.containers(filters={"label": f"io.rancher.stack_service.name={STACK}/{service}"})
    return [engine.api.inspect_container(c["Id"])["Config"]["Env"] for c in cs]


def test_dockercoins_with_rancher_compose(shoal: ShoalProcess, cluster: docker.DockerClient, tmp_path: Path) -> None:
    engine = docker.from_env()
    (tmp_path / "docker-compose.yml").write_text(COMPOSE.replace("@VERSION@", "1"))
    (tmp_path / "rancher-compose.yml").write_text(RANCHER)

    out = rc(shoal, tmp_path, "up", "-d")
    assert f"Creating service {STACK}_rng" in out and f"Creating service {STACK}_worker" in out
    wait_for(lambda: len(tasks(cluster, "rng", "running")) == 1 and len(tasks(cluster, "worker", "running")) == 2)
    # Every container carries Rancher's stack labels.
    (rng,) = engine.api.containers(filters={"label": f"io.rancher.stack_service.name={STACK}/rng"})
    assert rng["Labels"]["io.rancher.stack.name"] == STACK

    # One host: the self anti-affinity lets one rng run; the other two wait and say why.
    assert f"{STACK}_rng scaled to 3" in rc(shoal, tmp_path, "scale", "rng=3", "-d")
    wait_for(lambda: len(tasks(cluster, "rng", "pending")) == 2)
    assert len(tasks(cluster, "rng", "running")) == 1
    assert {t["Status"]["Err"] for t in tasks(cluster, "rng", "pending")} == {REASON}
    ps = rc(shoal, tmp_path, "ps", "--no-trunc")
    assert sum(REASON in line for line in ps.splitlines()) == 2
    assert "rng up" in rc(shoal, tmp_path, "logs", "rng")
    rc(shoal, tmp_path, "scale", "rng=1", "-d")

    # In-service upgrade: worker to the file's new definition, batch and order from upgrade_strategy.
    (tmp_path / "docker-compose.yml").write_text(COMPOSE.replace("@VERSION@", "2"))
    out = rc(shoal, tmp_path, "upgrade", "worker", "--wait")
    assert "batch size 2, interval 100 ms, start-first" in out
    spec = cluster.api.inspect_service(f"{STACK}_worker")["Spec"]
    assert spec["UpdateConfig"]["Order"] == "start-first" and spec["Mode"]["Replicated"]["Replicas"] == 2
    envs = env_of(engine, "worker")
    assert len(envs) == 2 and all("VERSION=2" in e for e in envs)
    # rancher-compose's spelling (up --upgrade) of the same: nothing changed, nothing rolls.
    assert f"{STACK}_worker is up to date" in rc(shoal, tmp_path, "up", "--upgrade", "worker")

    # Service-to-service upgrade: worker2 takes worker's scale batch by batch, then worker goes.
    (tmp_path / "docker-compose.yml").write_text(COMPOSE.replace("@VERSION@", "2") + WORKER2)
    out = rc(shoal, tmp_path, "upgrade", "worker", "worker2", "--batch-size", "1", "--interval", "0", "--cleanup")
    assert f"{STACK}_worker2: 2/2, {STACK}_worker: 0" in out
    assert len(tasks(cluster, "worker2", "running")) == 2
    assert f"{STACK}_worker" not in {s.name for s in cluster.services.list()}

    assert f"Removing service {STACK}_worker2" in rc(shoal, tmp_path, "rm", "worker2")
    assert f"Removing stack {STACK}" in rc(shoal, tmp_path, "rm")
    assert not [s for s in cluster.services.list() if s.name.startswith(STACK)]
