"""Classic Swarm's container API driven by the real docker CLI: run, ps, inspect, logs, stop, rm."""

from __future__ import annotations

import json

import docker
import pytest

from tests.integration.conftest import wait_for
from tests.integration.shoal_process import ShoalProcess

pytestmark = pytest.mark.integration


def _engine_containers(service_id: str) -> list[object]:
    """Containers the real engine holds for this container-service (the agent labels them)."""
    engine = docker.from_env()
    try:
        return engine.containers.list(all=True, sparse=True, filters={"label": f"shoal.service.id={service_id}"})
    finally:
        engine.close()


def test_run_with_constraint_ps_inspect_logs_stop_rm(shoal: ShoalProcess, swarm: docker.DockerClient) -> None:
    (node,) = swarm.nodes.list()
    host = node.attrs["Description"]["Hostname"]
    cid = shoal.docker_cli(
        "run", "-d", "--name", "shoal-ctr-cli", "--stop-signal", "SIGKILL", "-e", f"constraint:node=={host}",
        "busybox:latest", "sh", "-c", "echo hello-from-shoal; sleep 600",
    ).stdout.strip()
    assert len(cid) == 25
    try:
        def running() -> str:
            return shoal.docker_cli("ps", "--format", "{{.ID}} {{.Names}} {{.Status}}").stdout

        out = wait_for(lambda: (lambda s: s if "Up " in s else "")(running()))
        assert f" {host}/shoal-ctr-cli Up" in str(out)  # the CLI drops the leading slash

        info = json.loads(shoal.docker_cli("inspect", "shoal-ctr-cli").stdout)[0]
        assert info["Id"] == cid and info["State"]["Running"] is True
        assert info["Node"]["Name"] == host and info["Node"]["ID"] == node.id
        assert f"constraint:node=={host}" in info["Config"]["Env"]

        logs = wait_for(lambda: shoal.docker_cli("logs", "shoal-ctr-cli").stdout)
        assert logs == "hello-from-shoal\n"

        res = shoal.docker_cli("rm", "shoal-ctr-cli", check=False)
        assert res.returncode != 0 and "You cannot remove a running container" in res.stderr

        shoal.docker_cli("stop", "shoal-ctr-cli")
        wait_for(lambda: "shoal-ctr-cli" not in running())
        assert "shoal-ctr-cli" in shoal.docker_cli("ps", "-a", "--format", "{{.Names}}").stdout
        wait_for(lambda: not _engine_containers(cid))
    finally:
        shoal.docker_cli("rm", "-f", "shoal-ctr-cli", check=False)
    assert "shoal-ctr-cli" not in shoal.docker_cli("ps", "-a", "--format", "{{.Names}}").stdout
    res = shoal.docker_cli("inspect", "--type", "container", "shoal-ctr-cli", check=False)
    assert res.returncode != 0 and "No such container" in res.stderr


def test_unsatisfiable_constraint_stays_created(shoal: ShoalProcess, swarm: docker.DockerClient) -> None:
    cid = shoal.docker_cli(
        "run", "-d", "--name", "shoal-ctr-nowhere", "-e", "constraint:node==no-such-host",
        "busybox:latest", "sleep", "600",
    ).stdout.strip()
    try:
        status = wait_for(lambda: (lambda s: s if "no suitable node" in s else "")(
            shoal.docker_cli("ps", "-a", "--no-trunc", "--format", "{{.Status}}",
                             "--filter", "name=shoal-ctr-nowhere").stdout))
        assert "Created" in str(status)
        assert not _engine_containers(cid)
    finally:
        shoal.docker_cli("rm", "-f", "shoal-ctr-nowhere", check=False)
