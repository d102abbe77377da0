"""Mounts the lab's engines leave under the state dir (overlay layers, container network
namespaces, shm, the data root's own bind mount, each host's UTS namespace file).

A dockerd that stops cleanly unmounts its own; after a SIGKILL they stay, and removing the state
dir under a live mount would delete through it. So: unmount deepest first, lazily, then check.
"""

from __future__ import annotations

import re
from pathlib import Path

from shoal.lab.net import run

_OCTAL = re.compile(r"\\([0-7]{3})")


def mounts_under(root: Path) -> list[str]:
    """Mount points at or below ``root`` (this process's mount namespace: the lab's only one)."""
    top = str(root).rstrip("/")
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), line.split()[4])
        if point == top or point.startswith(top + "/"):
            found.append(point)
    return found


async def unmount_all(root: Path) -> list[str]:
    """Unmount everything under ``root``; returns the mount points that stayed."""
    for _ in range(3):  # stacked mounts come off one layer per round
        points = mounts_under(root)
        if not points:
            return []
        for point in sorted(set(points), key=lambda p: p.count("/"), reverse=True):
            await run("umount", "-l", point, check=False)
    return mounts_under(root)
