"""A manager whose store is etcd (``shoal swarm init --store etcd``), on the machine's dockerd: Shoal
runs the etcd member, the manager leads it, services run, and the state survives a clean restart
and a crash (the member outlives the daemon; the new term waits out the old lease). The last
manager's ``swarm leave --force`` erases the swarm and stops the member."""

from __future__ import annotations

import os
import shutil
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.integration.conftest import shoal_cli, wait_for
from tests.integration.shoal_process import ShoalProcess

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(shutil.which("etcd") is None, reason="etcd-server is not installed")]

COMMAND = ["sleep", "600"]


def free_ports(n: int) -> list[int]:
    """``n`` consecutive free ports (the member's client port and, next to it, its peer port)."""
    for _ in range(50):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        base = s.getsockname()[1]
        s.close()
        ok = True
        for p in range(base, base + n):
            t = socket.socket()
            try:
                t.bind(("127.0.0.1", p))
            except OSError:
                ok = False
            finally:
                t.close()
        if ok:
            return list(range(base, base + n))
    raise RuntimeError("no free ports")


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[ShoalProcess]:
    proc = ShoalProcess(tmp_path)
    proc.start()
    yield proc
    try:
        if proc.proc is None or proc.proc.poll() is not None:
            proc.start()
        proc.client().swarm.leave(force=True)
    except (docker.errors.APIError, RuntimeError):
        pass
    proc.stop()
    pidfile = proc.data / "etcd.pid"  # a member left behind by a failed test: ours, stop it
    if pidfile.exists():
        pid = int(pidfile.read_text())
        if f"--data-dir={proc.data / 'etcd'}".encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
            os.kill(pid, signal.SIGKILL)


def running(client: docker.DockerClient, name: str) -> list[dict]:
    return [t for t in client.api.tasks(filters={"service": name})
            if t["DesiredState"] == "running" and t["Status"]["State"] == "running"]


def test_a_manager_on_etcd_survives_restarts(manager: ShoalProcess) -> None:
    client_port, _peer, listen = free_ports(3)
    shoal_cli(manager, "swarm", "init", "--advertise-addr", "127.0.0.1", "--listen-addr", f"127.0.0.1:{listen}",
              "--store", "etcd", "--etcd-port", str(client_port))
    member_pid = int((manager.data / "etcd.pid").read_text())
    client = manager.client()
    (me,) = client.nodes.list()
    assert me.attrs["ManagerStatus"]["Leader"] is True
    info = client.info()["Swarm"]
    assert info["LocalNodeState"] == "active" and info["ControlAvailable"] is True

    client.services.create("busybox:latest", COMMAND, name="etcdweb", mode={"Replicated": {"Replicas": 2}},
                           stop_grace_period=10**9)
    wait_for(lambda: len(running(client, "etcdweb")) == 2)
    before = {t["ID"] for t in running(client, "etcdweb")}

    # A clean restart: the member stops and starts with the daemon; the state comes back from etcd
    # and the running tasks are adopted, not started again.
    manager.stop()
    manager.start()
    client = manager.client()
    wait_for(lambda: client.info()["Swarm"]["LocalNodeState"] == "active")
    wait_for(lambda: {t["ID"] for t in running(client, "etcdweb")} == before, timeout=30)
    assert client.nodes.list()[0].attrs["ManagerStatus"]["Leader"] is True

    # A crash: the member outlives the daemon (adopted through its PID file); the restarted manager
    # waits for the dead leader's lease to expire, then leads again and accepts writes.
    manager.stop(signal.SIGKILL)
    manager.start()
    client = manager.client()
    wait_for(lambda: client.info()["Swarm"]["LocalNodeState"] == "active")
    svc = client.services.get("etcdweb")
    wait_for(lambda: _try_scale(svc, 3), timeout=30)
    wait_for(lambda: len(running(client, "etcdweb")) == 3, timeout=30)
    assert before <= {t["ID"] for t in running(client, "etcdweb")}

    # The last manager leaves: the swarm is erased from etcd, the member stops, its data goes.
    client.swarm.leave(force=True)
    member_pid = int((manager.data / "etcd.pid").read_text()) if (manager.data / "etcd.pid").exists() else member_pid
    wait_for(lambda: not Path(f"/proc/{member_pid}").exists(), timeout=15)
    assert not (manager.data / "etcd").exists()
    assert client.info()["Swarm"]["LocalNodeState"] == "inactive"
    engine = docker.from_env()
    try:
        wait_for(lambda: not engine.containers.list(all=True, filters={"label": f"com.docker.swarm.node.id={me.id}"}))
    finally:
        engine.close()


def _try_scale(svc: object, n: int) -> bool:
    try:
        svc.reload()  # type: ignore[attr-defined]
        svc.scale(n)  # type: ignore[attr-defined]
        return True
    except docker.errors.APIError as e:
        if e.status_code == 503:  # no leader yet: the old lease has not expired
            return False
        raise


def test_init_on_an_unreachable_etcd_fails_cleanly(manager: ShoalProcess) -> None:
    port, listen = free_ports(2)
    res = shoal_cli(manager, "swarm", "init", "--advertise-addr", "127.0.0.1",
                    "--etcd-endpoints", f"http://127.0.0.1:{port}", check=False)
    assert res.returncode != 0 and "etcd" in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert manager.client().info()["Swarm"]["LocalNodeState"] == "inactive"
    # Nothing half-made: a normal init works right after.
    shoal_cli(manager, "swarm", "init", "--advertise-addr", "127.0.0.1", "--listen-addr", f"127.0.0.1:{listen}")
    assert len(manager.client().nodes.list()) == 1


def test_a_single_managers_store_moves_to_etcd(manager: ShoalProcess) -> None:
    client_port, _peer, listen = free_ports(3)
    shoal_cli(manager, "swarm", "init", "--advertise-addr", "127.0.0.1", "--listen-addr", f"127.0.0.1:{listen}")
    client = manager.client()
    client.services.create("busybox:latest", COMMAND, name="etcdweb", stop_grace_period=10**9)
    wait_for(lambda: len(running(client, "etcdweb")) == 1)
    before = {t["ID"] for t in running(client, "etcdweb")}

    # The daemon is stopped, its state moves, and a second move is refused.
    manager.stop()
    res = shoal_cli(manager, "store", "migrate", "--data-root", str(manager.data), "--etcd-port", str(client_port))
    assert "Moved" in res.stdout and "state.db.migrated" in res.stdout, res.stdout
    again = shoal_cli(manager, "store", "migrate", "--data-root", str(manager.data), check=False)
    assert again.returncode != 0 and "on etcd already" in again.stderr, again.stderr

    manager.start()
    client = manager.client()
    wait_for(lambda: client.info()["Swarm"]["LocalNodeState"] == "active")
    wait_for(lambda: {t["ID"] for t in running(client, "etcdweb")} == before, timeout=30)
    assert (manager.data / "etcd").is_dir() and (manager.data / "state.db.migrated").exists()
    assert client.nodes.list()[0].attrs["ManagerStatus"]["Leader"] is True
    svc = client.services.get("etcdweb")
    svc.scale(2)
    wait_for(lambda: len(running(client, "etcdweb")) == 2, timeout=30)
