"""The node's secrets and configs, and the files that carry them into a task's container.

The manager sends a node only the secrets and configs its tasks reference (``Assignments.secrets``
/ ``configs``, with their data); this store keeps them by ID for as long as a task here references
them. When a task's container is created, each reference becomes a file in a per-task directory
under ``<run dir>/<node ID>/``, which is a tmpfs (mounted here if it is not on one already), so
secret data is never written to a disk; the files are bind-mounted read-only into the container:
secrets at ``/run/secrets/<File.Name>`` and configs at ``/<File.Name>`` (an absolute File.Name is
used as it is), as moby's executor does, owned by File.UID/GID with File.Mode. A task's files go
when its container is removed; a full assignment set also sweeps directories of tasks that are gone
(left by an agent that was killed).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from shoal.agent.executor.base import ExecutorError
from shoal.agent.template import GOLANG, TemplateError, render
from shoal.dispatcher.protocol import Assignments
from shoal.models import Config, ConfigReference, NodeDescription, Secret, SecretReference, Task

log = logging.getLogger(__name__)

DEFAULT_RUN_DIR = "/run/shoal"
SECRETS_DIR = "/run/secrets"  # where a relative secret target goes in the container (moby's)
CONFIGS_DIR = "/"  # and a relative config target
DEFAULT_MODE = 0o444
TMPFS_OPTIONS = "mode=0700,nosuid,nodev,noexec"


def _unescape(field: str) -> str:
    """Mount points in /proc/self/mountinfo escape space, tab, newline and backslash as ``\\ooo``."""
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 4 <= len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


TMPFS_SOURCE = "shoal-secrets"  # the mount's source name: how a tmpfs of ours is known again


def mounted_at(path: str | Path, mountinfo: str = "/proc/self/mountinfo") -> list[tuple[str, str]]:
    """(type, source) of each filesystem mounted exactly at ``path``, oldest first."""
    real = os.path.realpath(path)
    found = []
    with open(mountinfo, encoding="utf-8") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, rest = left.split(), right.split()
            if len(fields) >= 5 and len(rest) >= 2 and _unescape(fields[4]) == real:
                found.append((rest[0], _unescape(rest[1])))
    return found


def fs_type(path: str | Path, mountinfo: str = "/proc/self/mountinfo") -> str:
    """The type of the filesystem ``path`` (which must exist) lives on: the last-mounted, deepest
    mount point containing it."""
    real = os.path.realpath(path)
    best, best_type = -1, ""
    with open(mountinfo, encoding="utf-8") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            if len(fields) < 5 or not right:
                continue
            mnt = _unescape(fields[4])
            inside = real == mnt or real.startswith(mnt.rstrip("/") + "/")
            if inside and len(mnt) >= best:
                best, best_type = len(mnt), right.split()[0]
    return best_type


def _file(ref: SecretReference | ConfigReference, default_name: str) -> tuple[str, int, int, int]:
    """(name, uid, gid, mode) of a reference's file target, with Docker's defaults."""
    f = ref.File or {}
    name = str(f.get("Name") or default_name)
    try:
        uid, gid = int(f.get("UID") or 0), int(f.get("GID") or 0)
    except (TypeError, ValueError):
        raise ExecutorError(f"invalid file owner in the reference to {default_name}") from None
    mode = f.get("Mode", DEFAULT_MODE)
    return name, uid, gid, int(mode) if isinstance(mode, int) else DEFAULT_MODE


def secret_target(name: str) -> str:
    return name if os.path.isabs(name) else os.path.join(SECRETS_DIR, name)


def config_target(name: str) -> str:
    return name if os.path.isabs(name) else os.path.join(CONFIGS_DIR, name)


def _refs(task: Task) -> tuple[list[SecretReference], list[ConfigReference]]:
    cs = task.Spec.ContainerSpec
    if cs is None:
        return [], []
    return list(cs.Secrets or []), list(cs.Configs or [])


class TaskSecrets:
    """Secrets and configs by ID, and the per-task files made of them. One per agent (executor)."""

    def __init__(self, run_dir: str | Path = DEFAULT_RUN_DIR) -> None:
        self.run_dir = Path(run_dir)
        self.secrets: dict[str, Secret] = {}
        self.configs: dict[str, Config] = {}
        # Which secret and config IDs each known task references: they are kept while one does.
        self._uses: dict[str, tuple[set[str], set[str]]] = {}
        self._container_task: dict[str, str] = {}
        self._node_of: dict[str, str] = {}  # task ID → node ID, for the files' directory
        self._mounted: set[Path] = set()  # node directories this object mounted a tmpfs on
        self._ready: set[Path] = set()
        self._lock = asyncio.Lock()
        self.node_id = ""
        self.node: NodeDescription | None = None  # this node as the agent described it (templates' .Node)

    # ------------------------------------------------------------------ assignments

    def update(self, msg: Assignments) -> None:
        """Take a message's secrets and configs; forget those no task here references any more.
        Called by the worker before it starts the message's tasks."""
        if msg.full:
            self._uses.clear()
        for tid in msg.removed:
            self._uses.pop(tid, None)
        for task in msg.tasks:
            secrets, configs = _refs(task)
            self._uses[task.ID] = ({r.SecretID for r in secrets}, {r.ConfigID for r in configs})
        for s in msg.secrets:
            self.secrets[s.ID] = s
        for c in msg.configs:
            self.configs[c.ID] = c
        used_s: set[str] = set()
        used_c: set[str] = set()
        for s_ids, c_ids in self._uses.values():
            used_s |= s_ids
            used_c |= c_ids
        for sid in [k for k in self.secrets if k not in used_s]:
            del self.secrets[sid]
        for cid in [k for k in self.configs if k not in used_c]:
            del self.configs[cid]
        if msg.full:
            self._sweep({t.ID for t in msg.tasks})

    def _sweep(self, keep: set[str]) -> None:
        """Remove task directories of tasks no longer assigned here (an agent killed mid-way leaves them)."""
        for node_dir in self._ready:
            with contextlib.suppress(FileNotFoundError):
                for entry in node_dir.iterdir():
                    if entry.is_dir() and entry.name not in keep:
                        shutil.rmtree(entry, ignore_errors=True)

    # ------------------------------------------------------------------ files and mounts

    def task_dir(self, task: Task) -> Path:
        return self.run_dir / (task.NodeID or "_") / task.ID

    async def _prepare(self, node_dir: Path) -> None:
        """Make sure ``node_dir`` exists and is on a tmpfs: mount one if it is not (needs root)."""
        if node_dir in self._ready:
            return
        async with self._lock:
            if node_dir in self._ready:
                return
            os.makedirs(node_dir, mode=0o700, exist_ok=True)
            if ("tmpfs", TMPFS_SOURCE) in mounted_at(node_dir):
                self._mounted.add(node_dir)  # ours, left by an agent that was killed: ours to unmount
            elif fs_type(node_dir) != "tmpfs":
                proc = await asyncio.create_subprocess_exec(
                    "mount", "-t", "tmpfs", "-o", TMPFS_OPTIONS, TMPFS_SOURCE, str(node_dir),
                    stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
                )
                _, err = await proc.communicate()
                if proc.returncode != 0:
                    # Never fall back to a disk: the task fails with the reason instead.
                    raise ExecutorError(
                        f"cannot mount a tmpfs for secrets at {node_dir}: {err.decode(errors='replace').strip()}"
                    )
                self._mounted.add(node_dir)
            self._ready.add(node_dir)

    @staticmethod
    def _write(path: Path, data: bytes, uid: int, gid: int, mode: int) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, data)
            os.fchown(fd, uid, gid)
            os.fchmod(fd, mode)
        finally:
            os.close(fd)

    async def mounts(self, task: Task) -> list[dict[str, Any]]:
        """Write the task's secret and config files; the read-only bind mounts that expose them.
        A reference this node does not hold fails the task (the manager sends them with the task)."""
        secrets, configs = _refs(task)
        if not secrets and not any(r.File is not None or r.Runtime is None for r in configs):
            return []
        files: list[tuple[str, bytes, str, int, int, int]] = []  # (host name, data, target, uid, gid, mode)
        for i, sref in enumerate(secrets):
            secret = self.secrets.get(sref.SecretID)
            if secret is None:
                raise ExecutorError(f"secret {sref.SecretName or sref.SecretID} is not available on this node")
            name, uid, gid, mode = _file(sref, secret.Spec.Name)
            files.append((f"secret-{i}-{secret.ID}", base64.b64decode(secret.Spec.Data), secret_target(name),
                          uid, gid, mode))
        for i, cref in enumerate(configs):
            if cref.File is None and cref.Runtime is not None:
                continue  # a runtime target (credential spec) is not a file
            config = self.configs.get(cref.ConfigID)
            if config is None:
                raise ExecutorError(f"config {cref.ConfigName or cref.ConfigID} is not available on this node")
            name, uid, gid, mode = _file(cref, config.Spec.Name)
            data = base64.b64decode(config.Spec.Data)
            if config.Spec.Templating is not None and config.Spec.Templating.Name == GOLANG:
                data = self._render(task, config, data)
            files.append((f"config-{i}-{config.ID}", data, config_target(name), uid, gid, mode))
        node_dir = self.run_dir / (task.NodeID or "_")
        await self._prepare(node_dir)
        try:
            return self._write_files(self.task_dir(task), files)
        except OSError as e:
            self.release(task.ID, task.NodeID)
            raise ExecutorError(f"cannot write secret files for task {task.ID}: {e}") from None

    def _render(self, task: Task, config: Config, data: bytes) -> bytes:
        """A templated config, rendered for this task (swarmkit's template package); a template
        that does not render fails the task with the reason."""
        secrets, configs = _refs(task)
        cs = task.Spec.ContainerSpec
        env = dict(e.split("=", 1) if "=" in e else (e, "") for e in (cs.Env if cs is not None else None) or ())

        def secret(target: str) -> str:
            for ref in secrets:
                if ref.SecretID in self.secrets and _file(ref, self.secrets[ref.SecretID].Spec.Name)[0] == target:
                    return base64.b64decode(self.secrets[ref.SecretID].Spec.Data).decode()
            raise TemplateError(f"secret target {target} not found")

        def config_(target: str) -> str:
            for ref in configs:
                if ref.ConfigID in self.configs and _file(ref, self.configs[ref.ConfigID].Spec.Name)[0] == target:
                    return base64.b64decode(self.configs[ref.ConfigID].Spec.Data).decode()
            raise TemplateError(f"config target {target} not found")

        node = self.node or NodeDescription()
        platform = node.Platform
        ann = task.ServiceAnnotations or {}
        service_name = str(ann.get("Name", ""))
        ctx = {
            "Service": {"ID": task.ServiceID, "Name": service_name, "Labels": ann.get("Labels") or {}},
            "Node": {"ID": task.NodeID or self.node_id, "Hostname": node.Hostname,
                     "Platform": {"OS": platform.OS if platform else "",
                                  "Architecture": platform.Architecture if platform else ""}},
            "Task": {"ID": task.ID, "Name": task.Name or f"{service_name}.{task.Slot}.{task.ID}", "Slot": task.Slot},
        }
        try:
            return render(data.decode(), ctx, {"env": lambda k: env.get(k, ""), "secret": secret,
                                               "config": config_}).encode()
        except (TemplateError, UnicodeDecodeError) as e:
            raise ExecutorError(f"failed to render config {config.Spec.Name}: {e}") from None

    def _write_files(self, tdir: Path, files: list[tuple[str, bytes, str, int, int, int]]) -> list[dict[str, Any]]:
        # Small writes to a tmpfs: cheaper inline than a thread hop.
        tdir.mkdir(mode=0o700, exist_ok=True)
        out: list[dict[str, Any]] = []
        for host_name, data, target, uid, gid, mode in files:
            path = tdir / host_name
            self._write(path, data, uid, gid, mode)
            out.append({"Type": "bind", "Source": str(path), "Target": target, "ReadOnly": True})
        return out

    # ------------------------------------------------------------------ cleanup

    def container_created(self, container_id: str, task: Task) -> None:
        """Remember whose files a container mounts, so its removal can clean them."""
        self._container_task[container_id] = task.ID
        self._node_of[task.ID] = task.NodeID

    def container_removed(self, container_id: str) -> None:
        tid = self._container_task.pop(container_id, None)
        if tid is not None and tid not in self._container_task.values():
            self.release(tid, self._node_of.pop(tid, ""))

    def release(self, task_id: str, node_id: str) -> None:
        """Delete a task's files (its container is gone, or was never made)."""
        shutil.rmtree(self.run_dir / (node_id or "_") / task_id, ignore_errors=True)

    async def close(self) -> None:
        """Unmount the tmpfs this agent mounted. Lazily: running containers keep their bind mounts
        (they hold the filesystem), and a restarted agent writes fresh files for what it creates."""
        for node_dir in list(self._mounted):
            await _unmount(node_dir)
            self._mounted.discard(node_dir)
        self._ready.clear()

    async def drop_node(self, node_id: str) -> None:
        """``swarm leave``, once the node's containers are gone: its directory goes, with the tmpfs
        of ours on it whichever agent mounted it (one that was killed leaves it mounted)."""
        node_dir = self.run_dir / node_id
        while ("tmpfs", TMPFS_SOURCE) in mounted_at(node_dir):
            if not await _unmount(node_dir):
                return
        self._mounted.discard(node_dir)
        self._ready.discard(node_dir)
        shutil.rmtree(node_dir, ignore_errors=True)


async def _unmount(node_dir: Path) -> bool:
    """Lazily (a running container's bind mount holds the filesystem until it goes); then the
    empty mount point goes too."""
    proc = await asyncio.create_subprocess_exec(
        "umount", "-l", str(node_dir), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        log.warning("cannot unmount %s: %s", node_dir, err.decode(errors="replace").strip())
        return False
    with contextlib.suppress(OSError):
        os.rmdir(node_dir)
    return True
