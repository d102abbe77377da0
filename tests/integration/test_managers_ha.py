"""Three managers on etcd, one machine: three daemons (own sockets, data roots, listen and etcd
ports, ``--hostname``) on the machine's dockerd, each running its own etcd member.

Joined with the manager token, each manager's member joins the etcd cluster (as a learner, then a
voter), its view follows the leader's, its agent reaches the leader over gRPC, and `node ls` on any
of them shows one Leader. Killing the leader's daemon elects another within the lease's TTL; the
service keeps exactly its replicas, writes work through a surviving manager, and the old leader
comes back as a follower."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from shoal.store.autolock import parse_human_key, unwrap
from tests.integration.conftest import shoal_cli, wait_for
from tests.integration.shoal_process import ShoalProcess
from tests.integration.test_manager_etcd import free_ports

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(shutil.which("etcd") is None, reason="etcd-server is not installed")]


class Mgr:
    def __init__(self, root: Path, n: int) -> None:
        self.n = n
        self.listen, self.etcd = free_ports(3)[0], free_ports(2)[0]
        self.proc = ShoalProcess(root / f"m{n}", args=("--hostname", f"mgr-{n}", "--advertise-addr", "127.0.0.1"))
        self.proc.root.mkdir(parents=True, exist_ok=True)

    def client(self) -> docker.DockerClient:
        return self.proc.client()

    def cli(self, *args: str, check: bool = True):
        return shoal_cli(self.proc, *args, check=check)

    def leader(self) -> bool:
        try:
            me = self.client().info()["Swarm"]["NodeID"]
            return any(n.id == me and n.attrs["ManagerStatus"]["Leader"] for n in self.client().nodes.list())
        except docker.errors.APIError:
            return False


@contextlib.contextmanager
def running_managers(tmp_path: Path, count: int) -> Iterator[list[Mgr]]:
    """``count`` daemons started; afterwards killed with their etcd members and the test's containers."""
    ms = [Mgr(tmp_path, n) for n in range(1, count + 1)]
    for m in ms:
        m.proc.start()
    try:
        yield ms
    finally:
        for m in ms:
            m.proc.stop(signal.SIGKILL)
        engine = docker.from_env()
        for m in ms:
            for c in engine.containers.list(all=True, filters={"label": "com.docker.swarm.service.name=hasvc"}):
                c.remove(force=True)
            pidfile = m.proc.data / "etcd.pid"
            if pidfile.exists():
                pid = int(pidfile.read_text())
                cmdline = Path(f"/proc/{pid}/cmdline")
                if cmdline.exists() and f"--data-dir={m.proc.data / 'etcd'}".encode() in cmdline.read_bytes():
                    os.kill(pid, signal.SIGKILL)
        engine.close()


@pytest.fixture
def managers(tmp_path: Path) -> Iterator[list[Mgr]]:
    with running_managers(tmp_path, 3) as ms:
        yield ms


def running(client: docker.DockerClient, name: str) -> list[dict]:
    return [t for t in client.api.tasks(filters={"service": name})
            if t["DesiredState"] == "running" and t["Status"]["State"] == "running"]


def swarm_on_etcd(first: Mgr, *joiners: Mgr, role: str = "manager") -> list[str]:
    """``swarm init --store etcd`` on ``first``, the others join with the ``role`` token; returns
    what each join printed."""
    first.cli("swarm", "init", "--advertise-addr", "127.0.0.1", "--listen-addr", f"127.0.0.1:{first.listen}",
              "--store", "etcd", "--etcd-port", str(first.etcd))
    token = first.cli("swarm", "join-token", "-q", role).stdout.strip()
    return [m.cli("swarm", "join", f"127.0.0.1:{first.listen}", "--token", token, "--advertise-addr", "127.0.0.1",
                  "--listen-addr", f"127.0.0.1:{m.listen}", "--etcd-port", str(m.etcd)).stdout for m in joiners]


