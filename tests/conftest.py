"""Shared test configuration."""

from __future__ import annotations

import os
import shutil

import pytest

DOCKER_SOCK = "/var/run/docker.sock"


def engine_available() -> bool:
    return os.path.exists(DOCKER_SOCK) and shutil.which("docker") is not None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Integration tests need a real dockerd; say so clearly instead of failing obscurely."""
    if engine_available():
        return
    skip = pytest.mark.skip(reason="no dockerd at /var/run/docker.sock (scripts/start-dockerd.sh starts one)")
    for item in items:
        if "integration" in item.keywords:
            item.add_marker(skip)
