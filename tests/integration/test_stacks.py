"""Stacks on a real engine: deploy, re-deploy with a change, scale, upgrade, remove — with Shoal's
CLI and with the docker CLI's own ``stack`` commands — and bad Compose files that deploy nothing."""

from __future__ import annotations

import json
from pathlib import Path

import docker
import pytest

from tests.integration.conftest import shoal_cli, wait_for
from tests.integration.shoal_process import ShoalProcess

pytestmark = pytest.mark.integration

COMPOSE = """\
version: "3.8"
services:
  web:
    image: busybox:latest
    command: ["sh", "-c", "echo web $$VERSION; exec sleep 3600"]
    environment:
      VERSION: "{version}"
    deploy:
      replicas: 2
      update_config: {{parallelism: 1, delay: 0s}}
    stop_grace_period: 1s
  worker:
    image: busybox:latest
    command: {worker_cmd}
    depends_on: [web]
    stop_grace_period: 1s
"""


def write(path: Path, version: str = "1", worker_cmd: str = "sleep 3600") -> Path:
    path.write_text(COMPOSE.format(version=version, worker_cmd=worker_cmd))
    return path


def services(client: docker.DockerClient, stack: str) -> dict[str, dict]:
    out = client.api.services(filters={"label": f"com.docker.stack.namespace={stack}"}, status=True)
    return {s["Spec"]["Name"]: s for s in out}


def running(client: docker.DockerClient, name: str) -> int:
    svc = services(client, name.split("_")[0]).get(name)
    return (svc or {}).get("ServiceStatus", {}).get("RunningTasks", 0)


def containers_of(engine: docker.DockerClient, service: str) -> list:
    return engine.containers.list(sparse=True, filters={"label": f"com.docker.swarm.service.name={service}"})


@pytest.fixture
def engine() -> docker.DockerClient:
    return docker.from_env()


def test_stack_lifecycle_with_shoal_cli(shoal: ShoalProcess, swarm: docker.DockerClient, tmp_path: Path,
                                        engine: docker.DockerClient) -> None:
    f = write(tmp_path / "docker-compose.yml")
    out = shoal_cli(shoal, "stack", "deploy", "-c", str(f), "demo").stdout
    assert "Creating service demo_web" in out and "demo_worker" in out
    # Without --detach the command returns once everything runs.
    svcs = services(swarm, "demo")
    assert svcs["demo_web"]["ServiceStatus"]["RunningTasks"] == 2
    assert svcs["demo_worker"]["ServiceStatus"]["RunningTasks"] == 1
    assert len(containers_of(engine, "demo_web")) == 2

    ls = shoal_cli(shoal, "stack", "ls").stdout
    assert any(line.split()[:2] == ["demo", "2"] for line in ls.splitlines())
    assert "demo_worker" in shoal_cli(shoal, "stack", "services", "demo").stdout
    ps = shoal_cli(shoal, "stack", "ps", "demo").stdout.splitlines()[1:]
    assert sum(1 for line in ps if "Running" in line) == 3

    # The same file again: nothing changes.
    versions = {n: s["Version"]["Index"] for n, s in services(swarm, "demo").items()}
    out = shoal_cli(shoal, "stack", "deploy", "-c", str(f), "demo").stdout
    assert "Updating" not in out and "Creating service" not in out
    assert {n: s["Version"]["Index"] for n, s in services(swarm, "demo").items()} == versions

    # A changed environment: only web rolls; the new containers carry the new value.
    dry = shoal_cli(shoal, "stack", "deploy", "--dry-run", "-c", str(write(f, version="2")), "demo").stdout
    assert "update" in dry and "Env" in dry
    assert services(swarm, "demo")["demo_web"]["Version"]["Index"] == versions["demo_web"]  # dry run wrote nothing
    out = shoal_cli(shoal, "stack", "deploy", "-c", str(f), "demo").stdout
    assert "Updating service demo_web" in out and "demo_worker" not in out
    after = services(swarm, "demo")
    assert after["demo_worker"]["Version"]["Index"] == versions["demo_worker"]
    # The deploy returned once the update was done: every running web container is the new one.
    envs = [engine.api.inspect_container(c.id)["Config"]["Env"] for c in containers_of(engine, "demo_web")]
    assert len(envs) == 2 and all("VERSION=2" in env for env in envs), envs

    # Scale, rancher-compose style.
    shoal_cli(shoal, "stack", "scale", "demo", "worker=3")
    assert running(swarm, "demo_worker") == 3
    bad = shoal_cli(shoal, "stack", "scale", "demo", "nope=2", check=False)
    assert bad.returncode != 0 and "nope not found" in bad.stderr

    # Upgrade to a file where only the worker changed.
    web_version = services(swarm, "demo")["demo_web"]["Version"]["Index"]
    out = shoal_cli(shoal, "stack", "upgrade", "demo", "-c",
                    str(write(f, version="2", worker_cmd='["sleep", "7200"]'))).stdout
    assert "Updating service demo_worker" in out and "demo_web" not in out
    cur = services(swarm, "demo")
    assert cur["demo_web"]["Version"]["Index"] == web_version
    assert cur["demo_worker"]["Spec"]["TaskTemplate"]["ContainerSpec"]["Args"] == ["sleep", "7200"]
    missing = shoal_cli(shoal, "stack", "upgrade", "nosuch", "-c", str(f), check=False)
    assert missing.returncode != 0 and "stack nosuch not found" in missing.stderr

    # The docker CLI sees the stack through its labels.
    dls = shoal.docker_cli("stack", "ls", "--format", "{{.Name}} {{.Services}}").stdout.split()
    assert dls[:2] == ["demo", "2"]
    dps = shoal.docker_cli("stack", "ps", "demo", "--filter", "desired-state=running", "--format", "{{.Name}}")
    # The upgrade deployed the file's replica counts (worker: 1), as docker stack deploy does.
    assert sorted(dps.stdout.split()) == ["demo_web.1", "demo_web.2", "demo_worker.1"]

    shoal_cli(shoal, "stack", "rm", "demo")
    assert services(swarm, "demo") == {}
    wait_for(lambda: not containers_of(engine, "demo_web") and not containers_of(engine, "demo_worker"), timeout=60)
    assert shoal_cli(shoal, "stack", "ls").stdout.count("demo") == 0


