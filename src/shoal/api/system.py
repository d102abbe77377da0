"""System routes: ``/_ping``, ``/version`` and ``/info``, in the shapes the docker CLI prints."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import sys
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web

import shoal
from shoal.api import clusterinfo
from shoal.api.common import ManagerAPI, json_response, manager_of
from shoal.models import NodeRole, TaskState
from shoal.store.autolock import SWARM_LOCKED

_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}.get(
    platform.machine(), platform.machine()
)
_GO_VERSION = f"python{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"
_GIT_COMMIT = os.environ.get("SHOAL_GIT_COMMIT", "unknown")
# When this copy of Shoal was installed: the nearest thing to a build time a Python package has.
_BUILD_TIME = _dt.datetime.fromtimestamp(Path(shoal.__file__).stat().st_mtime, _dt.UTC).strftime(
    "%Y-%m-%dT%H:%M:%S.000000000+00:00"
)
SERVER_HEADER = f"Shoal/{shoal.__version__}"


def swarm_status(manager: ManagerAPI) -> str:
    if not manager.in_swarm:
        return "inactive"
    return "active/manager" if manager.is_manager else "active/worker"


async def ping(request: web.Request) -> web.Response:
    manager = manager_of(request)
    headers = {
        "API-Version": shoal.API_VERSION,
        "Docker-Experimental": "false",
        "OSType": "linux",
        "Swarm": swarm_status(manager),
        "Cache-Control": "no-cache, no-store, must-revalidate",
        "Pragma": "no-cache",
    }
    body = b"" if request.method == "HEAD" else b"OK"
    return web.Response(body=body, headers=headers, content_type="text/plain", charset="utf-8")


async def version(request: web.Request) -> web.Response:
    manager = manager_of(request)
    kernel = manager.engine_info.get("KernelVersion") or platform.release()
    details = {
        "ApiVersion": shoal.API_VERSION,
        "Arch": _ARCH,
        "BuildTime": _BUILD_TIME,
        "Experimental": "false",
        "GitCommit": _GIT_COMMIT,
        "GoVersion": _GO_VERSION,
        "KernelVersion": kernel,
        "MinAPIVersion": shoal.MIN_API_VERSION,
        "Os": "linux",
    }
    components: list[dict[str, Any]] = [{"Name": "Engine", "Version": shoal.__version__, "Details": details}]
    engine_version = manager.engine_info.get("ServerVersion")
    if engine_version:
        # The container engine underneath, so `docker version` shows what actually runs containers.
        components.append({"Name": "Docker Engine (node runtime)", "Version": engine_version, "Details": {}})
    return json_response(
        {
            "Platform": {"Name": "Shoal"},
            "Components": components,
            "Version": shoal.__version__,
            "ApiVersion": shoal.API_VERSION,
            "MinAPIVersion": shoal.MIN_API_VERSION,
            "GitCommit": _GIT_COMMIT,
            "GoVersion": _GO_VERSION,
            "Os": "linux",
            "Arch": _ARCH,
            "KernelVersion": kernel,
            "BuildTime": _BUILD_TIME,
        }
    )


# Fields `docker info` reads, for when the engine's own /info is unavailable (e.g. in tests).
_INFO_DEFAULTS: dict[str, Any] = {
    "ID": "",
    "Containers": 0,
    "ContainersRunning": 0,
    "ContainersPaused": 0,
    "ContainersStopped": 0,
    "Images": 0,
    "Driver": "",
    "DriverStatus": [],
    "Plugins": {"Volume": [], "Network": [], "Authorization": None, "Log": []},
    "MemoryLimit": False,
    "SwapLimit": False,
    "CpuCfsPeriod": False,
    "CpuCfsQuota": False,
    "CPUShares": False,
    "CPUSet": False,
    "PidsLimit": False,
    "IPv4Forwarding": True,
    "BridgeNfIptables": True,
    "BridgeNfIp6tables": True,
    "Debug": False,
    "NFd": 0,
    "OomKillDisable": False,
    "NGoroutines": 0,
    "SystemTime": "",
    "LoggingDriver": "",
    "CgroupDriver": "",
    "CgroupVersion": "",
    "NEventsListener": 0,
    "KernelVersion": platform.release(),
    "OperatingSystem": "",
    "OSVersion": "",
    "OSType": "linux",
    "Architecture": platform.machine(),
    "IndexServerAddress": "https://index.docker.io/v1/",
    "RegistryConfig": None,
    "NCPU": os.cpu_count() or 1,
    "MemTotal": 0,
    "GenericResources": None,
    "DockerRootDir": "",
    "HttpProxy": "",
    "HttpsProxy": "",
    "NoProxy": "",
    "Name": platform.node(),
    "Labels": [],
    "ExperimentalBuild": False,
    "Runtimes": {},
    "DefaultRuntime": "",
    "LiveRestoreEnabled": False,
    "Isolation": "",
    "InitBinary": "",
    "ContainerdCommit": {"ID": "", "Expected": ""},
    "RuncCommit": {"ID": "", "Expected": ""},
    "InitCommit": {"ID": "", "Expected": ""},
    "SecurityOptions": [],
    "Warnings": None,
}


def _swarm_info(manager: ManagerAPI) -> dict[str, Any]:
    store = manager.store
    cluster = store.cluster()
    if manager.in_swarm and not manager.is_manager:
        # A worker holds no cluster state: it only knows itself and where its manager is.
        return {
            "NodeID": manager.node_id or "",
            "NodeAddr": manager.addr,
            "LocalNodeState": "active",
            "ControlAvailable": False,
            "Error": "",
            "RemoteManagers": [{"NodeID": "", "Addr": getattr(manager, "manager_addr", "")}],
        }
    if getattr(manager, "locked", False):  # autolock: as moby's Info for a locked node
        return {
            "NodeID": "",
            "NodeAddr": manager.addr,
            "LocalNodeState": "locked",
            "ControlAvailable": False,
            "Error": SWARM_LOCKED,
            "RemoteManagers": None,
        }
    loading = getattr(manager, "loading", "")
    if loading:
        return {
            "NodeID": manager.node_id or "",
            "NodeAddr": manager.addr,
            "LocalNodeState": "pending",
            "ControlAvailable": False,
            "Error": loading,
            "RemoteManagers": None,
        }
    broken = getattr(manager, "broken", "")
    if broken:
        return {
            "NodeID": manager.node_id or "",
            "NodeAddr": manager.addr,
            "LocalNodeState": "error",
            "ControlAvailable": False,
            "Error": broken,
            "RemoteManagers": None,
        }
    if not manager.in_swarm or cluster is None:
        return {
            "NodeID": "",
            "NodeAddr": "",
            "LocalNodeState": "inactive",
            "ControlAvailable": False,
            "Error": "",
            "RemoteManagers": None,
        }
    nodes = store.list("node")
    managers = [n for n in nodes if n.Spec.Role is NodeRole.MANAGER]
    remote = [
        {
            "NodeID": m.ID,
            "Addr": (m.ManagerStatus.Addr if m.ManagerStatus and m.ManagerStatus.Addr else f"{m.Status.Addr}:2377"),
        }
        for m in managers
    ]
    cluster_info = msgspec.to_builtins(cluster)
    cluster_info.pop("UnlockKey", None)  # only GET /swarm/unlockkey shows it
    cluster_info.pop("JoinTokens", None)  # /info never shows tokens; GET /swarm does
    return {
        "NodeID": manager.node_id or "",
        "NodeAddr": manager.addr,
        "LocalNodeState": "active",
        "ControlAvailable": True,
        "Error": "",
        "RemoteManagers": remote,
        "Nodes": len(nodes),
        "Managers": len(managers),
        "Cluster": cluster_info,
    }


def _container_counts(manager: ManagerAPI) -> dict[str, int]:
    """Containers of this host's tasks (what Shoal runs here), from the node's task index."""
    if not manager.in_swarm or not manager.node_id:
        return {"Containers": 0, "ContainersRunning": 0, "ContainersPaused": 0, "ContainersStopped": 0}
    total = running = 0
    for t in manager.store.tasks_on_node(manager.node_id):
        cs = t.Status.ContainerStatus
        if cs is None or not cs.ContainerID:
            continue
        total += 1
        running += t.Status.State is TaskState.RUNNING
    return {"Containers": total, "ContainersRunning": running, "ContainersPaused": 0,
            "ContainersStopped": total - running}


async def info(request: web.Request) -> web.Response:
    manager = manager_of(request)
    out = dict(_INFO_DEFAULTS)
    out.update(manager.engine_info)
    out.update(_container_counts(manager))
    out["ServerVersion"] = shoal.__version__
    out["Swarm"] = _swarm_info(manager)
    if out["Swarm"].get("ControlAvailable"):
        # A manager speaks for the cluster, as classic Swarm did: every engine's totals and the node list.
        out.update(await clusterinfo.cluster_info(request))
    out["Warnings"] = [*(manager.engine_info.get("Warnings") or []), *store_warnings(manager)] or None
    return json_response(out)


def store_warnings(manager: ManagerAPI) -> list[str]:
    """What the cluster store could not read back or cannot persist, for ``docker info``."""
    store = manager.store
    out = [f"WARNING: cluster store: {p} (kept out of the cluster state)" for p in store.problems]
    if store.writer.error is not None:
        out.append(f"WARNING: cluster store: changes are not durable yet: {store.writer.error}")
    return out
