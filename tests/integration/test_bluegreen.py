"""Blue-green releases on the real engine, observed through a published port.

v1 and v2 are busybox httpd serving a page that says which version they are. A poller reads the
published port every 20 ms for the whole test, so "v1 keeps answering" and "then only v2" are
measured, not assumed.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path

import docker
import pytest
import requests

from tests.integration.conftest import shoal_cli, wait_for
from tests.integration.shoal_process import ShoalProcess

V1 = "mkdir -p /www && echo v1 > /www/index.html && exec httpd -f -p 80 -h /www"
# The first v2 container is healthy at once; the second only after 3 s (mkdir is atomic on the shared
# directory). So for ~3 s one new task is RUNNING beside the old ones: the window to prove that a
# running new task gets no traffic before the switch.
V2 = (
    "mkdir -p /www && echo v2 > /www/index.html && "
    "if mkdir /shared/first 2>/dev/null; then touch /tmp/ok; else (sleep 3; touch /tmp/ok) & fi; "
    "exec httpd -f -p 80 -h /www"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Poller:
    """Reads the published port in a thread: (monotonic time, body or 'ERR: ...')."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/"
        self.seen: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        s = requests.Session()
        while not self._stop.is_set():
            try:
                body = s.get(self.url, timeout=2, headers={"Connection": "close"}).text.strip()
            except requests.RequestException as e:
                body = f"ERR: {type(e).__name__}"
            self.seen.append((time.monotonic(), body))
            time.sleep(0.02)

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def between(self, start: float, end: float) -> list[str]:
        return [b for t, b in list(self.seen) if start <= t <= end]


def _get(port: int) -> str | None:
    with contextlib.suppress(requests.RequestException):
        return requests.get(f"http://127.0.0.1:{port}/", timeout=2).text.strip()
    return None


def _tasks(client: docker.DockerClient, name: str) -> list[dict]:
    return client.api.tasks(filters={"service": name})


def _running(client: docker.DockerClient, name: str, word: str) -> list[dict]:
    """Running tasks whose command mentions ``word`` (v1 / v2)."""
    return [
        t for t in _tasks(client, name)
        if t["Status"]["State"] == "running" and word in " ".join(t["Spec"]["ContainerSpec"].get("Args") or [])
    ]


def _status(client: docker.DockerClient, name: str) -> dict:
    return client.api.inspect_service(name).get("UpdateStatus") or {}


@pytest.fixture
def v1_service(swarm: docker.DockerClient, shoal: ShoalProcess) -> tuple[str, int]:
    port = _free_port()
    shoal_cli(shoal, "service", "create", "-d", "--name", "bg", "--replicas", "2", "--publish", f"{port}:80",
              "--stop-grace-period", "1s", "--strategy", "blue-green", "busybox:latest", "sh", "-c", V1)
    wait_for(lambda: len(_running(swarm, "bg", "v1")) == 2, timeout=20)
    wait_for(lambda: _get(port) == "v1", timeout=10)
    return "bg", port


def test_blue_green_switch(swarm: docker.DockerClient, shoal: ShoalProcess, v1_service: tuple[str, int],
                           tmp_path: Path) -> None:
    name, port = v1_service
    shared = tmp_path / "shared"
    shared.mkdir()
    old = {t["ID"] for t in _running(swarm, name, "v1")}
    with Poller(port) as poll:
        time.sleep(0.3)
        shoal_cli(shoal, "service", "update", "-d", "--strategy", "blue-green", "--args", f"sh -c '{V2}'",
                  "--mount-add", f"type=bind,source={shared},target=/shared",
                  "--health-cmd", "test -f /tmp/ok", "--health-interval", "200ms", "--health-start-period", "20s",
                  name)
        # Full scale side by side: one v2 task runs (healthy) while the other is still starting, and
        # both v1 tasks still run.
        wait_for(lambda: len(_running(swarm, name, "v2")) >= 1, timeout=20)
        window_start = time.monotonic()
        assert {t["ID"] for t in _running(swarm, name, "v1")} == old
        assert _status(swarm, name).get("State") == "updating"
        time.sleep(1.0)
        assert len(_running(swarm, name, "v2")) == 1, "the late v2 task was meant to be still starting"
        window_end = time.monotonic()

        wait_for(lambda: _status(swarm, name).get("State") == "completed", timeout=20)
        switched = time.monotonic()
        # The old tasks stop (stop grace 1 s) and the port answers v2 only.
        wait_for(lambda: all(t["Status"]["State"] == "shutdown" for t in _tasks(swarm, name) if t["ID"] in old),
                 timeout=15)
        stopped = time.monotonic()
        time.sleep(0.5)
        end = time.monotonic()

    in_window = poll.between(window_start, window_end)
    assert len(in_window) >= 10 and set(in_window) == {"v1"}, in_window
    before_switch = [b for t, b in poll.seen if t < switched - 0.5]
    assert set(before_switch) == {"v1"}, set(before_switch)  # never v2 (nor an error) before the switch
    after = poll.between(stopped, end)
    assert after and set(after) == {"v2"}, after
    errors = [b for _, b in poll.seen if b.startswith("ERR")]
    assert not errors, errors
    assert len(_running(swarm, name, "v2")) == 2
    assert _running(swarm, name, "v1") == []
    assert "blue-green" in _status(swarm, name)["Message"]


def test_failed_blue_green_leaves_v1_serving(swarm: docker.DockerClient, shoal: ShoalProcess,
                                            v1_service: tuple[str, int]) -> None:
    """Through the docker CLI: the strategy as a label, and an image tag that does not exist."""
    name, port = v1_service
    version = swarm.api.inspect_service(name)["Version"]["Index"]
    bad = shoal.docker_cli("service", "update", "-d", "--label-add", "shoal.update-strategy=purple", name, check=False)
    assert bad.returncode != 0 and "unknown update strategy 'purple'" in bad.stderr, bad.stderr
    assert swarm.api.inspect_service(name)["Version"]["Index"] == version  # a 400 changes nothing
    old = {t["ID"] for t in _running(swarm, name, "v1")}
    with Poller(port) as poll:
        time.sleep(0.3)
        start = time.monotonic()
        shoal.docker_cli("service", "update", "-d", "--no-resolve-image", "--image", "busybox:no-such-tag-bg", name)
        wait_for(lambda: _status(swarm, name).get("State") == "rollback_completed", timeout=30)
        time.sleep(1.0)
        end = time.monotonic()

    assert set(poll.between(start, end)) == {"v1"}
    status = _status(swarm, name)
    assert "blue-green release failed" in status["Message"] and "rejected" in status["Message"], status
    spec = swarm.api.inspect_service(name)["Spec"]
    assert spec["TaskTemplate"]["ContainerSpec"]["Image"].startswith("busybox:latest")
    assert spec["Labels"]["shoal.update-strategy"] == "blue-green"
    assert {t["ID"] for t in _running(swarm, name, "v1")} == old  # the old tasks never stopped
    bad = [t for t in _tasks(swarm, name) if "no-such-tag" in t["Spec"]["ContainerSpec"]["Image"]]
    assert bad and all(t["DesiredState"] == "shutdown" for t in bad)
    # Shoal's CLI, waiting (no -d), reports the failure instead of waiting for ever.
    res = shoal_cli(shoal, "service", "update", "--image", "busybox:no-such-tag-bg2", name, check=False)
    assert res.returncode != 0 and "blue-green release failed" in res.stderr, res.stderr
    assert {t["ID"] for t in _running(swarm, name, "v1")} == old
