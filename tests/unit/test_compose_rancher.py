"""rancher-compose.yml beside a docker-compose.yml, Rancher's ${stack_name}/${service_name}, the
io.rancher.* labels on every task, and the seed's self anti-affinity through the scheduler's plan."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner, Result

from shoal import models as m
from shoal.cli.main import app
from shoal.compose import ComposeError, load, to_stack
from shoal.compose.rancher import KNOWN_KEYS
from shoal.orchestrator.testutils import make_node, make_store
from shoal.scheduler import plan

# The seed's dockercoins files (busybox standing in for its images).
DOCKER_COMPOSE = """\
version: "2"
services:
  rng:
    image: busybox:latest
    ports:
      - "8001:80"
    labels:
      io.rancher.scheduler.affinity:container_label_ne: io.rancher.stack_service.name=${stack_name}/${service_name}
  hasher:
    image: busybox:latest
    ports:
      - "8002:80"
    mem_limit: 104857600
    mem_reservation: 52428800
  webui:
    image: busybox:latest
    ports:
      - "8000:80"
  redis:
    image: busybox:latest
  worker:
    image: busybox:latest
"""

RANCHER_COMPOSE = """\
version: '2'
services:
  webui:
    scale: 1
    start_on_create: true
  rng:
    scale: 3
    start_on_create: true
    health_check:
      healthy_threshold: 2
      response_timeout: 2000
      port: 80
      unhealthy_threshold: 3
      initializing_timeout: 60000
      interval: 2000
      strategy: recreate
      reinitializing_timeout: 60000
"""

AFFINITY = "io.rancher.scheduler.affinity:container_label_ne"


def project_files(tmp_path: Path, rancher: str = RANCHER_COMPOSE, compose: str = DOCKER_COMPOSE) -> tuple[Path, Path]:
    (tmp_path / "docker-compose.yml").write_text(compose)
    (tmp_path / "rancher-compose.yml").write_text(rancher)
    return tmp_path / "docker-compose.yml", tmp_path / "rancher-compose.yml"


def seed_stack(tmp_path: Path, name: str = "dockercoins") -> dict[str, m.ServiceSpec]:
    dc, rc = project_files(tmp_path)
    project = load([dc], env={}, project_name=name, rancher_file=rc)
    return to_stack(project, name).services


def test_seed_files_load_scale_health_and_the_self_affinity_label(tmp_path: Path) -> None:
    specs = seed_stack(tmp_path)
    rng = specs["rng"]
    assert rng.Mode.Replicated is not None and rng.Mode.Replicated.Replicas == 3
    assert specs["webui"].Mode.Replicated.Replicas == 1  # type: ignore[union-attr]
    assert rng.Labels is not None and rng.Labels["shoal.health.port"] == "80"
    assert rng.Labels["shoal.health.strategy"] == "recreate"
    labels = rng.TaskTemplate.ContainerSpec.Labels  # type: ignore[union-attr]
    assert labels is not None
    # ${stack_name}/${service_name} are Rancher's built-ins: the rule names the service itself...
    assert labels[AFFINITY] == "io.rancher.stack_service.name=dockercoins/rng"
    # ...and every task of the stack carries the label the rule looks for.
    assert labels["io.rancher.stack.name"] == "dockercoins"
    assert labels["io.rancher.stack_service.name"] == "dockercoins/rng"
    hasher = specs["hasher"].TaskTemplate.ContainerSpec.Labels  # type: ignore[union-attr]
    assert hasher is not None and hasher["io.rancher.stack_service.name"] == "dockercoins/hasher"


def test_self_anti_affinity_one_per_host_and_the_rest_wait_with_the_reason(tmp_path: Path) -> None:
    rng = seed_stack(tmp_path)["rng"]
    store = make_store()
    one = make_node(store, "rch-n1")
    res = plan(store, rng)
    assert [p.node_id for p in res] == [one.ID, None, None]
    assert res[1].reason == res[2].reason == (
        f"no suitable node ({AFFINITY}: io.rancher.stack_service.name=dockercoins/rng not satisfied on 1 node)")
    others = [make_node(store, f"rch-n{i}") for i in (2, 3)]
    res = plan(store, rng)
    assert sorted(p.node_id for p in res) == sorted(n.ID for n in (one, *others))  # type: ignore[type-var]


def test_stack_name_comes_from_p_then_the_file_name_then_the_folder(tmp_path: Path) -> None:
    compose = "services:\n  a:\n    image: busybox\n    environment:\n      WHO: ${stack_name}/${service_name}\n"
    f = tmp_path / "compose.yaml"
    f.write_text(compose)
    assert load([f], env={}, project_name="rchp").services["a"]["environment"]["WHO"] == "rchp/a"
    assert load([f], env={}).services["a"]["environment"]["WHO"] == f"{load([f], env={}).name}/a"
    f.write_text("name: rchtop\n" + compose)
    assert load([f], env={}).services["a"]["environment"]["WHO"] == "rchtop/a"
    # Outside a service ${service_name} is not set (and warns, like any unset variable).
    f.write_text("name: rchtop\nx-note: ${service_name}\n" + compose)
    p = load([f], env={})
    assert p.extensions["x-note"] == "" and any("service_name variable is not set" in w for w in p.warnings)


def test_v1_files_see_the_built_ins_too(tmp_path: Path) -> None:
    f = tmp_path / "docker-compose.yml"
    f.write_text("web:\n  image: busybox\n  labels:\n    me: ${stack_name}/${service_name}\n")
    assert load([f], env={}, project_name="rchv1").services["web"]["labels"]["me"] == "rchv1/web"


def test_upgrade_strategy_retain_ip_and_lb_config(tmp_path: Path) -> None:
    compose = DOCKER_COMPOSE + "  lb:\n    image: rancher/lb-service-haproxy:v0.7.9\n"
    rancher = """\
