"""Fixtures: a real shoal daemon driving the machine's real dockerd."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest

from tests.integration.shoal_process import MESH_NAME, ShoalProcess
from tests.integration.transport_env import listen_addr


@pytest.fixture(scope="package", autouse=True)
def own_mesh_tables() -> Iterator[None]:
    """Daemons and agents of these tests run in this host's network namespace, where the demo
    daemon of setup.sh may run too: they keep their kernel mesh in `table inet shoal-test` (and
    their own VIP device and DOCKER-USER rule), so neither side rebuilds or removes the other's."""
    old = os.environ.get("SHOAL_MESH_NAME")
    os.environ["SHOAL_MESH_NAME"] = MESH_NAME
    yield
    if old is None:
        os.environ.pop("SHOAL_MESH_NAME", None)
    else:
        os.environ["SHOAL_MESH_NAME"] = old


@pytest.fixture(scope="session")
def shoal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShoalProcess]:
    """One daemon for the session, not yet in a swarm."""
    proc = ShoalProcess(tmp_path_factory.mktemp("shoal"))
    proc.start()
    yield proc
    try:
        proc.client().swarm.leave(force=True)
    except docker.errors.APIError:
        pass
    proc.stop()


@pytest.fixture
def swarm(shoal: ShoalProcess) -> Iterator[docker.DockerClient]:
    """A fresh one-node swarm for each test; leaving it removes every task's container."""
    client = shoal.client()
    client.swarm.init(advertise_addr="127.0.0.1", listen_addr=listen_addr())
    yield client
    client.swarm.leave(force=True)


def wait_for(predicate: Callable[[], object], timeout: float = 30.0, interval: float = 0.2) -> object:
    """Poll until ``predicate`` returns something truthy; fail with its last value."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last: {last!r})")


def shoal_cli(shoal: ShoalProcess, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run Shoal's own CLI (the console script next to this Python) against the daemon."""
    exe = str(Path(sys.executable).with_name("shoal"))
    res = subprocess.run([exe, "-H", shoal.host, *args], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "COLUMNS": "200"})
    if check and res.returncode != 0:
        raise AssertionError(f"shoal {' '.join(args)} failed ({res.returncode}): {res.stderr}")
    return res


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a daemon's -H or --metrics-addr)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def leave_and_stop(proc: ShoalProcess) -> None:
    """A module's own daemon at teardown: out of its swarm (its containers go), then stopped."""
    try:
        proc.client().swarm.leave(force=True)
    except docker.errors.APIError:
        pass
    proc.stop()
