"""Autoscaling in Compose files: ``x-shoal-autoscale`` and the seed's Aliyun labels become the
service's policy labels; a bad value names the file's line and the Compose key."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal import models as m
from shoal.compose import ComposeError, load, to_service_specs
from shoal.extensions import parse_autoscale


def specs(tmp_path: Path, text: str) -> dict[str, m.ServiceSpec]:
    f = tmp_path / "compose.yml"
    f.write_text(text)
    return to_service_specs(load([f], env={}), "app")


def test_the_extension_becomes_labels(tmp_path: Path) -> None:
    out = specs(tmp_path, "services:\n  web:\n    image: busybox\n    x-shoal-autoscale:\n"
                          "      min: 2\n      max: 6\n      cpu-target: 70\n      cooldown: 1m\n")
    labels = out["web"].Labels or {}
    assert {k: v for k, v in labels.items() if k.startswith("shoal.autoscale.")} == {
        "shoal.autoscale.min": "2", "shoal.autoscale.max": "6", "shoal.autoscale.cpu-target": "70",
        "shoal.autoscale.cooldown": "1m"}
    p = parse_autoscale(labels)
    assert p is not None and (p.min_replicas, p.max_replicas, p.cooldown_s) == (2, 6, 60.0)


def test_the_seeds_aliyun_labels_reach_the_service(tmp_path: Path) -> None:
    """Numbers as label values, as the seed writes them (docker-compose 1.29 takes them too)."""
    out = specs(tmp_path, 'version: "3.0"\nservices:\n  nginx:\n    image: busybox\n    labels:\n'
                          "      aliyun.auto_scaling.max_cpu: 70\n      aliyun.auto_scaling.step: 2\n")
    p = parse_autoscale(out["nginx"].Labels)
    assert p is not None and (p.cpu_high, p.step, p.source) == (70.0, 2, "aliyun")


@pytest.mark.parametrize(("body", "line", "fragment"), [
    ("    x-shoal-autoscale:\n      max: 3\n", 4, "needs cpu-target or memory-target"),
    ("    x-shoal-autoscale:\n      max: 3\n      cpu_target: 5\n", 4, "unsupported key 'cpu_target'"),
    ("    x-shoal-autoscale: 3\n", 4, "must be a mapping"),
    ("    labels:\n      aliyun.auto_scaling.max_cpu: hot\n", 4, "expected a percentage"),
])
def test_bad_values_name_the_line(tmp_path: Path, body: str, line: int, fragment: str) -> None:
    with pytest.raises(ComposeError) as e:
        specs(tmp_path, "services:\n  web:\n    image: busybox\n" + body)
    assert f"compose.yml:{line}" in str(e.value) and fragment in str(e.value)
