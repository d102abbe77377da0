"""Rancher's ``health_check:`` and ``x-shoal-healthcheck`` in Compose files → ``shoal.health.*`` labels."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.compose import ComposeError, load, to_service_specs

DOCKER_COMPOSE_V2 = """\
version: '2'
services:
  web:
    image: busybox
    command: httpd -f -p 80
"""

RANCHER_COMPOSE = """\
version: '2'
services:
  web:
    health_check:
      port: 80
      request_line: GET /healthz HTTP/1.0
      interval: 2000
      response_timeout: 2000
      healthy_threshold: 2
      unhealthy_threshold: 3
      initializing_timeout: 60000
      reinitializing_timeout: 60000
      strategy: recreate
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_rancher_compose_file_beside_docker_compose(tmp_path: Path) -> None:
    files = [write(tmp_path, "docker-compose.yml", DOCKER_COMPOSE_V2), write(tmp_path, "rancher-compose.yml",
                                                                              RANCHER_COMPOSE)]
    spec = to_service_specs(load(files, env={}), "app")["web"]
    assert {k: v for k, v in (spec.Labels or {}).items() if k.startswith("shoal.health.")} == {
        "shoal.health.port": "80",
        "shoal.health.request-line": "GET /healthz HTTP/1.0",
        "shoal.health.interval": "2000",
        "shoal.health.response-timeout": "2000",
        "shoal.health.healthy-threshold": "2",
        "shoal.health.unhealthy-threshold": "3",
        "shoal.health.initializing-timeout": "60000",
        "shoal.health.reinitializing-timeout": "60000",
        "shoal.health.strategy": "recreate",
    }


def test_v1_file_and_tcp_check(tmp_path: Path) -> None:
    text = "web:\n  image: busybox\n  health_check:\n    port: 6379\n    request_line: ''\n    interval: 2000\n"
    spec = to_service_specs(load([write(tmp_path, "docker-compose.yml", text)], env={}), "app")["web"]
    labels = spec.Labels or {}
    assert labels["shoal.health.port"] == "6379" and labels["shoal.health.interval"] == "2000"
    assert "shoal.health.request-line" not in labels


def test_extension_key_with_go_durations(tmp_path: Path) -> None:
    text = (
        "services:\n  web:\n    image: busybox\n    x-shoal-healthcheck:\n      port: 8080\n"
        "      interval: 500ms\n      strategy: none\n"
    )
    spec = to_service_specs(load([write(tmp_path, "compose.yml", text)], env={}), "app")["web"]
    labels = spec.Labels or {}
    assert (labels["shoal.health.port"], labels["shoal.health.interval"]) == ("8080", "500ms")
    assert labels["shoal.health.strategy"] == "none"


@pytest.mark.parametrize(
    ("check", "fragment"),
    [
        ("      port: 80\n      strategy: recreateOnQuorum\n", "compose.yml:5: services.web.health_check: strategy="),
        ("      interval: 2000\n", "port is required"),
        ("      port: 80\n      retries: 3\n", "unsupported key 'retries'"),
        ("      port: 80\n      request_line: /healthz\n", "request_line='/healthz'"),
    ],
)
def test_bad_checks_name_file_line_and_key(tmp_path: Path, check: str, fragment: str) -> None:
    text = f"version: '3.8'\nservices:\n  web:\n    image: busybox\n    health_check:\n{check}"
    with pytest.raises(ComposeError) as exc:
        load([write(tmp_path, "compose.yml", text)], env={})
    assert fragment in str(exc.value)


def test_both_keys_are_refused(tmp_path: Path) -> None:
    text = (
        "services:\n  web:\n    image: busybox\n    health_check:\n      port: 80\n"
        "    x-shoal-healthcheck:\n      port: 81\n"
    )
    with pytest.raises(ComposeError, match="use either health_check or x-shoal-healthcheck"):
        load([write(tmp_path, "compose.yml", text)], env={})