def test_three_managers_fail_over(managers: list[Mgr]) -> None:
    m1, m2, m3 = managers
    for out in swarm_on_etcd(m1, m2, m3):
        assert "as a manager" in out, out

    # Every manager sees the three nodes, all ready, with one leader (m1).
    def view(m: Mgr) -> list[tuple[str, bool, str]]:
        return sorted((n.attrs["Description"]["Hostname"] if False else n.id, n.attrs["ManagerStatus"]["Leader"],
                       n.attrs["Status"]["State"]) for n in m.client().nodes.list())

    for m in managers:
        wait_for(lambda m=m: len(view(m)) == 3 and all(state == "ready" for _, _, state in view(m)), timeout=40)
        assert sum(leader for _, leader, _ in view(m)) == 1
    assert m1.leader()

    # A service created through a follower (the write goes to the leader), 3 replicas: one on each
    # node (spread), all on the one dockerd; the follower reads its own write at once.
    m3.client().services.create("busybox:latest", ["sleep", "600"], name="hasvc",
                                mode={"Replicated": {"Replicas": 3}}, stop_grace_period=10**9)
    assert m3.client().services.get("hasvc").name == "hasvc"
    wait_for(lambda: len(running(m1.client(), "hasvc")) == 3, timeout=40)
    wait_for(lambda: len(running(m2.client(), "hasvc")) == 3)  # a follower's view: the same

    # The leader's daemon dies (and with it its agent; its etcd member lives on as a process of
    # its own, so etcd keeps all three members). Another manager leads within the lease's TTL.
    t0 = time.monotonic()
    m1.proc.stop(signal.SIGKILL)
    wait_for(lambda: m2.leader() or m3.leader(), timeout=30)
    elected_s = time.monotonic() - t0
    assert elected_s < 15, elected_s
    survivor = m2 if m2.leader() else m3
    # Writes work through a surviving manager; the dead node's task is replaced once it is Down.
    svc = survivor.client().services.get("hasvc")
    svc.scale(4)
    wait_for(lambda: len(running(survivor.client(), "hasvc")) == 4, timeout=60)
    slots = [t["Slot"] for t in running(survivor.client(), "hasvc")]
    assert sorted(slots) == [1, 2, 3, 4], slots

    # The old leader comes back, as a follower that sees the new state.
    m1.proc.start()
    wait_for(lambda: _try(lambda: len(running(m1.client(), "hasvc")) == 4), timeout=40)
    assert not m1.leader()
    assert sum(m.leader() for m in managers) == 1


def _try(fn) -> bool:
    try:
        return bool(fn())
    except docker.errors.APIError:
        return False


def member_pid(m: Mgr) -> int:
    return int((m.proc.data / "etcd.pid").read_text())


def test_losing_quorum_stops_writes_and_removes_nothing(managers: list[Mgr]) -> None:
    m1, m2, m3 = managers
    swarm_on_etcd(m1, m2, m3)
    client = m1.client()
    wait_for(lambda: all(n.attrs["Status"]["State"] == "ready" for n in client.nodes.list()), timeout=40)
    client.services.create("busybox:latest", ["sleep", "600"], name="hasvc", mode={"Replicated": {"Replicas": 3}},
                           stop_grace_period=10**9)
    wait_for(lambda: len(running(client, "hasvc")) == 3, timeout=40)
    tasks = {t["ID"] for t in running(client, "hasvc")}
    engine = docker.from_env()
    containers = {c.id for c in engine.containers.list(filters={"label": "com.docker.swarm.service.name=hasvc"})}
    assert len(containers) == 3

    # Two of the three etcd members stop answering: no quorum. The leader steps down; a write gets
    # Docker's 503, on any manager; the containers keep running.
    stopped = [member_pid(m) for m in (m2, m3)]
    for pid in stopped:
        os.kill(pid, signal.SIGSTOP)
    try:
        def refused() -> str:
            try:
                client.services.get("hasvc").scale(4)
            except docker.errors.APIError as e:
                return e.explanation if e.status_code == 503 else ""
            return ""

        why = wait_for(refused, timeout=30)
        assert "does not have a leader" in str(why) or "not accepting writes" in str(why), why
        time.sleep(2)
        assert {c.id for c in engine.containers.list(
            filters={"label": "com.docker.swarm.service.name=hasvc"})} == containers
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)

    # The quorum is back: a leader again, writes work, the same tasks still run (nothing removed).
    wait_for(lambda: _try(lambda: client.services.get("hasvc").scale(4) or True), timeout=60)
    wait_for(lambda: len(running(client, "hasvc")) == 4, timeout=60)
    assert tasks <= {t["ID"] for t in running(client, "hasvc")}
    engine.close()


