"""Starting and stopping the lab's processes, always by pid, never by name.

A process is ours when its pid *and* start time match what we recorded (see ``ProcRef``); a zombie
counts as gone. Daemons start in their own session so they outlive ``shoal lab up``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

from shoal.lab.state import ProcRef

# Popen objects of the daemons this process started, so their exit is reaped here (a killed child
# would otherwise stay a zombie for as long as a long-lived caller, e.g. a pytest session, runs).
_children: dict[int, subprocess.Popen[bytes]] = {}


def _stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time) of ``pid``, or None if there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[19])


def _reap() -> None:
    for pid, p in list(_children.items()):
        if p.poll() is not None:
            del _children[pid]


def alive(ref: ProcRef | None) -> bool:
    if ref is None:
        return False
    _reap()
    st = _stat(ref.pid)
    return st is not None and st[0] not in ("Z", "X") and st[1] == ref.start


def ref_of(pid: int) -> ProcRef | None:
    st = _stat(pid)
    return ProcRef(pid, st[1]) if st is not None and st[0] not in ("Z", "X") else None


def spawn(argv: Sequence[str], log: Path, env: dict[str, str] | None = None) -> ProcRef:
    """Start a daemon detached from us (own session, stdin closed, output appended to ``log``)."""
    with open(log, "ab") as out:
        p = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True, env=env,
        )
    _children[p.pid] = p
    st = _stat(p.pid)
    assert st is not None  # our unreaped child: at worst a zombie, still listed
    return ProcRef(p.pid, st[1])


def send(ref: ProcRef | None, sig: int) -> bool:
    """Signal ``ref`` if it is still our process; False if it is already gone."""
    if not alive(ref):
        return False
    assert ref is not None
    with contextlib.suppress(ProcessLookupError):
        os.kill(ref.pid, sig)
    return True


async def wait_gone(refs: Iterable[ProcRef], within_s: float) -> bool:
    """Wait until none of ``refs`` is alive; False if some still are after ``within_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    pending = list(refs)
    while pending:
        pending = [r for r in pending if alive(r)]
        if not pending:
            break
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def stop(ref: ProcRef | None, sig: int = signal.SIGTERM, grace_s: float = 10.0) -> bool:
    """Signal ``ref`` and wait for it to exit, SIGKILLing it after ``grace_s``. True if it was running."""
    if not send(ref, sig):
        return False
    assert ref is not None
    if not await wait_gone([ref], grace_s) and send(ref, signal.SIGKILL):
        await wait_gone([ref], 5.0)
    return True


def in_netns(netns_path: str) -> list[ProcRef]:
    """Every process living in the network namespace bound at ``netns_path``.

    Used by ``down`` to sweep what a host's engine left behind when it did not stop cleanly
    (containerd, shims, docker-proxy): nothing outside the lab lives in a lab host's namespace."""
    try:
        st = os.stat(netns_path)
        target = (st.st_dev, st.st_ino)
    except OSError:
        return []
    found: list[ProcRef] = []
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            st = os.stat(f"/proc/{entry.name}/ns/net")
            if (st.st_dev, st.st_ino) != target:
                continue
        except OSError:
            continue
        ref = ref_of(int(entry.name))
        if ref is not None:
            found.append(ref)
    return found


def in_cgroups(container_ids: Iterable[str]) -> list[ProcRef]:
    """The processes of the given containers, found through their cgroups (cgroup v1 or v2).

    A container outlives a dockerd killed with SIGKILL; its cgroup still names every process in it."""
    found: dict[int, ProcRef] = {}
    for cid in container_ids:
        for procs in (*Path("/sys/fs/cgroup").glob(f"*/docker/{cid}/cgroup.procs"),
                      Path(f"/sys/fs/cgroup/docker/{cid}/cgroup.procs")):
            try:
                pids = [int(x) for x in procs.read_text().split()]
            except (OSError, ValueError):
                continue
            for pid in pids:
                ref = ref_of(pid)
                if ref is not None:
                    found[pid] = ref
    return list(found.values())
