"""The agent's secrets and configs: kept while referenced, written to a real tmpfs, bound read-only.

These tests mount a real tmpfs (the agent runs as root) under pytest's tmp directory and unmount it
at the end; the container side is in tests/integration/test_secrets.py.
"""

from __future__ import annotations

import asyncio
import base64
import os
import stat
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from shoal.agent.executor.base import ExecutorError
from shoal.agent.executor.hollow import HollowExecutor
from shoal.agent.secrets import TaskSecrets, fs_type, mounted_at
from shoal.agent.task import TaskController
from shoal.agent.worker import Worker
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

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")

NODE = "node-a"


def secret(name: str, data: bytes) -> Secret:
    return Secret(ID=new_id(), Version=Version(1), CreatedAt="", UpdatedAt="",
                  Spec=SecretSpec(Name=name, Data=base64.b64encode(data).decode()))


def config(name: str, data: bytes) -> Config:
    return Config(ID=new_id(), Version=Version(1), CreatedAt="", UpdatedAt="",
                  Spec=ConfigSpec(Name=name, Data=base64.b64encode(data).decode()))


def sref(s: Secret, **file: Any) -> SecretReference:
    return SecretReference(SecretID=s.ID, SecretName=s.Spec.Name,
                           File={"Name": s.Spec.Name, "UID": "0", "GID": "0", "Mode": 0o444, **file})


def cref(c: Config, **file: Any) -> ConfigReference:
    return ConfigReference(ConfigID=c.ID, ConfigName=c.Spec.Name,
                           File={"Name": c.Spec.Name, "UID": "0", "GID": "0", "Mode": 0o444, **file})


def task(secrets: list[SecretReference] | None = None, configs: list[ConfigReference] | None = None) -> Task:
    cs = ContainerSpec(Image="busybox:latest", Secrets=secrets, Configs=configs)
    return Task(ID=new_id(), Version=Version(1), CreatedAt="", UpdatedAt="", Spec=TaskSpec(ContainerSpec=cs),
                ServiceID="svc", Status=TaskStatus(State=TaskState.ASSIGNED), DesiredState=TaskState.RUNNING,
                NodeID=NODE, Slot=1)


def _force_unmount(node_dir: Path) -> None:
    """A failed test must not leak its mount."""
    if node_dir.exists() and fs_type(node_dir) == "tmpfs":
        subprocess.run(["umount", "-l", str(node_dir)], check=False)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[TaskSecrets]:
    ts = TaskSecrets(tmp_path / "run")
    try:
        yield ts
    finally:
        await ts.close()
        _force_unmount(tmp_path / "run" / NODE)


def test_fs_type_reads_mountinfo_with_escapes(tmp_path: Path) -> None:
    spaced = tmp_path / "my dir"
    (spaced / "sub" / "deeper").mkdir(parents=True)
    esc = str(spaced).replace(" ", "\\040")
    info = tmp_path / "mountinfo"
    info.write_text(
        "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"
        f"30 22 0:5 / {esc} rw - tmpfs tmpfs rw\n"
        f"31 30 0:6 / {esc}/sub rw - proc proc rw\n"
        f"32 30 0:7 / {esc}/sub rw - xfs /dev/vdb rw\n"  # mounted over the proc one: it wins
    )
    assert fs_type(tmp_path, str(info)) == "ext4"
    assert fs_type(spaced, str(info)) == "tmpfs"
    assert fs_type(spaced / "sub" / "deeper", str(info)) == "xfs"
    assert fs_type("/proc/self", "/proc/self/mountinfo") == "proc"