def test_demoted_managers_run_on_as_workers(managers: list[Mgr]) -> None:
    m1, m2, m3 = managers
    swarm_on_etcd(m1, m2, m3)
    client = m1.client()
    wait_for(lambda: all(n.attrs["Status"]["State"] == "ready" for n in client.nodes.list()), timeout=40)
    client.services.create("busybox:latest", ["sleep", "600"], name="hasvc", mode={"Replicated": {"Replicas": 3}},
                           stop_grace_period=10**9)
    wait_for(lambda: len(running(client, "hasvc")) == 3, timeout=40)
    tasks = {t["ID"] for t in running(client, "hasvc")}

    def node_of(m: Mgr) -> str:
        return m.client().info()["Swarm"]["NodeID"]

    # A follower is demoted: its etcd member leaves, it runs on as a worker; its task too.
    n3 = node_of(m3)
    m2.cli("node", "demote", n3)
    wait_for(lambda: _try(lambda: m3.client().info()["Swarm"]["ControlAvailable"] is False
                          and m3.client().info()["Swarm"]["LocalNodeState"] == "active"), timeout=40)
    wait_for(lambda: client.nodes.get(n3).attrs.get("ManagerStatus") is None, timeout=30)
    members = etcd_members(m1)
    assert len(members) == 2, members
    wait_for(lambda: client.nodes.get(n3).attrs["Status"]["State"] == "ready", timeout=30)

    # The leader is demoted: it hands over, then runs on as a worker too.
    n1 = node_of(m1)
    m1.cli("node", "demote", n1)
    wait_for(lambda: m2.leader(), timeout=30)
    wait_for(lambda: _try(lambda: m1.client().info()["Swarm"]["ControlAvailable"] is False), timeout=40)
    wait_for(lambda: all(n.attrs["Status"]["State"] == "ready" for n in m2.client().nodes.list()), timeout=40)
    # The new leader drops the demoted one's ManagerStatus once its reachability loop sees the role
    # change (a pass or two later on a loaded machine), as `docker node ls` shows a demotion settle.
    wait_for(lambda: [n.id for n in m2.client().nodes.list() if n.attrs.get("ManagerStatus")] == [node_of(m2)],
             timeout=30)
    # Nothing was restarted on the way; writes work through the last manager.
    assert {t["ID"] for t in running(m2.client(), "hasvc")} == tasks
    m2.client().services.get("hasvc").scale(4)
    wait_for(lambda: len(running(m2.client(), "hasvc")) == 4, timeout=40)


def subprocess_out(argv: list[str]) -> str:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True).stdout


def test_a_promoted_worker_holds_the_store(managers: list[Mgr]) -> None:
    m1, m2, _ = managers
    swarm_on_etcd(m1, m2, role="worker")
    client = m1.client()
    wait_for(lambda: all(n.attrs["Status"]["State"] == "ready" for n in client.nodes.list()), timeout=40)
    n2 = m2.client().info()["Swarm"]["NodeID"]
    assert m2.client().info()["Swarm"]["ControlAvailable"] is False

    m1.cli("node", "promote", n2)
    # Its agent renews its certificate with the manager role and asks for its part of the store.
    wait_for(lambda: _try(lambda: m2.client().info()["Swarm"]["ControlAvailable"] is True
                          and len(m2.client().nodes.list()) == 2), timeout=60)
    members = etcd_members(m1)
    assert len(members) == 2 and all("false" in line for line in members), members  # two voters
    wait_for(lambda: (client.nodes.get(n2).attrs.get("ManagerStatus") or {}).get("Reachability") == "reachable",
             timeout=30)
    # It takes over when the leader goes.
    m1.proc.stop(signal.SIGKILL)
    wait_for(lambda: m2.leader(), timeout=30)
    m2.client().services.create("busybox:latest", ["sleep", "600"], name="hasvc", stop_grace_period=10**9)
    wait_for(lambda: len(running(m2.client(), "hasvc")) == 1, timeout=40)


def etcdctl(m: Mgr, *args: str) -> list[str]:
    """etcdctl against ``m``'s member, with the manager's own etcd client certificate (the members
    Shoal runs accept no one else)."""
    tls = m.proc.data / "etcd-tls"
    return ["etcdctl", f"--endpoints=https://127.0.0.1:{m.etcd}", f"--cacert={tls / 'ca.crt'}",
            f"--cert={tls / 'member.crt'}", f"--key={tls / 'member.key'}", *args]


def etcd_members(m: Mgr) -> list[str]:
    return subprocess_out(etcdctl(m, "member", "list")).strip().splitlines()


