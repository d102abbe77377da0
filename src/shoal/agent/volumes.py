"""The node's ``nas`` / ``ossfs`` shared volumes: mounted by the agent, bound into the container.

Kubernetes' kubelet model, not a Docker volume plugin: a legacy plugin's socket in
/run/docker/plugins is cached by every dockerd that once saw it, and once its server stops each
``docker volume ls`` there waits 15 s (docs/architecture.md). So the engine never hears of these
volumes: before a task's container is created, each of its ``volume`` mounts whose driver is
nas/ossfs is mounted here with ``sshfs`` (the options' meaning is shoal/sharedvolumes.py) under
``<root>/mnt/<driver>/<name>`` and becomes a plain bind of that directory.

A mount is shared by the tasks on the node that use the volume, reference-counted by task ID; the
last task's container *removed* (not merely stopped: a stopped container still binds the directory
and may restart) unmounts it. The counts and the container → task map are kept in
``<root>/volumes.json``, so an agent that restarts carries on; when the agent stops, mounts stay
with their containers (sshfs runs on its own, detached from the agent).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shoal.sharedvolumes import (
    ENV_DEFAULTS,
    Remote,
    VolumeError,
    parse_defaults,
    parse_options,
    shared_driver,
    with_defaults,
)

log = logging.getLogger(__name__)

MOUNT_TIMEOUT_S = 20.0  # sftp + sshfs, each: ssh's own ConnectTimeout (10 s) fails first on a dead host
PROBE_TIMEOUT_S = 5.0  # a stat of a live sshfs mount answers in milliseconds


@dataclass
class _Volume:
    remote: str  # Remote.describe() of the mount: a task that wants another server for this name is refused
    users: set[str] = field(default_factory=set)  # task IDs


def available() -> str:
    """Why shared volumes cannot be mounted on this node, or "" when they can."""
    for tool in ("sshfs", "sftp", "fusermount"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/install-deps.sh installs it)"
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    return ""


class SharedVolumes:
    """The node's nas/ossfs mounts under ``root`` (the daemon's ``<data-root>/volumes``). One per node."""

    def __init__(self, root: Path, *, defaults: str | None = None, ssh_options: tuple[str, ...] = ()) -> None:
        self.root = root
        self.ssh_options = ssh_options  # extra `-o` options for ssh (tests: a throwaway known_hosts)
        self.defaults: dict[str, str] = {}
        self.defaults_error = ""
        try:
            self.defaults = parse_defaults(os.environ.get(ENV_DEFAULTS, "") if defaults is None else defaults)
        except VolumeError as e:  # said at every use: the node is misconfigured, the task must say so
            self.defaults_error = str(e)
            log.warning("%s", e)
        self._state = root / "volumes.json"
        self.volumes: dict[str, _Volume] = {}  # "<driver>/<name>" → its mount
        self._containers: dict[str, str] = {}  # container ID → task ID
        self._locks: dict[str, asyncio.Lock] = {}  # one per volume: a slow server holds up only its own
        self._load()

    # ------------------------------------------------------------------ state

    def _load(self) -> None:
        try:
            data = json.loads(self._state.read_text())
        except FileNotFoundError:
            return
        except ValueError as e:
            log.warning("shared volumes: %s unreadable (%s); starting with no record", self._state, e)
            return
        for key, v in (data.get("volumes") or {}).items():
            self.volumes[key] = _Volume(remote=str(v.get("remote", "")), users=set(v.get("users") or ()))
        self._containers = {str(k): str(v) for k, v in (data.get("containers") or {}).items()}

    def _save(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self._state.with_suffix(".tmp")
        tmp.write_text(json.dumps({
            "volumes": {k: {"remote": v.remote, "users": sorted(v.users)} for k, v in self.volumes.items()},
            "containers": self._containers}))
        tmp.replace(self._state)  # never a half-written file

    def mountpoint(self, driver: str, name: str) -> Path:
        return self.root / "mnt" / driver / name

    def mounted(self) -> list[Path]:
        """The mounts under ``root`` the kernel has now (whatever the record says)."""
        prefix = str(self.root / "mnt") + "/"
        return [Path(p) for p in _mount_points() if p.startswith(prefix)]

    # ------------------------------------------------------------------ the executor's side

    async def bind_mounts(self, task_id: str, mounts: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """A container's ``HostConfig.Mounts`` with each nas/ossfs volume mounted here and bound;
        other mounts unchanged. On failure nothing stays mounted for ``task_id`` and the error says
        which volume and why."""
        out: list[dict[str, Any]] = []
        try:
            for m in mounts:
                shared = shared_driver(m.get("VolumeOptions")) if m.get("Type") == "volume" else None
                if shared is None:
                    out.append(m)
                    continue
                driver, opts = shared
                mp = await self.acquire(task_id, driver, str(m.get("Source") or ""), opts)
                out.append({"Type": "bind", "Source": str(mp), "Target": m.get("Target", ""),
                            "ReadOnly": bool(m.get("ReadOnly"))})
        except BaseException:
            await self.release(task_id)
            raise
        return out

    def uses(self, task_id: str) -> bool:
        return any(task_id in v.users for v in self.volumes.values())

    def container_created(self, container_id: str, task_id: str) -> None:
        self._containers[container_id] = task_id
        self._save()

    async def container_removed(self, container_id: str) -> None:
        task_id = self._containers.pop(container_id, None)
        if task_id is None:
            return
        self._save()
        if task_id not in self._containers.values():  # an agent restarted mid-create may have made two
            await self.release(task_id)

    async def sweep(self, assigned: set[str]) -> None:
        """Let go of tasks neither assigned here (a full assignment set) nor holding a container: an
        agent killed between the mount and the container's create leaves such a user behind."""
        holding = set(self._containers.values())
        stale = {u for v in self.volumes.values() for u in v.users} - assigned - holding
        for task_id in sorted(stale):
            log.info("shared volumes: task %s is gone from this node; releasing its mounts", task_id)
            await self.release(task_id)

    # ------------------------------------------------------------------ mounts

    async def acquire(self, task_id: str, driver: str, name: str, opts: dict[str, str]) -> Path:
        """Mount the volume (first user on the node) and count ``task_id`` as a user; the mountpoint."""
        if self.defaults_error:
            raise VolumeError(f"{driver} volume {name}: {self.defaults_error}")
        remote = parse_options(driver, name, with_defaults(self.defaults, opts))
        why = available()
        if why:
            raise VolumeError(f"{driver} volume {name}: cannot mount on this node: {why}")
        key, mp = f"{driver}/{name}", self.mountpoint(driver, name)
        async with self._locks.setdefault(key, asyncio.Lock()):
            v = self.volumes.get(key)
            others = (v.users - {task_id}) if v is not None else set()
            if v is not None and others and v.remote != remote.describe():
                raise VolumeError(f"{driver} volume {name}: mounted on this node from {v.remote} for "
                                  f"{len(others)} other task(s); this task wants {remote.describe()}")
            if str(mp) in _mount_points():
                if (v is None or v.remote != remote.describe()) or not await _alive(mp):
                    # another server's mount with no users, or an sshfs that died: start afresh
                    await _unmount(mp, lazy=True)
            if str(mp) not in _mount_points():
                await self._sshfs(driver, name, remote, mp)
            if v is None or v.remote != remote.describe():
                v = self.volumes[key] = _Volume(remote=remote.describe(), users=others)
            v.users.add(task_id)
            self._save()
        return mp

    async def release(self, task_id: str) -> None:
        """``task_id`` no longer uses its volumes: unmount those it was the last user of. Never raises
        (a container removal must not fail on it); a mount that will not go is logged and kept."""
        for key, v in list(self.volumes.items()):
            if task_id not in v.users:
                continue
            async with self._locks.setdefault(key, asyncio.Lock()):
                v.users.discard(task_id)
                if not v.users:
                    driver, _, name = key.partition("/")
                    mp = self.mountpoint(driver, name)
                    try:
                        if str(mp) in _mount_points():
                            await _unmount(mp)
                        _rmdir(mp)
                        del self.volumes[key]
                    except VolumeError as e:
                        log.warning("shared volume %s: %s", key, e)
                self._save()

    def _ssh_options(self, remote: Remote) -> list[str]:
        opts = ["BatchMode=yes", "ConnectTimeout=10"]  # no prompt can be answered here: fail instead
        if remote.identity:
            opts += [f"IdentityFile={remote.identity}", "IdentitiesOnly=yes"]
        if remote.known_hosts:  # the server's host key, when the node's own known_hosts lacks it
            opts.append(f"UserKnownHostsFile={remote.known_hosts}")
        return [a for o in (*opts, *self.ssh_options) for a in ("-o", o)]

    async def _sshfs(self, driver: str, name: str, remote: Remote, mp: Path) -> None:
        what = f"{driver} volume {name}: mount {remote.describe()}"
        # The volume's directory (and the bucket's) on the server, as the local driver makes its
        # own: over sftp, which is all sshfs needs from the server too ("-": an existing one is fine).
        batch = "".join(f'-mkdir "{d}"\n' for d in remote.made).encode()
        await _run(["sftp", "-b", "-", "-P", str(remote.port), *self._ssh_options(remote), remote.login], what,
                   stdin=batch)
        _mkdir(mp)
        args = ["sshfs", remote.target(), str(mp), "-p", str(remote.port),
                # the container's users read and write; the server's permissions decide
                "-o", "allow_other", "-o", "default_permissions",
                # reconnect after a network blip instead of leaving a dead mount behind
                "-o", "reconnect", "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=3",
                *self._ssh_options(remote)]
        try:
            await _run(args, what)
        except VolumeError:
            _rmdir(mp)
            raise
        log.info("%s: mounted on %s", what, mp)