async def test_files_on_tmpfs_with_owner_mode_and_targets(store: TaskSecrets, tmp_path: Path) -> None:
    pw, cert = secret("db-pass", b"hunter2\n"), secret("tls", b"\x00\x01binary")
    conf = config("app.conf", b"debug=1\n")
    t = task([sref(pw), sref(cert, Name="/etc/tls/key.pem", UID="1000", GID="2000", Mode=0o400)],
             [cref(conf), cref(conf, Name="/etc/app/app.conf", Mode=0o440)])
    store.update(Assignments(full=True, tasks=[t], secrets=[pw, cert], configs=[conf]))
    mounts = await store.mounts(t)
    assert [m["Target"] for m in mounts] == ["/run/secrets/db-pass", "/etc/tls/key.pem", "/app.conf",
                                             "/etc/app/app.conf"]
    assert all(m["Type"] == "bind" and m["ReadOnly"] for m in mounts)
    assert fs_type(tmp_path / "run" / NODE) == "tmpfs"
    files = [Path(m["Source"]) for m in mounts]
    assert all(store.task_dir(t) in f.parents for f in files)
    assert files[0].read_bytes() == b"hunter2\n" and files[1].read_bytes() == b"\x00\x01binary"
    assert files[2].read_bytes() == b"debug=1\n"
    st = [f.stat() for f in files]
    assert [stat.S_IMODE(s.st_mode) for s in st] == [0o444, 0o400, 0o444, 0o440]
    assert (st[1].st_uid, st[1].st_gid) == (1000, 2000) and (st[0].st_uid, st[0].st_gid) == (0, 0)
    # Once its container is removed, the task's files go.
    store.container_created("c1", t)
    store.container_removed("c1")
    assert not store.task_dir(t).exists()
    await store.close()
    assert fs_type(tmp_path / "run") != "tmpfs" and not (tmp_path / "run" / NODE).exists()


async def test_a_killed_agents_tmpfs_is_adopted_and_leave_unmounts_it(tmp_path: Path) -> None:
    """An agent that was killed leaves its tmpfs mounted: the next agent takes it as its own (and
    unmounts it when it closes), and `swarm leave` unmounts it whoever mounted it."""
    node_dir = tmp_path / "run" / NODE
    pw = secret("db-pass", b"hunter2\n")
    t = task([sref(pw)])
    killed = TaskSecrets(tmp_path / "run")
    killed.update(Assignments(full=True, tasks=[t], secrets=[pw]))
    await killed.mounts(t)  # ... and never closed
    try:
        assert mounted_at(node_dir) == [("tmpfs", "shoal-secrets")]
        again = TaskSecrets(tmp_path / "run")
        again.update(Assignments(full=True, tasks=[t], secrets=[pw]))
        await again.mounts(t)
        assert mounted_at(node_dir) == [("tmpfs", "shoal-secrets")]  # the same one, not a second
        await again.close()
        assert mounted_at(node_dir) == [] and not node_dir.exists()

        killed = TaskSecrets(tmp_path / "run")  # killed once more, then the node leaves the swarm
        killed.update(Assignments(full=True, tasks=[t], secrets=[pw]))
        await killed.mounts(t)
        assert mounted_at(node_dir) == [("tmpfs", "shoal-secrets")]
        await TaskSecrets(tmp_path / "run").drop_node(NODE)
        assert mounted_at(node_dir) == [] and not node_dir.exists()
        await TaskSecrets(tmp_path / "run").drop_node(NODE)  # nothing there: nothing to do
    finally:
        _force_unmount(node_dir)


async def test_missing_reference_fails_the_task_and_writes_nothing(store: TaskSecrets) -> None:
    pw = secret("pw", b"x")
    t = task([sref(pw)])
    store.update(Assignments(full=True, tasks=[t]))  # the secret was not sent
    with pytest.raises(ExecutorError, match="secret pw is not available on this node"):
        await store.mounts(t)
    assert not store.task_dir(t).exists()
    c = config("c", b"y")
    t2 = task(configs=[cref(c)])
    with pytest.raises(ExecutorError, match="config c is not available"):
        await store.mounts(t2)
    # A task with no references needs nothing, not even the tmpfs.
    assert await store.mounts(task()) == []


async def test_kept_while_referenced_and_swept_on_full_sets(store: TaskSecrets) -> None:
    a, b = secret("a", b"1"), secret("b", b"2")
    t1, t2 = task([sref(a)]), task([sref(a), sref(b)])
    store.update(Assignments(full=True, tasks=[t1, t2], secrets=[a, b]))
    assert set(store.secrets) == {a.ID, b.ID}
    await store.mounts(t1)
    await store.mounts(t2)
    store.update(Assignments(full=False, tasks=[], removed=[t2.ID]))
    assert set(store.secrets) == {a.ID}  # b: no task here uses it any more
    store.update(Assignments(full=False, tasks=[t2], secrets=[b]))
    assert set(store.secrets) == {a.ID, b.ID}
    # A new session's full set without t1: its data and its leftover files go.
    store.update(Assignments(full=True, tasks=[t2], secrets=[a, b]))
    assert not store.task_dir(t1).exists() and store.task_dir(t2).exists()
    store.update(Assignments(full=True, tasks=[]))
    assert store.secrets == {} and not store.task_dir(t2).exists()


