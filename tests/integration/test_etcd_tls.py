"""The etcd members Shoal runs take only the swarm's managers: before, a member listened in plain
HTTP on the manager's address, and anyone who reached it read the join tokens and could write a
service that mounts / on every node, past all of the API's authorization."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import wait_for
from tests.integration.test_managers_ha import Mgr, etcdctl, running_managers, swarm_on_etcd

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(shutil.which("etcd") is None, reason="etcd-server is not installed")]


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[list[Mgr]]:
    with running_managers(tmp_path, 2) as ms:
        yield ms


def _etcdctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["etcdctl", "--dial-timeout=2s", "--command-timeout=3s", *args], capture_output=True,
                          text=True, timeout=30, env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})


def test_only_managers_reach_the_managed_etcd(pair: list[Mgr]) -> None:
    manager, worker = pair
    swarm_on_etcd(manager, worker, role="worker")
    wait_for(lambda: len(manager.client().nodes.list()) == 2, timeout=40)
    url = f"127.0.0.1:{manager.etcd}"
    tls = manager.proc.data / "etcd-tls"

    # No TLS, TLS without a certificate, and a worker's genuine certificate from the cluster's root:
    # all refused.
    assert _etcdctl(f"--endpoints=http://{url}", "get", "--prefix", "/shoal").returncode != 0
    assert _etcdctl(f"--endpoints=https://{url}", f"--cacert={tls / 'ca.crt'}", "get", "--prefix",
                    "/shoal").returncode != 0
    certs = worker.proc.data / "certificates"
    res = _etcdctl(f"--endpoints=https://{url}", f"--cacert={tls / 'ca.crt'}", f"--cert={certs / 'node.crt'}",
                   f"--key={certs / 'node.key'}", "get", "--prefix", "/shoal")
    assert res.returncode != 0 and b"SWMTKN" not in res.stdout.encode()
    assert not (worker.proc.data / "etcd-tls" / "ca.key").exists()  # workers never get the etcd CA

    # The manager's own member certificate gets in (so does the manager itself: the swarm works).
    res = subprocess.run(etcdctl(manager, "get", "--prefix", "--keys-only", "/shoal"), capture_output=True,
                         text=True, timeout=30, env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0 and "/shoal/cluster/" in res.stdout, res.stderr
    for name in ("ca.key", "member.key"):
        assert oct((tls / name).stat().st_mode & 0o777) == "0o600"
