"""Issue 14 part 5 on a 3-host lab: the seed's rng with rancher-compose.yml's `scale: 3` and its self
anti-affinity (`container_label_ne: io.rancher.stack_service.name=${stack_name}/${service_name}`)
runs one task per host; a fourth waits and says why."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import docker
import pytest

from shoal.lab import Lab
from tests.lab.conftest import wait_for

pytestmark = pytest.mark.lab(hosts=3, join=True)

STACK = "rchlab"
COMPOSE = """\
version: "2"
services:
  rng:
    image: busybox:latest
    command: ["sh", "-c", "trap 'exit 0' TERM; sleep 600 & wait"]
    labels:
      io.rancher.scheduler.affinity:container_label_ne: io.rancher.stack_service.name=${stack_name}/${service_name}
"""
RANCHER = "version: '2'\nservices:\n  rng:\n    scale: 3\n    start_on_create: true\n"


def compose(lab: Lab, cwd: Path, *args: str) -> str:
    exe = str(Path(sys.executable).with_name("shoal"))
    res = subprocess.run([exe, "-H", lab.docker_host, "compose", "-p", STACK, *args], cwd=cwd, capture_output=True,
                         text=True, timeout=240, env={**os.environ, "COLUMNS": "250"})
    assert res.returncode == 0, f"shoal compose {' '.join(args)}: {res.stderr}"
    return res.stdout


def test_rng_spreads_one_per_host(lab: Lab, tmp_path: Path) -> None:
    client = docker.DockerClient(base_url=lab.docker_host, version="1.41", timeout=60)
    wait_for(lambda: len(client.nodes.list()) == 3 and
             all(n.attrs["Status"]["State"] == "ready" for n in client.nodes.list()))
    (tmp_path / "docker-compose.yml").write_text(COMPOSE)
    (tmp_path / "rancher-compose.yml").write_text(RANCHER)

    def rng(state: str) -> list[dict]:
        ts = client.api.tasks(filters={"service": f"{STACK}_rng", "desired-state": "running"})
        return [t for t in ts if t["Status"]["State"] == state]

    try:
        compose(lab, tmp_path, "up", "-d")
        wait_for(lambda: len(rng("running")) == 3, within=90)
        assert len({t["NodeID"] for t in rng("running")}) == 3
        compose(lab, tmp_path, "scale", "rng=4", "-d")
        wait_for(lambda: len(rng("pending")) == 1)
        assert rng("pending")[0]["Status"]["Err"] == (
            "no suitable node (io.rancher.scheduler.affinity:container_label_ne: "
            f"io.rancher.stack_service.name={STACK}/rng not satisfied on 3 nodes)")
    finally:
        subprocess.run([str(Path(sys.executable).with_name("shoal")), "-H", lab.docker_host, "stack", "rm", STACK],
                       capture_output=True, timeout=60)