def test_managers_that_leave_take_nothing_with_them(managers: list[Mgr]) -> None:
    """Issue 10, item 7: `swarm leave --force` on a manager while others hold the state erases
    nothing; its etcd member leaves the etcd cluster (no dead member left in the quorum)."""
    m1, m2, m3 = managers
    swarm_on_etcd(m1, m2, m3)
    client = m1.client()
    wait_for(lambda: len(client.nodes.list()) == 3
             and all(n.attrs["Status"]["State"] == "ready" for n in client.nodes.list()), timeout=40)
    client.services.create("busybox:latest", ["sleep", "600"], name="hasvc", mode={"Replicated": {"Replicas": 3}},
                           stop_grace_period=10**9)
    wait_for(lambda: len(running(client, "hasvc")) == 3, timeout=40)
    assert len(etcd_members(m2)) == 3

    # The leader leaves: another manager leads at once (the lease was revoked), the service is
    # still there with its 3 replicas, and etcd has two members.
    assert m1.leader()
    m1.cli("swarm", "leave", "--force")
    assert m1.client().info()["Swarm"]["LocalNodeState"] == "inactive"
    wait_for(lambda: m2.leader() or m3.leader(), timeout=30)
    survivor, other = (m2, m3) if m2.leader() else (m3, m2)
    assert survivor.client().services.get("hasvc").attrs["Spec"]["Mode"]["Replicated"]["Replicas"] == 3
    wait_for(lambda: len(etcd_members(survivor)) == 2, timeout=30)
    wait_for(lambda: len(running(survivor.client(), "hasvc")) == 3, timeout=60)  # m1's slot runs elsewhere

    # A follower leaves too: the last manager keeps the state and its etcd member alone has quorum.
    other.cli("swarm", "leave", "--force")
    wait_for(lambda: len(etcd_members(survivor)) == 1, timeout=30)
    svc = survivor.client().services.get("hasvc")
    svc.scale(2)
    wait_for(lambda: len(running(survivor.client(), "hasvc")) == 2, timeout=60)
    assert survivor.leader()


def _state(m: Mgr) -> str:
    try:
        return str(m.client().info()["Swarm"]["LocalNodeState"])
    except docker.errors.APIError:
        return ""


def _unlock(m: Mgr, key: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", "-H", m.proc.host, "swarm", "unlock"], input=key + "\n", capture_output=True,
                          text=True, timeout=60)


def _only_under(m: Mgr, key: str, old: str) -> bool:
    """Whether the manager's data key file opens with ``key`` and no longer with ``old``."""
    path = m.proc.data / "store.key"
    text = path.read_text()
    return (unwrap(text, parse_human_key(key), path) is not None
            and unwrap(text, parse_human_key(old), path) is None)


def test_autolock_with_three_managers(managers: list[Mgr]) -> None:
    """Issue 13: autolock on etcd — every manager wraps its keys under the cluster's unlock key; a
    manager down during a rotation unlocks with the key it went down with and re-wraps on its own;
    the others take the new key at once. Secrets stay readable through it all."""
    m1, m2, m3 = managers
    swarm_on_etcd(m1, m2, m3)
    client = m1.client()
    wait_for(lambda: all(n.attrs["Status"]["State"] == "ready" for n in client.nodes.list()), timeout=40)
    m1.proc.docker_cli("swarm", "update", "--autolock=true")
    old = m1.proc.docker_cli("swarm", "unlock-key", "-q").stdout.strip()
    assert old.startswith("SWMKEY-1-")
    client.secrets.create(name="halock", data=b"kept under lock")

    m2.proc.stop()  # down through the rotation
    new = m1.proc.docker_cli("swarm", "unlock-key", "--rotate", "-q").stdout.strip()
    assert new.startswith("SWMKEY-1-") and new != old
    m2.proc.start()
    assert wait_for(lambda: _state(m2) == "locked", timeout=30)
    assert _unlock(m2, new).returncode != 0  # its files are still under the key it went down with
    res = _unlock(m2, old)
    assert res.returncode == 0, res.stderr
    wait_for(lambda: _state(m2) == "active", timeout=30)

    # m3 was up: it re-wrapped under the new key; so does m2 once unlocked. Both restart locked and
    # open only with the new key.
    for m in (m3, m2):
        wait_for(lambda m=m: _only_under(m, new, old), timeout=30)  # the re-wrap follows the cluster's key
        m.proc.stop()
        m.proc.start()
        assert wait_for(lambda m=m: _state(m) == "locked", timeout=30)
        assert _unlock(m, old).returncode != 0
        res = _unlock(m, new)
        assert res.returncode == 0, res.stderr
        wait_for(lambda m=m: _state(m) == "active", timeout=30)
    # The secret is still there and readable by a task.
    client.services.create("busybox:latest", ["sh", "-c", "cat /run/secrets/halock; echo; sleep 600"], name="hasvc",
                           secrets=[docker.types.SecretReference(client.secrets.list(filters={"name": "halock"})[0].id,
                                                                 "halock")],
                           stop_grace_period=10**9)
    wait_for(lambda: len(running(client, "hasvc")) == 1, timeout=40)
    engine = docker.from_env()
    try:
        (task_container,) = engine.containers.list(filters={"label": "com.docker.swarm.service.name=hasvc"})
        wait_for(lambda: task_container.logs(), timeout=20)
        assert task_container.logs() == b"kept under lock\n", task_container.logs()
    finally:
        engine.close()
