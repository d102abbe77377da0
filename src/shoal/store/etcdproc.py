"""Run an etcd member as a child process of the manager, and change the cluster's membership.

Shoal can use an etcd cluster run by someone else, or run one member next to each manager
(:class:`ManagedEtcd`). A managed member gets limits suited to Shoal's batches (many more ops and
bytes per transaction than etcd's 128 / 1.5 MiB, so most batches are one transaction), a space
quota, periodic auto-compaction (so history does not grow without end; a watcher that falls further
behind reloads), and its log in a file beside its data directory.

Growing a cluster is etcd 3.4's two-step: :func:`add_member` through a live member first (the cluster
then counts the new member in its quorum), then start the new member with
``cluster_state="existing"`` and the ``initial_cluster`` that :func:`add_member` returned. Removing
is one call; stop the removed member afterwards (it stops on its own once it learns of its removal).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import ssl
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import aetcd
import aiohttp
import grpc
from aetcd import rpc

from shoal.ca.certs import write_private
from shoal.errors import Conflict, StoreUnavailable
from shoal.store import etcdtls
from shoal.store.etcd import DEFAULT_TIMEOUT_S, etcd_client, retrying, use_client_tls
from shoal.store.etcdtls import MemberFiles

log = logging.getLogger(__name__)

T = TypeVar("T")
RECONFIG_TIMEOUT_S = 15.0  # etcd wants 5 s of full connectivity before a membership change


class EtcdStartError(Exception):
    """The member did not become healthy in time (the message carries the end of its log)."""


@dataclass
class ManagedEtcd:
    """One etcd-server member for one data directory. ``client_url``/``peer_url`` are
    ``http://IP:port``; ``initial_cluster`` maps member names to peer URLs (just this member for a
    new single-member cluster). Flags for initial cluster/state only matter on the first start:
    a data directory that already holds a member restarts as that member."""

    name: str
    data_dir: Path
    client_url: str
    peer_url: str
    initial_cluster: dict[str, str] = field(default_factory=dict)
    cluster_state: str = "new"  # "new" or "existing" (joining a cluster after add_member)
    cluster_token: str = "shoal"
    max_txn_ops: int = 8192
    max_request_bytes: int = 8 * 1024 * 1024
    quota_bytes: int = 4 * 1024 * 1024 * 1024
    compaction_retention: str = "10m"
    heartbeat_ms: int = 100
    election_ms: int = 1000
    log_path: Path | None = None
    etcd_bin: str = "etcd"
    tls: MemberFiles | None = None  # mutual TLS on both ports (https:// URLs); None: plain http
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _pid: int | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)
        if self.cluster_state not in ("new", "existing"):
            raise ValueError(f"cluster_state must be 'new' or 'existing', not {self.cluster_state!r}")
        if not self.initial_cluster:
            self.initial_cluster = {self.name: self.peer_url}
        if self.log_path is None:
            self.log_path = self.data_dir.with_name(self.data_dir.name + ".log")

    @property
    def pid(self) -> int | None:
        return self._pid

    @property
    def pid_path(self) -> Path:
        return self.data_dir.with_name(self.data_dir.name + ".pid")

    @property
    def running(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        return self._pid is not None and self._is_our_member(self._pid)

    def _is_our_member(self, pid: int) -> bool:
        """Is ``pid`` an etcd serving this data dir (not a recycled PID, not a zombie)?"""
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return f"--data-dir={self.data_dir}".encode() in argv

    def command(self) -> list[str]:
        return [
            self.etcd_bin,
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.client_url}",
            f"--advertise-client-urls={self.client_url}",
            f"--listen-peer-urls={self.peer_url}",
            f"--initial-advertise-peer-urls={self.peer_url}",
            "--initial-cluster=" + ",".join(f"{n}={u}" for n, u in self.initial_cluster.items()),
            f"--initial-cluster-state={self.cluster_state}",
            f"--initial-cluster-token={self.cluster_token}",
            f"--max-txn-ops={self.max_txn_ops}",
            f"--max-request-bytes={self.max_request_bytes}",
            f"--quota-backend-bytes={self.quota_bytes}",
            "--auto-compaction-mode=periodic",
            f"--auto-compaction-retention={self.compaction_retention}",
            f"--heartbeat-interval={self.heartbeat_ms}",
            f"--election-timeout={self.election_ms}",
            # A member back from a partition must not depose the raft leader with the terms it ran
            # up alone (etcd 3.5's default; 3.4's is off): that cost every manager its lease.
            "--pre-vote=true",
            "--logger=zap",
            "--log-outputs=stderr",
            *self._tls_flags(),
        ]

    def _tls_flags(self) -> list[str]:
        """Only holders of a certificate from the swarm's etcd CA get in, on either port."""
        if self.tls is None:
            return []
        t = self.tls
        return [f"--cert-file={t.cert}", f"--key-file={t.key}", f"--trusted-ca-file={t.ca}", "--client-cert-auth",
                f"--peer-cert-file={t.cert}", f"--peer-key-file={t.key}", f"--peer-trusted-ca-file={t.ca}",
                "--peer-client-cert-auth"]

    def spawn(self) -> None:
        """Start the process without waiting for it to be healthy (a member of a cluster that has
        lost quorum cannot be healthy until its peers are up too)."""
        if self.running:
            return
        # The member runs in its own session, so it outlives a manager that crashed (its peers keep
        # their quorum); the restarted manager adopts it through the PID file instead of failing to
        # bind its ports a second time.
        try:
            pid = int(self.pid_path.read_text())
        except (OSError, ValueError):
            pid = 0
        if pid and self._is_our_member(pid):
            self._proc, self._pid = None, pid
            return
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        assert self.log_path is not None
        # The member's data is the whole store (sealed secrets, but tasks, nodes and specs plain):
        # its files, its log and its PID file are this user's only. etcd makes its data dir 0700.
        with open(os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab") as log:
            os.fchmod(log.fileno(), 0o600)  # a log an older Shoal made 0644
            self._proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True, umask=0o077)
        self._pid = self._proc.pid
        write_private(self.pid_path, f"{self._pid}\n")

    async def start(self, timeout_s: float = 30.0) -> None:
        self.spawn()
        await self.wait_healthy(timeout_s)

    async def wait_healthy(self, timeout_s: float = 30.0) -> None:
        """Wait until the member answers /health with a leader; :class:`EtcdStartError` otherwise."""
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            while time.monotonic() < deadline:
                if self._pid is not None and not self.running:
                    status = self._proc.returncode if self._proc is not None else "unknown"
                    raise EtcdStartError(f"etcd member {self.name} exited with status {status}:\n{self.log_tail()}")
                try:
                    async with http.get(f"{self.client_url}/health", ssl=self._health_ssl()) as resp:
                        body = await resp.json(content_type=None)
                        if body.get("health") == "true":
                            return
                        last = f"health {body}"
                except (aiohttp.ClientError, TimeoutError, ValueError) as e:
                    last = f"{type(e).__name__}: {e}"
                await asyncio.sleep(0.1)
        raise EtcdStartError(
            f"etcd member {self.name} not healthy at {self.client_url} within {timeout_s:g}s ({last}):\n"
            f"{self.log_tail()}"
        )

    def _health_ssl(self) -> ssl.SSLContext | bool:
        if self.tls is None:
            return True
        ctx = ssl.create_default_context(cafile=str(self.tls.ca))
        ctx.load_cert_chain(str(self.tls.cert), str(self.tls.key))
        return ctx

    def log_tail(self, lines: int = 15) -> str:
        try:
            assert self.log_path is not None
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM (etcd shuts down cleanly), SIGKILL if it lingers. By PID, only our own child."""
        self._signal_and_wait(signal.SIGTERM, timeout_s)

    def kill(self) -> None:
        """SIGKILL: a crash, as tests and failure drills want it."""
        self._signal_and_wait(signal.SIGKILL, 5.0)

    def _signal_and_wait(self, sig: signal.Signals, timeout_s: float) -> None:
        proc, pid = self._proc, self._pid
        self._proc = self._pid = None
        if pid is not None and (proc.poll() is None if proc is not None else self._is_our_member(pid)):
            os.kill(pid, sig)
            if not self._wait_gone(proc, pid, timeout_s):
                os.kill(pid, signal.SIGKILL)
                self._wait_gone(proc, pid, 5.0)
        self.pid_path.unlink(missing_ok=True)

    def _wait_gone(self, proc: subprocess.Popen[bytes] | None, pid: int, timeout_s: float) -> bool:
        if proc is not None:  # our child: wait() also reaps it
            try:
                proc.wait(timeout_s)
                return True
            except subprocess.TimeoutExpired:
                return False
        deadline = time.monotonic() + timeout_s  # adopted: not our child, watch /proc
        while self._is_our_member(pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True


@dataclass(frozen=True, slots=True)
class MemberInfo:
    id: int
    name: str  # empty for a member added but not started yet
    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...]
    is_learner: bool


async def members(client: aetcd.Client, timeout_s: float = DEFAULT_TIMEOUT_S) -> list[MemberInfo]:
    await client.connect()
    resp = await retrying("member list", lambda left: client.clusterstub.MemberList(
        rpc.MemberListRequest(), timeout=left), timeout_s)
    return [MemberInfo(m.ID, m.name, tuple(m.peerURLs), tuple(m.clientURLs), m.isLearner) for m in resp.members]


async def _reconfigure(what: str, call: Callable[[float], Awaitable[T]], timeout_s: float) -> T:
    """Membership changes: etcd refuses them while the cluster has not been fully connected for 5 s
    ("unhealthy cluster", e.g. right after a member started) or a new member has not started yet; it
    checks that before proposing anything, so those refusals are retried until ``timeout_s``. Other
    failures are not: a change that timed out may have been applied (see :func:`members`)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await call(max(0.1, deadline - time.monotonic()))
        except grpc.aio.AioRpcError as e:
            details = e.details() or ""
            transient = "unhealthy cluster" in details or "not enough started members" in details
            if transient and time.monotonic() + 0.5 < deadline:
                await asyncio.sleep(0.5)
                continue
            if e.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND):
                raise Conflict(f"etcd refused to {what}: {details}") from e
            raise StoreUnavailable(f"etcd: {what}: {e.code().name}: {details}") from e