def _unescape(field: str) -> str:
    """/proc/self/mountinfo escapes space, tab, newline and backslash as ``\\ooo``."""
    return field.encode().decode("unicode_escape") if "\\" in field else field


def _mount_points(mountinfo: str = "/proc/self/mountinfo") -> set[str]:
    """From the mount table: a stat of a FUSE mount whose sshfs died fails or hangs, the table does not."""
    try:
        with open(mountinfo, encoding="utf-8") as f:
            return {_unescape(line.split(" ", 5)[4]) for line in f}
    except OSError:
        return set()


async def _alive(mp: Path) -> bool:
    """Whether the sshfs behind ``mp`` answers (its process gone: ENOTCONN at once)."""
    try:
        await asyncio.wait_for(asyncio.to_thread(os.stat, mp), PROBE_TIMEOUT_S)
        return True
    except TimeoutError:
        return False
    except OSError as e:
        return e.errno not in (errno.ENOTCONN, errno.EIO)


async def _unmount(mp: Path, *, lazy: bool = False) -> None:
    await _run(["fusermount", "-u", *(["-z"] if lazy else []), str(mp)], f"unmount {mp}")


def _mkdir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)


def _rmdir(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.rmdir()


async def _run(args: list[str], what: str, stdin: bytes | None = None) -> None:
    proc = await asyncio.create_subprocess_exec(
        *args, stdin=asyncio.subprocess.DEVNULL if stdin is None else asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(stdin), MOUNT_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise VolumeError(f"{what}: no answer in {MOUNT_TIMEOUT_S:.0f} s") from None
    if proc.returncode != 0:
        text = " ".join(out.decode(errors="replace").split())[:400]
        raise VolumeError(f"{what} failed: {text or f'exit {proc.returncode}'}")


__all__ = ["SharedVolumes", "VolumeError", "available"]
