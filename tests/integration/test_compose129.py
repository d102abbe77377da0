"""docker-compose 1.29 (the Python one, Debian's package) against Shoal's socket, as against classic
Swarm: ``up -d`` (a network, depends_on, a scale of 2), ``ps``, ``logs``, ``exec``, names across the
project's overlay network, ``up --scale``, ``down``; and the network attachments under it through the
docker CLI (``run --network``, ``network connect/disconnect``, what is refused)."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.integration.shoal_process import ShoalProcess
from tests.integration.transport_env import listen_addr

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose 1.29 is not installed"),
]

PROJECT = "shoalc129"
COMPOSE = """\
version: "2.4"
services:
  db:
    image: busybox:latest
    command: ["sh", "-c", "trap 'exit 0' TERM; echo db up; sleep 600 & wait"]
    networks: [back]
  web:
    image: busybox:latest
    command: ["sh", "-c", "trap 'exit 0' TERM; echo web up; sleep 600 & wait"]
    depends_on: [db]
    networks: [back]
    scale: 2
networks:
  back: {}
"""


@pytest.fixture(scope="module")
def cluster(shoal: ShoalProcess) -> Iterator[docker.DockerClient]:
    """One swarm for the module (the session's daemon); leaving it removes what is left."""
    client = shoal.client()
    client.swarm.init(advertise_addr="127.0.0.1", listen_addr=listen_addr())
    try:
        yield client
    finally:
        for c in client.containers.list(all=True, filters={"label": f"com.docker.compose.project={PROJECT}"}):
            c.remove(force=True)
        for c in client.containers.list(all=True, filters={"name": "shoalc129-"}):
            c.remove(force=True)
        client.swarm.leave(force=True)


def compose(shoal: ShoalProcess, project_dir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(["docker-compose", "-H", shoal.host, "-p", PROJECT, "--no-ansi", *args],
                         cwd=project_dir, capture_output=True, text=True, timeout=120)
    if check and res.returncode != 0:
        raise AssertionError(f"docker-compose {' '.join(args)} failed ({res.returncode}): {res.stderr}")
    return res


def attachment_tasks(client: docker.DockerClient) -> list[dict]:
    return [t for t in client.api.tasks() if t["Spec"].get("NetworkAttachmentSpec") is not None]


def project_containers(client: docker.DockerClient, service: str | None = None) -> list[dict]:
    label = [f"com.docker.compose.project={PROJECT}"] + ([f"com.docker.compose.service={service}"] if service else [])
    return [client.api.inspect_container(c["Id"]) for c in client.api.containers(all=True, filters={"label": label})]


def test_compose_up_ps_logs_names_scale_down(shoal: ShoalProcess, cluster: docker.DockerClient,
                                             tmp_path: Path) -> None:
    try:
        cluster.api.inspect_image("busybox:latest")
    except docker.errors.NotFound:
        pytest.skip("compose inspects images: needs Shoal's /images (the images branch)")
    (tmp_path / "docker-compose.yml").write_text(COMPOSE)
    compose(shoal, tmp_path, "up", "-d")

    net = cluster.api.inspect_network(f"{PROJECT}_back")
    assert net["Driver"] == "overlay" and net["Attachable"] is True  # compose asks attachable; driver is ours
    subnet = net["IPAM"]["Config"][0]["Subnet"].rsplit(".", 1)[0] + "."
    ps = compose(shoal, tmp_path, "ps").stdout
    for name in (f"{PROJECT}_db_1", f"{PROJECT}_web_1", f"{PROJECT}_web_2"):
        assert any(line.startswith(name) and " Up " in line for line in ps.splitlines()), ps

    ips: dict[str, str] = {}
    for c in project_containers(cluster):
        (name, ep), = c["NetworkSettings"]["Networks"].items()
        assert name == f"{PROJECT}_back" and ep["NetworkID"] == net["Id"]  # Shoal's name, not the node's
        assert ep["IPAddress"].startswith(subnet), ep  # an address from Shoal's allocator
        assert c["Node"]["Name"]  # classic Swarm's field: where it runs
        ips[c["Name"].lstrip("/")] = ep["IPAddress"]
    assert len(set(ips.values())) == 3
    # One attachment task per container (the allocator's record of its address), none for others.
    assert sorted(t["NetworksAttachments"][0]["Addresses"][0].split("/")[0]
                  for t in attachment_tasks(cluster)) == sorted(ips.values())

    # Names: the service names (compose's aliases) and the container names, from any member.
    out = compose(shoal, tmp_path, "exec", "-T", "web", "nslookup", "web").stdout
    assert {ips[f"{PROJECT}_web_1"], ips[f"{PROJECT}_web_2"]} <= set(out.split()), out
    out = compose(shoal, tmp_path, "exec", "-T", "--index=2", "web", "nslookup", "db").stdout
    assert ips[f"{PROJECT}_db_1"] in out.split(), out
    compose(shoal, tmp_path, "exec", "-T", "db", "ping", "-c1", "-W2", f"{PROJECT}_web_1")

    logs = compose(shoal, tmp_path, "logs", "--no-color").stdout
    assert "db up" in logs and logs.count("web up") == 2, logs

    compose(shoal, tmp_path, "up", "-d", "--scale", "web=3")
    assert len(project_containers(cluster, "web")) == 3
    compose(shoal, tmp_path, "up", "-d", "--scale", "web=1")
    assert len(project_containers(cluster, "web")) == 1
    assert len(attachment_tasks(cluster)) == 2  # the removed containers gave their addresses back

    compose(shoal, tmp_path, "down", "-t", "2")
    assert project_containers(cluster) == []
    assert attachment_tasks(cluster) == []
    assert f"{PROJECT}_back" not in [n["Name"] for n in cluster.api.networks()]


def test_network_attachments_through_the_docker_cli(shoal: ShoalProcess, cluster: docker.DockerClient) -> None:
    shoal.docker_cli("network", "create", "-d", "overlay", "shoalc129-closed")
    shoal.docker_cli("network", "create", "-d", "overlay", "--attachable", "shoalc129-open")
    res = shoal.docker_cli("run", "-d", "--name", "shoalc129-refused", "--network", "shoalc129-closed",
                           "busybox:latest", "sleep", "60", check=False)
    assert res.returncode != 0 and "not manually attachable" in res.stderr
    res = shoal.docker_cli("run", "-d", "--network", "ingress", "busybox:latest", "true", check=False)
    assert res.returncode != 0 and "ingress network cannot be used" in res.stderr
    res = shoal.docker_cli("run", "-d", "--network", "shoalc129-open", "--ip", "10.9.9.9", "busybox:latest", "true",
                           check=False)
    assert res.returncode != 0 and "fixed address" in res.stderr
    assert attachment_tasks(cluster) == []  # nothing was held by the refusals

    # A container on the engine's default bridge joins and leaves the overlay network.
    shoal.docker_cli("run", "-d", "--name", "shoalc129-c", "busybox:latest", "sleep", "600")
    shoal.docker_cli("network", "connect", "--alias", "lookup-me", "shoalc129-open", "shoalc129-c")
    nets = json.loads(shoal.docker_cli("inspect", "-f", "{{json .NetworkSettings.Networks}}", "shoalc129-c").stdout)
    assert set(nets) == {"bridge", "shoalc129-open"} and "lookup-me" in nets["shoalc129-open"]["Aliases"]
    res = shoal.docker_cli("network", "rm", "shoalc129-open", check=False)
    assert res.returncode != 0 and "in use by container" in res.stderr
    shoal.docker_cli("network", "disconnect", "shoalc129-open", "shoalc129-c")
    nets = json.loads(shoal.docker_cli("inspect", "-f", "{{json .NetworkSettings.Networks}}", "shoalc129-c").stdout)
    assert set(nets) == {"bridge"}
    assert attachment_tasks(cluster) == []
    shoal.docker_cli("rm", "-f", "shoalc129-c")
    shoal.docker_cli("network", "rm", "shoalc129-open", "shoalc129-closed")