def test_prune_removes_dropped_services(shoal: ShoalProcess, swarm: docker.DockerClient, tmp_path: Path) -> None:
    f = write(tmp_path / "docker-compose.yml")
    shoal_cli(shoal, "stack", "deploy", "-d", "-c", str(f), "pr")
    wait_for(lambda: "pr_worker" in services(swarm, "pr"), timeout=60)  # created once web runs
    only_web = tmp_path / "web.yml"
    only_web.write_text(f.read_text().split("  worker:")[0])
    out = shoal_cli(shoal, "stack", "deploy", "-d", "-c", str(only_web), "pr").stdout
    assert "Removing" not in out and "pr_worker" in services(swarm, "pr")
    out = shoal_cli(shoal, "stack", "deploy", "-d", "--prune", "-c", str(only_web), "pr").stdout
    assert "Removing service pr_worker" in out
    assert list(services(swarm, "pr")) == ["pr_web"]


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ("services:\n  web:\n    image: busybox\n   bad: indent\n", "docker-compose.yml:4: YAML syntax error"),
        ('version: "3.8"\nservices:\n  web:\n    image: busybox\n    replicas: 2\n', "replicas"),
        ('version: "3.8"\nservices:\n  web:\n    image: busybox\n    depends_on: [db]\n', "db"),
        ('version: "3.8"\nservices:\n  web:\n    image: "${IMAGE:?set IMAGE}"\n', "set IMAGE"),
    ],
    ids=["yaml", "schema", "depends_on", "required-variable"],
)
def test_bad_compose_files_deploy_nothing(shoal: ShoalProcess, swarm: docker.DockerClient, tmp_path: Path,
                                          text: str, expect: str) -> None:
    f = tmp_path / "docker-compose.yml"
    f.write_text(text)
    res = shoal_cli(shoal, "stack", "deploy", "-c", str(f), "bad", check=False)
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert expect in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert swarm.api.services() == []
    assert shoal_cli(shoal, "stack", "ls").stdout.count("bad") == 0


def test_docker_stack_deploy(shoal: ShoalProcess, swarm: docker.DockerClient, tmp_path: Path) -> None:
    """The docker CLI's own `stack deploy` creates the network and services through Shoal's API."""
    f = write(tmp_path / "docker-compose.yml")
    out = shoal.docker_cli("stack", "deploy", "--resolve-image", "never", "-c", str(f), "dk")
    assert "Creating network dk_default" in out.stdout and "Creating service dk_web" in out.stdout
    wait_for(lambda: running(swarm, "dk_web") == 2 and running(swarm, "dk_worker") == 1, timeout=60)
    nets = json.loads(shoal.docker_cli("network", "inspect", "dk_default").stdout)
    assert nets[0]["Labels"]["com.docker.stack.namespace"] == "dk"
    svc = services(swarm, "dk")["dk_web"]
    targets = [n["Target"] for n in svc["Spec"]["TaskTemplate"]["Networks"]]
    assert targets == [nets[0]["Id"]]
    # Shoal lists it too, as a stack known only by its labels.
    assert "dk" in shoal_cli(shoal, "stack", "ls").stdout
    shoal.docker_cli("stack", "rm", "dk")
    wait_for(lambda: services(swarm, "dk") == {}, timeout=30)
    gone = shoal.docker_cli("network", "inspect", "dk_default", check=False)
    assert gone.returncode != 0
