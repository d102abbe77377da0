"""Authorization with two managers on etcd: a follower authorizes a write itself, before it goes
to the leader (the leader replays forwarded writes on a private socket, as the local admin), and
the leader's audit log still names who asked."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.integration.conftest import wait_for
from tests.integration.security_cli import shoal_as
from tests.integration.test_managers_ha import Mgr, running_managers, swarm_on_etcd

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(shutil.which("etcd") is None, reason="etcd-server is not installed")]


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[list[Mgr]]:
    with running_managers(tmp_path, 2) as ms:
        yield ms


def test_a_follower_authorizes_before_it_forwards(pair: list[Mgr]) -> None:
    leader, follower = pair
    swarm_on_etcd(leader, follower)
    wait_for(lambda: len(follower.client().nodes.list()) == 2, timeout=40)
    leader.cli("user", "create", "olga", "--role", "operator", "--team", "web")
    token = leader.cli("user", "token", "olga").stdout.strip()
    wait_for(lambda: follower.cli("user", "whoami", check=False).returncode == 0, timeout=10)

    def on_follower(*args: str) -> subprocess.CompletedProcess[str]:
        return shoal_as(follower.proc.host, token, *args)

    wait_for(lambda: on_follower("user", "whoami").stdout.strip() == "olga (role operator, teams web, via token)",
             timeout=10)
    refused = on_follower("service", "create", "--name", "ha-db", "--label", "shoal.team=db", "--replicas", "0",
                          "busybox:latest")
    assert refused.returncode != 0 and "team 'db'" in refused.stderr, refused.stderr
    ok = on_follower("service", "create", "--name", "ha-web", "--label", "shoal.team=web", "--replicas", "0",
                     "busybox:latest")
    assert ok.returncode == 0, ok.stderr
    names = {s.name for s in leader.client().services.list()}
    assert "ha-web" in names and "ha-db" not in names

    def audited() -> list[dict]:
        api = leader.client().api
        return [e for e in api.get(api._url("/shoal/audit"), params={"limit": 1000}).json()
                if e["user"] == "olga"]

    # The leader's log has the forwarded create under olga's name; the refusal never reached it.
    entries = wait_for(audited, timeout=10)
    assert [(e["method"], e["path"].rsplit("/", 1)[-1], e["status"], e["via"]) for e in entries] == [
        ("POST", "create", 201, "forwarded")]
    # A user certificate asked of the follower is signed by the leader's CA.
    res = follower.cli("user", "cert", "olga", "-o", str(follower.proc.root / "olga"), check=False)
    assert res.returncode == 0, res.stderr
    assert (follower.proc.root / "olga" / "cert.pem").read_text().startswith("-----BEGIN CERTIFICATE-----")
    leader.client().services.get("ha-web").remove()
    with pytest.raises(docker.errors.NotFound):
        leader.client().services.get("ha-web")