async def add_member(client: aetcd.Client, name: str, peer_url: str,
                     timeout_s: float = RECONFIG_TIMEOUT_S, *, learner: bool = False) -> dict[str, str]:
    """Announce a new member; returns the ``initial_cluster`` to start it with (state "existing").

    A ``learner`` does not vote until :func:`promote_member`: announcing a voter that then never
    starts would raise the quorum to a member that is not there (two of two, with one missing)."""
    await client.connect()
    resp = await _reconfigure(f"add member {name} ({peer_url})", lambda left: client.clusterstub.MemberAdd(
        rpc.MemberAddRequest(peerURLs=[peer_url], isLearner=learner), timeout=left), timeout_s)
    cluster: dict[str, str] = {}
    for m in resp.members:  # as `etcdctl member add` prints ETCD_INITIAL_CLUSTER
        for url in m.peerURLs:
            cluster[name if m.ID == resp.member.ID else m.name] = url
    return cluster


async def remove_member(client: aetcd.Client, member_id: int, timeout_s: float = RECONFIG_TIMEOUT_S) -> None:
    """Remove a member (a stopped one is removed at once; a running one once the cluster has been
    healthy for 5 s). Stop its process afterwards."""
    await client.connect()
    await _reconfigure(f"remove member {member_id:x}", lambda left: client.clusterstub.MemberRemove(
        rpc.MemberRemoveRequest(ID=member_id), timeout=left), timeout_s)


