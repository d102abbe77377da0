"""What a lab is made of, saved as ``<state>/lab.json`` after every step of ``up``.

Saving as we go is what lets ``down`` clean up after an ``up`` that failed half-way, and lets the
other ``shoal lab`` commands (separate processes) act on the lab that ``up`` built.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

BRIDGE = "shoal-lab0"
SUBNET_PREFIX = "10.77.0"
GATEWAY = f"{SUBNET_PREFIX}.254"
REGISTRY = f"{GATEWAY}:5000"
MAX_HOSTS = 253  # .1 … .253: .254 is the bridge, .255 the broadcast address
NETNS_PREFIX = "shoal-lab-h"  # netns and host-side veth of host N: shoal-lab-hN
MARKER = ".shoal-lab"  # `down` deletes a state dir only if the lab made it


class ProcRef(msgspec.Struct):
    """A process the lab started. ``start`` (clock ticks after boot, /proc/<pid>/stat field 22) tells
    our process from a later one that reuses the pid, so a stale record never signals a stranger."""

    pid: int
    start: int


class HostState(msgspec.Struct):
    index: int
    name: str  # host-N: also its hostname (own UTS namespace), so `node ls` tells hosts apart
    addr: str  # 10.77.0.N
    netns: str  # shoal-lab-hN, under /run/netns
    veth: str  # the host side, on the bridge, in the root namespace
    dir: str  # <state>/hN
    engine: str  # unix://<state>/hN/docker.sock
    api: str  # unix://<state>/hN/shoal.sock: the Shoal daemon's Docker-compatible API
    dockerd: ProcRef | None = None
    daemon: ProcRef | None = None
    node_id: str = ""

    @property
    def path(self) -> Path:
        return Path(self.dir)

    @property
    def netns_path(self) -> str:
        return f"/run/netns/{self.netns}"

    @property
    def uts_path(self) -> str:
        return f"{self.dir}/uts"


class LabState(msgspec.Struct):
    state_dir: str
    hosts: list[HostState]
    preload: list[str]
    join: bool
    managers: int = 1  # hosts 1..managers are managers (more than one: the store is etcd)
    bridge: str = BRIDGE
    gateway: str = GATEWAY
    registry: str = REGISTRY
    registry_proc: ProcRef | None = None
    complete: bool = False  # `up` finished

    @property
    def manager(self) -> HostState:
        return self.hosts[0]


def new_host(state_dir: Path, index: int) -> HostState:
    d = state_dir / f"h{index}"
    return HostState(
        index=index, name=f"host-{index}", addr=f"{SUBNET_PREFIX}.{index}", netns=f"{NETNS_PREFIX}{index}",
        veth=f"{NETNS_PREFIX}{index}", dir=str(d), engine=f"unix://{d}/docker.sock", api=f"unix://{d}/shoal.sock",
    )


def state_file(state_dir: Path) -> Path:
    return state_dir / "lab.json"


def load(state_dir: Path) -> LabState | None:
    try:
        return msgspec.json.decode(state_file(state_dir).read_bytes(), type=LabState)
    except FileNotFoundError:
        return None
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return None


def save(state: LabState) -> None:
    """Write atomically: a reader (another `shoal lab` command) never sees half a file."""
    path = state_file(Path(state.state_dir))
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(msgspec.json.format(msgspec.json.encode(state)))
    os.replace(tmp, path)
