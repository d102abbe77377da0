"""Store faults on a real daemon: a full disk, a crash right after an answer, rows that cannot be read.

The data root sits on a small tmpfs that the test fills for real; the daemon is killed with
SIGKILL; rows are corrupted in the sqlite file itself. Services have no replicas: this is about
the cluster state, not containers.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from shoal.bench.scale import free_port_pair
from tests.integration.shoal_process import ShoalProcess

pytestmark = pytest.mark.integration


def init(client: docker.DockerClient) -> None:
    port = free_port_pair()  # not 2377: other tests' daemons may hold it
    client.swarm.init(listen_addr=f"127.0.0.1:{port}", advertise_addr="127.0.0.1")


def create(client: docker.DockerClient, name: str) -> str:
    return str(client.api.create_service(docker.types.TaskTemplate(docker.types.ContainerSpec("busybox:latest")),
                                         name=name, mode=docker.types.ServiceMode("replicated", replicas=0))["ID"])


def names(client: docker.DockerClient) -> set[str]:
    return {s["Spec"]["Name"] for s in client.api.services()}


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "d"
    (root / "data").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "shoal-test-disk", str(root / "data")], check=True)
    try:
        yield root
    finally:
        subprocess.run(["umount", "-l", str(root / "data")], check=False)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[ShoalProcess]:
    proc = ShoalProcess(tmp_path / "d")
    proc.root.mkdir(parents=True, exist_ok=True)
    yield proc
    proc.stop()


def fill(path: Path) -> None:
    """Write zeros until the file system says it is full."""
    with open(path, "wb") as f, contextlib.suppress(OSError):
        chunk = b"\0" * (1 << 20)
        while True:
            f.write(chunk)
            f.flush()
            os.fsync(f.fileno())


def test_a_full_disk_refuses_writes_clearly_and_loses_nothing(small_disk: Path) -> None:
    proc = ShoalProcess(small_disk)
    proc.start()
    try:
        client = proc.client()
        init(client)
        create(client, "before")
        fill(small_disk / "data" / "filler")
        # The disk is full: the write that hits it is answered 503 with the reason (it is not
        # lost: it stays queued), and so is the next one; reads keep working.
        errors: list[str] = []
        for name in ("during-1", "during-2"):
            with pytest.raises(docker.errors.APIError) as err:
                create(client, name)
            assert err.value.status_code == 503
            errors.append(err.value.explanation or "")
        assert all("not accepting writes" in e and "full" in e for e in errors), errors
        assert "before" in names(client)
        warnings = client.info()["Warnings"] or []
        assert any("changes are not durable yet" in w for w in warnings), warnings
        # Room again: the queued write lands on the writer's next retry (back-off at most 5 s), and
        # new writes are accepted.
        (small_disk / "data" / "filler").unlink()
        deadline = time.monotonic() + 15
        while True:
            try:
                create(client, "after")
                break
            except docker.errors.APIError as e:
                assert e.status_code == 503 and time.monotonic() < deadline, e
                time.sleep(0.5)
        assert not [w for w in client.info()["Warnings"] or [] if "cluster store" in w]
        # A crash right after the answer: everything answered (and the write that got 503 but was
        # kept) is there after a restart.
        proc.stop(signal.SIGKILL)
        proc.start()
        assert {"before", "during-1", "after"} <= names(proc.client())
    finally:
        proc.stop()


def test_rows_that_cannot_be_read_are_reported_and_the_daemon_still_serves(daemon: ShoalProcess) -> None:
    daemon.start()
    client = daemon.client()
    init(client)
    keep = create(client, "keep")
    broken = create(client, "broken")
    daemon.stop()
    db = sqlite3.connect(daemon.data / "state.db")
    db.execute("UPDATE objects SET data=x'c1' WHERE kind='service' AND id=?", (broken,))
    db.commit()
    db.close()
    daemon.start()
    client = daemon.client()
    assert names(client) == {"keep"} and client.services.get(keep).name == "keep"
    warnings = client.info()["Warnings"] or []
    assert any(f"service {broken}: cannot be decoded" in w for w in warnings), warnings
    create(client, "new")  # the swarm carries on
    # The cluster object itself unreadable: the daemon starts, says why, and stays in its swarm.
    daemon.stop()
    db = sqlite3.connect(daemon.data / "state.db")
    db.execute("UPDATE objects SET data=x'c1' WHERE kind='cluster'")
    db.commit()
    db.close()
    daemon.start()
    client = daemon.client()
    swarm = client.info()["Swarm"]
    assert swarm["LocalNodeState"] == "error" and "could not be read" in swarm["Error"], swarm
    with pytest.raises(docker.errors.APIError) as err:
        client.api.services()
    assert err.value.status_code == 503 and "could not be read" in (err.value.explanation or "")
    assert (daemon.data / "node.json").exists()  # not silently out of the swarm