async def test_worker_hands_secrets_to_the_executor_before_tasks_start(tmp_path: Path) -> None:
    ex = HollowExecutor(start_delay_s=0)
    ts = TaskSecrets(tmp_path / "run")
    ex.secrets = ts  # type: ignore[attr-defined]
    seen: list[set[str]] = []
    create = ex.create

    async def watching_create(t: Task) -> str:
        seen.append(set(ts.secrets))
        return await create(t)

    ex.create = watching_create  # type: ignore[method-assign]

    class Reporter:
        def report(self, task_id: str, status: TaskStatus) -> None: ...


    pw = secret("pw", b"x")
    t = task([sref(pw)])
    w = Worker(ex, Reporter())  # type: ignore[arg-type]
    w.apply(Assignments(full=True, tasks=[t], secrets=[pw]))
    assert set(ts.secrets) == {pw.ID}
    ctrl: TaskController = w.controllers[t.ID]
    for _ in range(100):
        if seen:
            break
        await asyncio.sleep(0.01)
    assert seen and pw.ID in seen[0]
    await ctrl.cancel()
    await w.close()
    await ts.close()


async def test_golang_templated_config_renders_per_task(store: TaskSecrets) -> None:
    """swarmkit's placeholders: service, node, task fields, env, and the task's own secret/config
    targets; an unsupported action or a target the task lacks fails the task with the reason."""
    from shoal.models import Driver, NodeDescription, Platform

    pw, plain = secret("db-pass", b"hunter2"), config("base.conf", b"base=1")
    tmpl = config("app.conf", b"svc={{.Service.Name}} slot={{ .Task.Slot }} host={{.Node.Hostname}}"
                              b" os={{.Node.Platform.OS}}\n{{- /* note */ -}}\n"
                              b' user={{env "APP_USER"}} pw={{secret "db-pass"}} {{config "base.conf"}}')
    tmpl = Config(ID=tmpl.ID, Version=tmpl.Version, CreatedAt="", UpdatedAt="",
                  Spec=ConfigSpec(Name="app.conf", Data=tmpl.Spec.Data, Templating=Driver(Name="golang")))
    t = task([sref(pw)], [cref(plain), cref(tmpl)])
    t = Task(**{**{f: getattr(t, f) for f in t.__struct_fields__},
                "Spec": TaskSpec(ContainerSpec=ContainerSpec(Image="busybox:latest", Env=["APP_USER=ann"],
                                                             Secrets=[sref(pw)], Configs=[cref(plain), cref(tmpl)])),
                "ServiceAnnotations": {"Name": "web"}})
    store.node = NodeDescription(Hostname="host-1", Platform=Platform(OS="linux", Architecture="x86_64"))
    store.update(Assignments(full=True, tasks=[t], secrets=[pw], configs=[plain, tmpl]))
    mounts = await store.mounts(t)
    files = {m["Target"]: Path(m["Source"]) for m in mounts}
    assert files["/app.conf"].read_text() == "svc=web slot=1 host=host-1 os=linuxuser=ann pw=hunter2 base=1"

    for bad, why in ((b"{{if .X}}x{{end}}", "unsupported action"), (b'{{secret "nope"}}', "secret target nope"),
                     (b"{{.Service.Nope}}", "can't evaluate field Nope")):
        broken = Config(ID=new_id(), Version=Version(1), CreatedAt="", UpdatedAt="",
                        Spec=ConfigSpec(Name="bad", Data=base64.b64encode(bad).decode(),
                                        Templating=Driver(Name="golang")))
        tb = task(None, [cref(broken)])
        store.update(Assignments(full=False, tasks=[tb], configs=[broken]))
        with pytest.raises(ExecutorError, match=why):
            await store.mounts(tb)