async def promote_learner(client: aetcd.Client, name: str, timeout_s: float = 60.0) -> None:
    """Make the learner ``name`` a voting member once it has caught up with the raft leader (etcd
    refuses before that, and that refusal is retried until ``timeout_s``). A voter already: no-op.
    The call goes to the voters only: a learner answers "rpc not supported for learner"."""
    await client.connect()
    deadline = time.monotonic() + timeout_s
    why = "no such member"
    while time.monotonic() + 0.5 < deadline:
        all_members = await members(client)
        mine = [mem for mem in all_members if mem.name == name]
        if mine and not mine[0].is_learner:
            return
        voters = [u for mem in all_members if not mem.is_learner for u in mem.client_urls]
        if mine and voters:
            vc = etcd_client(voters)
            try:
                await vc.connect()
                await vc.clusterstub.MemberPromote(rpc.MemberPromoteRequest(ID=mine[0].id),
                                                   timeout=max(0.1, deadline - time.monotonic()))
                return
            except grpc.aio.AioRpcError as e:
                why = f"{e.code().name}: {e.details()}"  # e.g. not in sync with the leader yet
            finally:
                await vc.close()
        await asyncio.sleep(0.5)
    raise StoreUnavailable(f"etcd: promote {name}: {why}")


def tls_member(data_root: Path, name: str, client_url: str, peer_url: str,
               initial_cluster: dict[str, str] | None = None, *, may_create: bool) -> ManagedEtcd:
    """The member this manager runs, with mutual TLS when its URLs are https (store/etcdtls.py;
    ``may_create``: it is the swarm's first member, which makes the etcd CA), and this process's
    client credentials for it. ValueError when the member needs a CA this manager was never given."""
    tls = etcdtls.prepare(data_root, name, client_url, may_create=may_create)
    if tls is not None:
        use_client_tls(etcdtls.client_tls(data_root))
    else:
        log.warning("this swarm's etcd members talk plain http (made before Shoal ran them with TLS): "
                    "anyone who reaches %s can read and write the store", client_url)
    return ManagedEtcd(name, data_root / "etcd", client_url, peer_url, initial_cluster=dict(initial_cluster or {}),
                       cluster_state="existing" if initial_cluster else "new", tls=tls)
