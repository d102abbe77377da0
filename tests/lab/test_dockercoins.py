"""Issue 5 on a real 3-host lab: the dockercoins demo deployed as a stack across the hosts, its
parts finding each other by service name over the overlay network, and the worker's counter
advancing in redis. Then a rolling upgrade of the worker and the stack's removal.

The demo images are built offline by scripts/build-demo-images.sh (CI runs it) and preloaded into
the lab's registry and engines.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import docker
import pytest

from shoal.lab import DEFAULT_PRELOAD, Lab
from tests.lab.conftest import wait_for

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "examples" / "dockercoins" / "docker-compose.yml"
IMAGES = (*(f"shoal-demo/dockercoins-{s}:1" for s in ("rng", "hasher", "worker", "redis", "webui")),
          "shoal-demo/dockercoins-worker:2")
PRELOAD = (*DEFAULT_PRELOAD, *IMAGES)


def _missing_images() -> list[str]:
    try:
        engine = docker.from_env()
        have = {tag for img in engine.images.list() for tag in img.tags}
    except docker.errors.DockerException:
        return list(IMAGES)
    return [i for i in IMAGES if i not in have]


pytestmark = [
    pytest.mark.lab(hosts=3, join=True, preload=PRELOAD),
    pytest.mark.skipif(bool(_missing_images()), reason="demo images not built: run scripts/build-demo-images.sh"),
]


def shoal(lab: Lab, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    exe = str(Path(sys.executable).with_name("shoal"))
    res = subprocess.run([exe, "-H", lab.docker_host, *args], capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, "COLUMNS": "200"})
    assert res.returncode == 0, f"shoal {' '.join(args)}: {res.stderr}"
    return res


def redis_counter(lab: Lab, client: docker.DockerClient) -> int:
    """`hashes` in redis, read with redis-cli inside the redis task's container on its own host."""
    task = next(t for t in client.api.tasks(filters={"service": "coins_redis", "desired-state": "running"})
                if t["Status"]["State"] == "running")
    host = next(h for h in lab.hosts if h.node_id == task["NodeID"])
    engine = docker.DockerClient(base_url=host.engine, version="1.41", timeout=30)
    cid = task["Status"]["ContainerStatus"]["ContainerID"]
    out = engine.containers.get(cid).exec_run(["redis-cli", "get", "hashes"]).output.decode().strip()
    return int(out) if out.isdigit() else 0


def test_dockercoins_across_three_hosts(lab: Lab, tmp_path: Path) -> None:
    client = docker.DockerClient(base_url=lab.docker_host, version="1.41", timeout=60)
    wait_for(lambda: len(client.nodes.list()) == 3 and
             all(n.attrs["Status"]["State"] == "ready" for n in client.nodes.list()))
    try:
        shoal(lab, "stack", "deploy", "-c", str(COMPOSE), "coins")
        tasks = client.api.tasks(filters={"label": "com.docker.stack.namespace=coins", "desired-state": "running"})
        nodes = {t["NodeID"] for t in tasks}
        assert len(nodes) == 3, f"the five services should spread over the three hosts: {tasks}"

        # The worker talks to rng, hasher and redis by name, across hosts: the counter advances.
        first = wait_for(lambda: redis_counter(lab, client), within=60, interval=0.5)
        wait_for(lambda: redis_counter(lab, client) > first, within=30)

        # Rolling upgrade of the worker alone; the counter keeps advancing with the new version.
        upgraded = COMPOSE.read_text().replace("dockercoins-worker:1", "dockercoins-worker:2")
        v2 = tmp_path / "docker-compose.yml"
        v2.write_text(upgraded)
        out = shoal(lab, "stack", "upgrade", "coins", "-c", str(v2)).stdout
        assert "Updating service coins_worker" in out and "coins_rng" not in out
        before = redis_counter(lab, client)
        wait_for(lambda: redis_counter(lab, client) > before, within=60)
    finally:
        subprocess.run([str(Path(sys.executable).with_name("shoal")), "-H", lab.docker_host, "stack", "rm", "coins"],
                       capture_output=True, timeout=60)
    wait_for(lambda: not client.api.services(filters={"label": "com.docker.stack.namespace=coins"}), within=30)