version: '2'
services:
  rng:
    retain_ip: true
    upgrade_strategy:
      start_first: true
      batch_size: 2
      interval_millis: 500
  lb:
    lb_config:
      port_rules:
        - source_port: 9000
          target_port: 80
          service: worker
          protocol: http
"""
    dc, rc = project_files(tmp_path, rancher, compose)
    project = load([dc], env={}, project_name="rchlb", rancher_file=rc)
    specs = to_stack(project, "rchlb").services
    upd = specs["rng"].UpdateConfig
    assert upd is not None and (upd.Parallelism, upd.Delay, upd.Order) == (2, 500_000_000, "start-first")
    assert any("retain_ip" in w and "rancher-compose.yml:4" in w for w in project.warnings)
    # The balancer is the routing mesh: the target publishes the port, the haproxy service is not run.
    assert "lb" not in specs
    ports = specs["worker"].EndpointSpec.Ports  # type: ignore[union-attr]
    assert ports is not None and [(p.PublishedPort, p.TargetPort, p.Protocol) for p in ports] == [(9000, 80, "tcp")]


@pytest.mark.parametrize(("rancher", "line", "key", "fragment"), [
    ("version: '2'\nservices:\n  rng:\n    scale: 3\n    metadata: {a: 1}\n", 5, "services.rng.metadata",
     "unsupported key 'metadata'"),
    ("version: '2'\nservices:\n  nope:\n    scale: 1\n", 3, "services.nope", "not in the Compose files"),
    ("version: '2'\nservices:\n  rng:\n    scale: three\n", 4, "services.rng.scale", "must be an integer"),
    ("version: '2'\nservices:\n  rng:\n    start_on_create: maybe\n", 4, "services.rng.start_on_create",
     "true or false"),
    ("version: '2'\nservices:\n  rng:\n    upgrade_strategy: {batch: 1}\n", 4,
     "services.rng.upgrade_strategy.batch", "unsupported key 'batch'"),
    ("version: '2'\nservices:\n  rng:\n    health_check: {port: 80, bogus: 1}\n", 4, "services.rng.health_check",
     "unsupported key 'bogus'"),
    ("version: '2'\nservices:\n  rng:\n    lb_config:\n      port_rules:\n        - source_port: 80\n"
     "          target_port: 80\n          service: worker\n          hostname: a.example\n", 9,
     "services.rng.lb_config.port_rules[0].hostname", "L7 proxy"),
    ("version: '2'\n.catalog: {name: x}\nservices: {}\n", 2, ".catalog", "unsupported key '.catalog'"),
    ("rng:\n  scale: 2\n  metadata: {}\n", 3, "rng.metadata", "unsupported key"),
])
def test_bad_rancher_files_name_file_line_and_key(tmp_path: Path, rancher: str, line: int, key: str,
                                                 fragment: str) -> None:
    dc, rc = project_files(tmp_path, rancher)
    with pytest.raises(ComposeError) as e:
        load([dc], env={}, project_name="rchbad", rancher_file=rc)
    assert (e.value.file, e.value.line, e.value.key) == (rc, line, key)
    assert fragment in e.value.message
    assert str(e.value).startswith(f"{rc}:{line}: {key}: ")


# --------------------------------------------------------------------------- shoal compose (no daemon)


def cli(*args: str, cwd: Path | None = None) -> Result:
    # No daemon: what the files say is printed or refused before any request is made.
    old = Path.cwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        return CliRunner().invoke(app, ["-H", "unix:///nonexistent/shoal.sock", *args],
                                  env={"SHOAL_HOST": None, "DOCKER_HOST": None})
    finally:
        os.chdir(old)


def test_global_options_before_the_subcommand_and_the_files_found_here(tmp_path: Path) -> None:
    project_files(tmp_path)
    # Found in the working directory, rancher-compose.yml beside it merged in, -p names the stack.
    out = cli("compose", "-p", "dockercoins", "config", cwd=tmp_path)
    assert out.exit_code == 0, out.output
    cfg = yaml.safe_load(out.stdout)
    assert cfg["name"] == "dockercoins" and cfg["services"]["rng"]["deploy"]["replicas"] == 3
    assert cfg["services"]["rng"]["labels"][AFFINITY] == "io.rancher.stack_service.name=dockercoins/rng"
    # --project-directory from elsewhere; --env-file instead of .env; -f repeatable (later files win).
    (tmp_path / "rch.env").write_text("TAG=1.29\n")
    (tmp_path / "override.yml").write_text("services:\n  worker:\n    image: busybox:${TAG}\n")
    out = cli("compose", "--project-directory", str(tmp_path), "--env-file", str(tmp_path / "rch.env"),
              "-f", str(tmp_path / "docker-compose.yml"), "-f", str(tmp_path / "override.yml"), "-p", "rchx",
              "config")
    assert out.exit_code == 0, out.output
    cfg = yaml.safe_load(out.stdout)
    assert cfg["services"]["worker"]["image"] == "busybox:1.29" and cfg["services"]["rng"]["deploy"]["replicas"] == 3
    assert cli("compose", "config", "--services", cwd=tmp_path).stdout.split() == [
        "rng", "hasher", "webui", "redis", "worker"]
    # -r names another rancher file; a bad one is one line with its file, line and key.
    (tmp_path / "other.yml").write_text("version: '2'\nservices:\n  rng:\n    scale: 2\n    metadata: {}\n")
    out = cli("compose", "-r", str(tmp_path / "other.yml"), "config", "-q", cwd=tmp_path)
    assert out.exit_code == 1 and "Traceback" not in out.output
    assert out.stderr == f"{tmp_path / 'other.yml'}:5: services.rng.metadata: unsupported key 'metadata' " \
                         f"(Shoal maps {', '.join(KNOWN_KEYS)})\n"


def test_no_file_and_bad_arguments_are_one_line_errors(tmp_path: Path) -> None:
    out = cli("compose", "ps", cwd=tmp_path)
    assert out.exit_code == 1 and out.stderr.startswith("no configuration file provided: not found")
    assert len(out.stderr.splitlines()) == 1
    out = cli("compose", "--env-file", str(tmp_path / "nope.env"), "-p", "rchx", "config", cwd=tmp_path)
    assert out.exit_code == 1
    project_files(tmp_path)
    out = cli("compose", "--env-file", str(tmp_path / "nope.env"), "config", cwd=tmp_path)
    assert out.exit_code == 1 and out.stderr == f"{tmp_path / 'nope.env'}: couldn't find env file\n"
    out = cli("compose", "-p", "rchx", "scale", "rng=three", cwd=tmp_path)
    assert out.exit_code == 2 and "expected SERVICE=REPLICAS" in out.stderr
    out = cli("compose", "-p", "rchx", "upgrade", "rng", "--batch-size", "0", cwd=tmp_path)
    assert out.exit_code == 2 and "Traceback" not in out.output


def test_rancher_global_label_makes_a_global_service(tmp_path: Path) -> None:
    compose = ("version: '2'\nservices:\n  agent:\n    image: busybox\n    labels:\n"
               "      io.rancher.scheduler.global: 'true'\n  other:\n    image: busybox\n    labels: [a=b]\n")
    dc, rc = project_files(tmp_path, "version: '2'\nservices:\n  other:\n    scale: 2\n", compose)
    specs = to_stack(load([dc], env={}, project_name="rchg", rancher_file=rc), "rchg").services
    assert specs["agent"].Mode.Global is not None and specs["agent"].Mode.Replicated is None
    assert specs["other"].Mode.Replicated is not None and specs["other"].Mode.Replicated.Replicas == 2
