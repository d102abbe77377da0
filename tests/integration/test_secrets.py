"""Secrets and configs through the real ``docker`` CLI and into real containers.

The agent test drives a DockerExecutor with a hand-made assignments message (what the dispatcher
sends); the CLI tests go through a Shoal daemon end to end.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
from pathlib import Path

import docker
import pytest

from shoal.agent.executor.docker import DockerExecutor
from shoal.agent.secrets import TaskSecrets, fs_type
from shoal.dispatcher.protocol import Assignments
from shoal.ids import new_id
from shoal.models import (
    Config,
    ConfigReference,
    ConfigSpec,
    ContainerSpec,
    Secret,
    SecretReference,
    SecretSpec,
    Task,
    TaskSpec,
    TaskState,
    TaskStatus,
    Version,
)
from tests.integration.conftest import shoal_cli, wait_for
from tests.integration.shoal_process import ShoalProcess

pytestmark = pytest.mark.integration

IMAGE = "busybox:latest"


async def test_agent_mounts_files_into_the_container(tmp_path: Path) -> None:
    node = "secrets-" + new_id()[:10]
    pw = Secret(ID=new_id(), Version=Version(1), CreatedAt="", UpdatedAt="",
                Spec=SecretSpec(Name="pw", Data=base64.b64encode(b"s3cret").decode()))
    conf = Config(ID=new_id(), Version=Version(1), CreatedAt="", UpdatedAt="",
                  Spec=ConfigSpec(Name="app.conf", Data=base64.b64encode(b"debug=1").decode()))
    file = {"UID": "0", "GID": "0", "Mode": 0o400}
    cs = ContainerSpec(
        Image=IMAGE, Command=["sh", "-c"],
        Args=["cat /run/secrets/pw; echo; cat /etc/key; echo; cat /app.conf; echo; stat -c %a /run/secrets/pw; "
              "echo x > /run/secrets/pw || echo read-only"],
        Secrets=[SecretReference(SecretID=pw.ID, SecretName="pw", File={"Name": "pw", **file}),
                 SecretReference(SecretID=pw.ID, SecretName="pw", File={"Name": "/etc/key", **file})],
        Configs=[ConfigReference(ConfigID=conf.ID, ConfigName="app.conf",
                                 File={"Name": "app.conf", "UID": "0", "GID": "0", "Mode": 0o444})],
    )
    task = Task(ID=new_id(), Version=Version(1), CreatedAt="", UpdatedAt="", Spec=TaskSpec(ContainerSpec=cs),
                ServiceID="svc", Status=TaskStatus(State=TaskState.ASSIGNED), DesiredState=TaskState.RUNNING,
                NodeID=node, Slot=1, ServiceAnnotations={"Name": "secrets-test"})
    ex = DockerExecutor()
    ex.secrets = TaskSecrets(tmp_path / "run")
    engine = docker.from_env()
    cid = ""
    try:
        ex.secrets.update(Assignments(full=True, tasks=[task], secrets=[pw], configs=[conf]))
        cid = await ex.create(task)
        assert fs_type(tmp_path / "run" / node) == "tmpfs"
        await ex.start(task, cid)
        exit_info = await asyncio.wait_for(ex.wait_exit(cid), 30)
        logs = engine.containers.get(cid).logs(stderr=False).decode()
        assert exit_info.exit_code == 0, logs
        assert logs.split() == ["s3cret", "s3cret", "debug=1", "400", "read-only"], logs
        task_dir = ex.secrets.task_dir(task)
        assert task_dir.exists()
        await ex.remove(cid)
        cid = ""
        assert not task_dir.exists()
    finally:
        if cid:
            await ex.remove(cid)
        await ex.close()
        engine.close()
    assert fs_type(tmp_path / "run") != "tmpfs"


def _docker_in(shoal: ShoalProcess, *args: str, stdin: str) -> subprocess.CompletedProcess[str]:
    """`docker` against the daemon with ``stdin`` fed to it (for `secret create NAME -`)."""
    return subprocess.run(["docker", "-H", shoal.host, *args], input=stdin, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "DOCKER_HOST": shoal.host})


def test_docker_cli_secrets_and_configs(shoal: ShoalProcess, swarm: docker.DockerClient, tmp_path: Path) -> None:
    src = tmp_path / "pw.txt"
    src.write_text("hunter2\n")
    sid = shoal.docker_cli("secret", "create", "--label", "env=test", "db_pw", str(src)).stdout.strip()
    assert len(sid) == 25
    res = _docker_in(shoal, "secret", "create", "db_pw", "-", stdin="again")
    assert res.returncode != 0 and "secret db_pw already exists" in res.stderr
    res = shoal.docker_cli("secret", "create", "bad name", str(src), check=False)
    assert res.returncode != 0 and "invalid name" in res.stderr

    ls = shoal.docker_cli("secret", "ls", "--format", "{{.ID}} {{.Name}}").stdout.split()
    assert ls == [sid, "db_pw"]
    assert shoal.docker_cli("secret", "ls", "-q", "--filter", "label=env=test").stdout.split() == [sid]
    assert shoal.docker_cli("secret", "ls", "-q", "--filter", "name=nope").stdout.split() == []
    inspected = json.loads(shoal.docker_cli("secret", "inspect", "db_pw").stdout)[0]
    assert inspected["ID"] == sid and inspected["Spec"]["Labels"] == {"env": "test"}
    assert "Data" not in inspected["Spec"] and "hunter2" not in json.dumps(inspected)
    pretty = shoal.docker_cli("secret", "inspect", "--pretty", sid[:6]).stdout
    assert "db_pw" in pretty and "hunter2" not in pretty
    res = shoal.docker_cli("secret", "inspect", "nope", check=False)
    assert res.returncode != 0 and "nope" in res.stderr

    cfg = tmp_path / "app.conf"
    cfg.write_text("listen=8080\n")
    cid = shoal.docker_cli("config", "create", "app_conf", str(cfg)).stdout.strip()
    assert shoal.docker_cli("config", "ls", "--format", "{{.Name}}").stdout.split() == ["app_conf"]
    cinfo = json.loads(shoal.docker_cli("config", "inspect", cid).stdout)[0]
    assert base64.b64decode(cinfo["Spec"]["Data"]) == b"listen=8080\n"
    assert "listen=8080" in shoal.docker_cli("config", "inspect", "--pretty", "app_conf").stdout

    # Shoal's own CLI sees the same objects.
    assert "db_pw" in shoal_cli(shoal, "secret", "ls").stdout
    assert shoal_cli(shoal, "config", "ls", "-q").stdout.split() == [cid]

    shoal.docker_cli("secret", "rm", "db_pw")
    shoal.docker_cli("config", "rm", "app_conf")
    assert shoal.docker_cli("secret", "ls", "-q").stdout.split() == []
    res = shoal.docker_cli("config", "rm", "app_conf", check=False)
    assert res.returncode != 0 and "not found" in res.stderr


def test_service_reads_its_secret_and_config(shoal: ShoalProcess, swarm: docker.DockerClient,
                                              tmp_path: Path) -> None:
    _docker_in(shoal, "secret", "create", "api_key", "-", stdin="k3y-value").check_returncode()
    _docker_in(shoal, "config", "create", "motd", "-", stdin="hello-config").check_returncode()
    shoal.docker_cli(
        "service", "create", "--detach", "--name", "reader", "--restart-condition", "none",
        "--secret", "api_key", "--secret", "source=api_key,target=/etc/key,mode=0400",
        "--config", "source=motd,target=/etc/motd",
        IMAGE, "sh", "-c", "cat /run/secrets/api_key /etc/key /etc/motd; echo; sleep 300",
    )
    try:
        spec = json.loads(shoal.docker_cli("service", "inspect", "reader").stdout)[0]["Spec"]
        refs = spec["TaskTemplate"]["ContainerSpec"]["Secrets"]
        # The docker CLI sends the references in no fixed order (it collects them in a Go map).
        assert sorted(r["File"]["Name"] for r in refs) == ["/etc/key", "api_key"] and all(r["SecretID"] for r in refs)

        def logs() -> str:
            return shoal.docker_cli("service", "logs", "--raw", "reader", check=False).stdout

        out = str(wait_for(lambda: "hello-config" in logs() and logs(), timeout=60))
        assert "k3y-valuek3y-valuehello-config" in out

        # In use: 409, with swarmkit's words, through the docker CLI.
        res = shoal.docker_cli("secret", "rm", "api_key", check=False)
        assert res.returncode != 0
        assert "secret 'api_key' is in use by the following service: reader" in res.stderr
        res = shoal.docker_cli("config", "rm", "motd", check=False)
        assert "config 'motd' is in use by the following service: reader" in res.stderr
        with pytest.raises(docker.errors.APIError) as err:
            swarm.api.remove_secret("api_key")
        assert err.value.response.status_code == 409
    finally:
        shoal.docker_cli("service", "rm", "reader", check=False)
    wait_for(lambda: shoal.docker_cli("secret", "rm", "api_key", check=False).returncode == 0, timeout=30)
    shoal.docker_cli("config", "rm", "motd")


def test_a_templated_config_is_rendered_for_each_task(shoal: ShoalProcess, swarm: docker.DockerClient) -> None:
    """``docker config create --template-driver golang``: each task reads the config rendered for
    it (service, slot, node, an env value and a secret), as swarmkit's template package does."""
    _docker_in(shoal, "secret", "create", "tpl_pw", "-", stdin="s3cret").check_returncode()
    _docker_in(shoal, "config", "create", "--template-driver", "golang", "tpl", "-",
               stdin='{{.Service.Name}}.{{.Task.Slot}} on {{.Node.Hostname}} env={{env "GREETING"}} '
                     'pw={{secret "tpl_pw"}}').check_returncode()
    assert json.loads(shoal.docker_cli("config", "inspect", "tpl").stdout)[0]["Spec"]["Templating"] == {
        "Name": "golang"}
    shoal.docker_cli(
        "service", "create", "--detach", "--name", "tplsvc", "--restart-condition", "none", "--replicas", "2",
        "-e", "GREETING=hi", "--secret", "tpl_pw", "--config", "source=tpl,target=/etc/tpl",
        IMAGE, "sh", "-c", "cat /etc/tpl; echo; sleep 300",
    )
    try:
        host = swarm.nodes.list()[0].attrs["Description"]["Hostname"]

        def logs() -> str:
            return shoal.docker_cli("service", "logs", "--raw", "tplsvc", check=False).stdout

        out = str(wait_for(lambda: logs().count("pw=") == 2 and logs(), timeout=60))
        for slot in (1, 2):
            assert f"tplsvc.{slot} on {host} env=hi pw=s3cret" in out, out
        res = _docker_in(shoal, "config", "create", "--template-driver", "jinja", "bad", "-", stdin="x")
        assert res.returncode != 0 and "jinja" in res.stderr and "Traceback" not in res.stderr
    finally:
        shoal.docker_cli("service", "rm", "tplsvc", check=False)
    wait_for(lambda: shoal.docker_cli("secret", "rm", "tpl_pw", check=False).returncode == 0, timeout=30)
    shoal.docker_cli("config", "rm", "tpl")
