"""The Docker executor: runs tasks as containers on the node's engine, through its API (aiodocker).

Modelled on swarmkit's ``agent/exec/dockerapi``, with two differences that matter for speed on a
small engine: one event stream for all containers (not one ``wait`` call each), and no redundant
calls (no image inspect before create: a create that fails with "No such image" triggers the pull;
no inspect after start unless the task publishes ports and we must learn them).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Coroutine, Iterable
from typing import Any

import aiodocker
import aiohttp
import msgspec
from aiodocker.exceptions import DockerError

from shoal.agent.encryption import EncryptionSupport
from shoal.agent.encryption import probe as probe_encryption
from shoal.agent.executor.base import (
    LABEL_NODE_ID,
    LABEL_TASK_ID,
    ContainerInfo,
    ContainerNotFound,
    EngineUnavailable,
    ExecutorError,
    ExitInfo,
    ImageNotFound,
    container_name,
    task_ports,
)
from shoal.agent.executor.logstream import log_lines
from shoal.agent.executor.spec import container_config
from shoal.agent.network.mesh import Mesh
from shoal.agent.network.overlay import EngineNetworks, OverlayError
from shoal.agent.network.plumbing import NetworkAgent
from shoal.agent.secrets import TaskSecrets
from shoal.agent.volumes import SharedVolumes, VolumeError
from shoal.dispatcher.protocol import LogMessage, LogOptions
from shoal.models import (
    SECOND,
    EngineDescription,
    GenericResource,
    HealthResult,
    NodeDescription,
    Platform,
    PortConfig,
    Resources,
    Task,
    TaskHealth,
    parse_ts,
)
from shoal.sharedvolumes import shared_driver

log = logging.getLogger(__name__)

API_VERSION = "v1.41"
# Engine calls in flight for creates, and for starts. Measured on this 2-core machine (dockerd 20.10,
# busybox, other work on the engine at the same time): 60 containers create+start at concurrency
# 1 → 4.8/s, 4 → 8.8/s, 8 → 9.3-9.5/s, 16 → 8.9/s. Start dominates (create ~95/s, start ~7/s at 8):
# past ~8 the engine is saturated and more only adds contention. 200 replicas through the whole agent
# (store → dispatcher → agent → engine), quiet machine: 8/8 → all RUNNING in 22.1 s (9.0/s);
# 16/16 → 22.9 s; 8 creates/4 starts → 28.1 s. Under load from other engine users, 8/8 → 26 s,
# the same as a bare create+start loop at that moment (28 s): the agent adds no measurable cost.
CREATE_CONCURRENCY = 8
CUT_OFF_SETTLE_S = 2.0  # how long `swarm leave` waits for a create the stopped agent cut off
START_CONCURRENCY = 8
PULL_FAILURE_TTL_S = 10.0  # a failed pull is not retried for this long: tasks fail fast, not forever
_DEAD_MEMORY = 10_000  # exits seen before anyone waited for them (a container that died at once)
_INFINITE = aiohttp.ClientTimeout(total=None, sock_read=None)
PING_TIMEOUT_S = 5.0  # a busy engine answers /_ping in milliseconds; this long means it is stuck
ENGINE_RETRY_S = 1.0  # while the engine is away, exits wait and are checked again this often


def _split_ref(ref: str) -> tuple[str, str]:
    """``name[:tag|@digest]`` → (fromImage, tag) for ``POST /images/create``; no tag means latest."""
    if "@" in ref:
        name, digest = ref.split("@", 1)
        return name, digest
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = ref.rsplit(":", 1)
        return name, tag
    return ref, "latest"


def _no_image(image: str, why: str) -> str:
    return f"No such image: {image}" + (f" (pull failed: {why})" if why else "")


def _bound_ports(port_map: dict[str, Any] | None) -> list[PortConfig]:
    """``NetworkSettings.Ports`` → the host ports actually bound (IPv4 and IPv6 bindings coincide)."""
    out: dict[tuple[int, str], PortConfig] = {}
    for key, bindings in (port_map or {}).items():
        target, _, proto = key.partition("/")
        for b in bindings or []:
            if b.get("HostPort"):
                k = (int(target), proto or "tcp")
                out.setdefault(
                    k, PortConfig(Protocol=k[1], TargetPort=k[0], PublishedPort=int(b["HostPort"]), PublishMode="host")
                )
    return list(out.values())


# The engine's words when a published port is taken: by a process (its userland proxy cannot
# bind), or by a container it runs itself ("port is already allocated").
_PORT_IN_USE = re.compile(r"listen (tcp|udp|sctp)[46]? [^ ]*:(\d+): bind: address already in use")
_PORT_ALLOCATED = re.compile(r"Bind for [^ ]*:(\d+) failed: port is already allocated")


def explain_port_conflict(task: Task, message: str) -> str:
    """A start refused because a host-mode port is taken, said so: the scheduler keeps Shoal's own
    tasks apart, so the holder is outside Shoal. Any other message is returned as it is."""
    m = _PORT_IN_USE.search(message)
    if m is not None:
        port, proto, holder = int(m.group(2)), m.group(1), "a process outside Shoal"
    else:
        m = _PORT_ALLOCATED.search(message)
        if m is None:
            return message
        port, holder = int(m.group(1)), "another container on this engine"
        # The engine does not say the protocol here; the task's own port with that number does.
        proto = next((p.Protocol or "tcp" for p in task_ports(task, "host") if p.PublishedPort == port), "tcp")
    return f"host-mode port {port}/{proto} is already in use on this node (by {holder}): {message}"


def _connect_reason(url: str, exc: BaseException) -> str:
    """"cannot connect to unix:///x.sock: No such file or directory", without aiohttp's wrapping."""
    err = getattr(exc, "os_error", None) or exc
    text = getattr(err, "strerror", None) or str(err) or type(err).__name__
    return f"cannot connect to {url}: {text}"


def _first_ip(networks: dict[str, Any] | None) -> str:
    for net in (networks or {}).values():
        if net and net.get("IPAddress"):
            return str(net["IPAddress"])
    return ""


def _ts(ts: str) -> float:
    try:
        return parse_ts(ts)
    except ValueError:
        return math.inf  # unreadable: keep the line rather than lose it


GENERIC_LABEL = "shoal.generic-resource."


ALIYUN_GPU_LABEL = "aliyun.gpu"


def generic_resources(engine_labels: dict[str, str]) -> list[GenericResource] | None:
    """Resources a node declares through its engine's labels (dockerd's ``--label``), as swarm's
    ``--node-generic-resource`` does: ``shoal.generic-resource.gpu=2`` is a count the scheduler
    reserves like CPU or memory; ``shoal.generic-resource.NVIDIA-GPU=GPU-uuid1,GPU-uuid2`` names
    each one, and the scheduler gives a task particular ones (its container sees them). Aliyun's
    engine label ``aliyun.gpu=N`` counts as ``gpu=N`` when no ``gpu`` resource is declared."""
    out = []
    for key, value in sorted(engine_labels.items()):
        if not key.startswith(GENERIC_LABEL) or not key[len(GENERIC_LABEL):]:
            continue
        kind = key[len(GENERIC_LABEL):]
        if value.isdigit():
            if int(value) > 0:
                out.append(GenericResource(DiscreteResourceSpec={"Kind": kind, "Value": int(value)}))
            continue
        for name in sorted({v.strip() for v in value.split(",") if v.strip()}):
            out.append(GenericResource(NamedResourceSpec={"Kind": kind, "Value": name}))
    gpu = engine_labels.get(ALIYUN_GPU_LABEL, "")
    if gpu.isdigit() and int(gpu) > 0 and f"{GENERIC_LABEL}gpu" not in engine_labels:
        out.append(GenericResource(DiscreteResourceSpec={"Kind": "gpu", "Value": int(gpu)}))
    return out or None


def node_description(info: dict[str, Any]) -> NodeDescription:
    """What a node is, from its engine's ``GET /info``: hostname, platform, capacity, labels."""
    labels = dict(lbl.split("=", 1) for lbl in info.get("Labels") or [] if "=" in lbl)
    plugins = [
        {"Type": kind, "Name": name}
        for kind, names in (info.get("Plugins") or {}).items()
        for name in names or []
        if kind in ("Volume", "Network", "Log")
    ]
    return NodeDescription(
        Hostname=info.get("Name", ""),
        Platform=Platform(OS=info.get("OSType", ""), Architecture=info.get("Architecture", "")),
        Resources=Resources(NanoCPUs=int(info.get("NCPU", 0)) * SECOND, MemoryBytes=int(info.get("MemTotal", 0)),
                            GenericResources=generic_resources(labels)),
        Engine=EngineDescription(EngineVersion=info.get("ServerVersion", ""), Labels=labels, Plugins=plugins),
    )


STATS_TIMEOUT_S = 10.0  # a one-shot sample waits for the engine's next collection tick (about 1 s)


class DockerExecutor:
    """Executes tasks on a Docker-compatible engine. One per node (agent)."""

    def __init__(
        self,
        url: str = "unix:///var/run/docker.sock",
        *,
        create_concurrency: int = CREATE_CONCURRENCY,
        start_concurrency: int = START_CONCURRENCY,
        default_stop_grace_ns: int = 10 * SECOND,
        volumes: SharedVolumes | None = None,
    ) -> None:
        self.url = url
        self.hostname = ""
        self.default_stop_grace_ns = default_stop_grace_ns
        self._docker: aiodocker.Docker | None = None
        self._connector: aiohttp.BaseConnector | None = None
        self._create_sem = asyncio.Semaphore(create_concurrency)
        # Containers whose create was cut off (the agent stopped mid-call): the engine may still
        # make them after the call is gone, so `swarm leave` looks for them once more (remove_all).
        self.cut_off: set[str] = set()
        self._start_sem = asyncio.Semaphore(start_concurrency)
        self._events_task: asyncio.Task[None] | None = None
        self._events_ready = asyncio.Event()
        # Set when the event stream breaks: the engine may be gone, and the agent's health probe
        # (agent/engine.py) checks at once instead of at its next tick.
        self.engine_trouble = asyncio.Event()
        self._exit_waiters: dict[str, asyncio.Future[ExitInfo]] = {}
        self._dead: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._health: dict[str, collections.deque[bool]] = {}
        self._health_waiters: dict[str, asyncio.Future[bool]] = {}
        self._pulls: dict[tuple[str, str], asyncio.Future[None]] = {}
        self._pull_failures: dict[tuple[str, str], tuple[float, str]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self.secrets = TaskSecrets()  # the node's secrets and configs, and their files (agent/secrets.py)
        # nas/ossfs volumes, mounted here and bound (agent/volumes.py); the daemon's, shared by its executors
        self.volumes = volumes
        self.network: NetworkAgent | None = None  # overlay networks (agent/network/); set by the Agent
        self._encryption: asyncio.Future[EncryptionSupport] | None = None

    # ------------------------------------------------------------------ engine access

    @property
    def docker(self) -> aiodocker.Docker:
        # Created on first use, inside the running loop (aiohttp sessions belong to one loop).
        if self._docker is None:
            if self.url.startswith("unix://"):
                # No pool limit: every follow-mode log stream holds a connection for as long as it is
                # read, and 100 of them (aiohttp's default) must not starve creates and starts.
                self._connector = aiohttp.UnixConnector(self.url[len("unix://") :], limit=0)
                # With a connector given, aiodocker uses the URL only to compose request URLs.
                self._docker = aiodocker.Docker(
                    url="unix://localhost", connector=self._connector, api_version=API_VERSION
                )
            else:
                self._docker = aiodocker.Docker(url=self.url, api_version=API_VERSION)
        return self._docker

    async def _call(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None = None,
        body: Any = None,
        http_timeout: aiohttp.ClientTimeout | None = None,
    ) -> Any:
        data = json.dumps(body) if body is not None else None
        kwargs: dict[str, Any] = {"params": params, "data": data}
        if http_timeout is not None:
            kwargs["timeout"] = http_timeout
        return await self.docker._query_json(path, method, **kwargs)

    async def close(self) -> None:
        await self.secrets.close()
        if self.network is not None:
            await self.network.close()
        if self._events_task is not None:
            self._events_task.cancel()
            await asyncio.gather(self._events_task, return_exceptions=True)
            self._events_task = None
        for t in list(self._background):
            t.cancel()
        for fut in [*self._exit_waiters.values(), *self._health_waiters.values()]:
            fut.cancel()
        self._events_ready.clear()
        if self._docker is not None:
            await self._docker.close()
            self._docker = None
        if self._connector is not None:  # ours, not aiodocker's: it does not close what it was given
            await self._connector.close()
            self._connector = None

    # ------------------------------------------------------------------ node

    async def describe(self) -> NodeDescription:
        info = await self._call("GET", "info")
        self.hostname = info.get("Name", "")
        desc = node_description(info)
        # Once per agent: whether this kernel could encrypt overlay traffic (agent/encryption.py).
        if self._encryption is None:
            self._encryption = asyncio.ensure_future(probe_encryption())
        support = await asyncio.shield(self._encryption)
        labels = {**(desc.Engine.Labels or {}), **support.labels()}
        return msgspec.structs.replace(desc, Engine=msgspec.structs.replace(desc.Engine, Labels=labels))

    async def ping(self, timeout_s: float = PING_TIMEOUT_S) -> None:
        """``GET /_ping`` on a new connection; raises :class:`EngineUnavailable` (a short reason).

        A new connection, not one from the pool: a stopping dockerd first closes its listening
        socket and only then stops its containers, still serving the connections it has (the
        event stream too). So only a fresh connect tells that it is going away.
        """
        if self.url.startswith("unix://"):
            connector: aiohttp.BaseConnector = aiohttp.UnixConnector(self.url[len("unix://") :], force_close=True)
            base = "http://localhost"
        else:
            connector = aiohttp.TCPConnector(force_close=True)
            base = self.url.replace("tcp://", "http://", 1).rstrip("/")
        try:
            async with (
                aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s)) as session,
                session.get(f"{base}/_ping") as resp,
            ):
                body = await resp.read()
                if resp.status != 200:
                    text = body[:200].decode(errors="replace").strip()
                    raise EngineUnavailable(f"{self.url} answered {resp.status}: {text}")
        except TimeoutError:
            raise EngineUnavailable(f"{self.url} did not answer within {timeout_s:g} s", timed_out=True) from None
        except (aiohttp.ClientError, OSError) as e:
            raise EngineUnavailable(_connect_reason(self.url, e)) from None

    async def list_task_containers(self, node_id: str) -> list[ContainerInfo]:
        filters = json.dumps({"label": [f"{LABEL_NODE_ID}={node_id}"]})
        out = []
        for c in await self._call("GET", "containers/json", {"all": "1", "filters": filters}):
            ports = [
                PortConfig(
                    Protocol=p.get("Type", "tcp"),
                    TargetPort=p["PrivatePort"],
                    PublishedPort=p["PublicPort"],
                    PublishMode="host",
                )
                for p in c.get("Ports") or []
                if p.get("PublicPort")
            ]
            uniq = {(p.TargetPort, p.Protocol): p for p in ports}
            out.append(
                ContainerInfo(
                    id=c["Id"],
                    task_id=(c.get("Labels") or {}).get(LABEL_TASK_ID, ""),
                    state=c.get("State", ""),
                    ports=list(uniq.values()),
                    ip=_first_ip((c.get("NetworkSettings") or {}).get("Networks")),
                )
            )
        return out

    # ------------------------------------------------------------------ containers

    async def create(self, task: Task) -> str:
        body = container_config(task, self.hostname, self.default_stop_grace_ns)
        shared = await self._shared_volumes(task, body)
        try:
            secret_mounts = await self.secrets.mounts(task)  # files on the node's tmpfs, bound read-only
        except BaseException:
            if shared:
                await self._release_volumes(task)
            raise
        if secret_mounts:
            body["HostConfig"]["Mounts"] = [*body["HostConfig"].get("Mounts", []), *secret_mounts]
        try:
            cid = await self._create_networked(task, body)
        except BaseException:
            if secret_mounts:
                self.secrets.release(task.ID, task.NodeID)
            if shared:
                await self._release_volumes(task)
            raise
        if secret_mounts:
            self.secrets.container_created(cid, task)
        if shared and self.volumes is not None:
            self.volumes.container_created(cid, task.ID)
        return cid

    async def _shared_volumes(self, task: Task, body: dict[str, Any]) -> bool:
        """Mount the task's nas/ossfs volumes on the node and bind them instead (agent/volumes.py);
        whether it has any. The engine never sees these drivers."""
        mounts = body["HostConfig"].get("Mounts") or []
        if not any(m.get("Type") == "volume" and shared_driver(m.get("VolumeOptions")) for m in mounts):
            return False
        if self.volumes is None:
            raise ExecutorError("nas/ossfs volumes are not available: this executor has no shared-volume root")
        try:
            body["HostConfig"]["Mounts"] = await self.volumes.bind_mounts(task.ID, mounts)
        except VolumeError as e:
            raise ExecutorError(str(e)) from None
        return True

    async def _release_volumes(self, task: Task) -> None:
        if self.volumes is not None:
            await asyncio.shield(self.volumes.release(task.ID))

    async def _create_networked(self, task: Task, body: dict[str, Any]) -> str:
        """Create on the task's overlay networks: the first in the body (once it is plumbed on this
        node), the others connected before the container ever starts."""
        if self.network is None or not task.NetworksAttachments:
            return await self._create_pulling(task, body)
        try:
            extra = await self.network.configure(task, body)
        except OverlayError as e:
            raise ExecutorError(str(e)) from None
        cid = await self._create_pulling(task, body)
        try:
            await self.network.connect(cid, extra)
        except OverlayError as e:
            await self.remove(cid)
            raise ExecutorError(str(e)) from None
        return cid

    async def _create_pulling(self, task: Task, body: dict[str, Any]) -> str:
        name = container_name(task)
        try:
            return await self._create(task, body, name)
        except ImageNotFound:
            pass
        cs = task.Spec.ContainerSpec
        auth = cs.PullOptions.RegistryAuth if cs is not None and cs.PullOptions is not None else ""
        await self._pull(body["Image"], auth)
        return await self._create(task, body, name)

    async def _create(self, task: Task, body: dict[str, Any], name: str) -> str:
        async with self._create_sem:
            try:
                res = await self._call("POST", "containers/create", {"name": name}, body)
                self.cut_off.discard(name)  # made this time: the label finds it (remove_all)
                return str(res["Id"])
            except asyncio.CancelledError:
                self.cut_off.add(name)
                raise
            except DockerError as e:
                if e.status == 404 and "No such image" in e.message:
                    raise ImageNotFound(f"No such image: {body['Image']}") from None
                if e.status != 409:
                    raise ExecutorError(e.message) from None
                err = e
        # Name taken: our own container from an earlier attempt (agent restarted mid-create) is reused.
        try:
            existing = await self._call("GET", f"containers/{name}/json")
        except DockerError:
            raise ExecutorError(err.message) from None
        if (existing.get("Config", {}).get("Labels") or {}).get(LABEL_TASK_ID) == task.ID:
            return str(existing["Id"])
        raise ExecutorError(err.message)

    async def _pull(self, image: str, auth: str = "") -> None:
        """Pull once per image (and credentials) at a time; remember a failure briefly so 200 tasks
        fail fast. The task's error says why the pull failed (the registry's words: an auth error
        is the usual one), never the credentials."""
        key = (image, auth)
        failed = self._pull_failures.get(key)
        if failed is not None and time.monotonic() - failed[0] < PULL_FAILURE_TTL_S:
            raise ImageNotFound(_no_image(image, failed[1]))
        fut = self._pulls.get(key)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            self._pulls[key] = fut
            try:
                await self._do_pull(image, auth)
                fut.set_result(None)
            except BaseException as exc:  # any failure (even our cancellation) means no image for the waiters
                log.warning("pull of %s failed: %r", image, exc)
                why = getattr(exc, "message", "") or str(exc)
                if not isinstance(exc, asyncio.CancelledError):
                    self._pull_failures[key] = (time.monotonic(), why)
                fut.set_exception(ImageNotFound(_no_image(image, why)))
                if isinstance(exc, asyncio.CancelledError):
                    fut.exception()  # retrieved: nobody else may be waiting
                    raise
            finally:
                del self._pulls[key]
        await asyncio.shield(fut)

    async def _do_pull(self, image: str, auth: str = "") -> None:
        name, tag = _split_ref(image)
        headers = {"X-Registry-Auth": auth} if auth else None
        async with self.docker._query(
            "images/create", "POST", params={"fromImage": name, "tag": tag}, headers=headers, timeout=_INFINITE
        ) as resp:
            try:
                # Errors during a pull arrive inside a 200 response, as {"error": ...} progress lines.
                async for line in resp.content:
                    if line.strip():
                        msg = json.loads(line)
                        if msg.get("error"):
                            raise ExecutorError(msg["error"])
            finally:
                resp.close()

    async def start(self, task: Task, container_id: str) -> ContainerInfo:
        async with self._start_sem:
            try:
                await self._call("POST", f"containers/{container_id}/start")
            except DockerError as e:
                if e.status == 404:
                    raise ContainerNotFound(f"container {container_id} not found") from None
                raise ExecutorError(explain_port_conflict(task, e.message)) from None
        if task_ports(task, "host") or task_ports(task, "ingress"):
            return await self.inspect(container_id)
        return ContainerInfo(id=container_id, task_id=task.ID, state="running")

    async def inspect(self, container_id: str) -> ContainerInfo:
        try:
            c = await self._call("GET", f"containers/{container_id}/json")
        except DockerError as e:
            if e.status == 404:
                raise ContainerNotFound(f"container {container_id} not found") from None
            raise ExecutorError(e.message) from None
        state = c.get("State") or {}
        net = c.get("NetworkSettings") or {}
        return ContainerInfo(
            id=c["Id"],
            task_id=((c.get("Config") or {}).get("Labels") or {}).get(LABEL_TASK_ID, ""),
            state=state.get("Status", ""),
            pid=state.get("Pid", 0),
            exit_code=state.get("ExitCode", 0),
            error=state.get("Error", "") or ("OOM killed" if state.get("OOMKilled") else ""),
            ports=_bound_ports(net.get("Ports")),
            ip=_first_ip(net.get("Networks")) or net.get("IPAddress", ""),
        )

    async def container_stats(self, container_id: str) -> dict[str, Any] | None:
        """One ``docker stats`` sample (agent/stats.py); None when the container is gone."""
        try:
            out = await self._call("GET", f"containers/{container_id}/stats", {"stream": "false", "one-shot": "true"},
                                   http_timeout=aiohttp.ClientTimeout(total=STATS_TIMEOUT_S))
        except DockerError as e:
            if e.status == 404:
                return None
            raise ExecutorError(e.message) from None
        return out if isinstance(out, dict) else None

    async def stop(self, container_id: str, grace_s: float, signal: str = "") -> None:
        t = max(0, math.ceil(grace_s))
        try:
            # The HTTP call lasts as long as the grace period, so its timeout must outlast it.
            await self._call(
                "POST",
                f"containers/{container_id}/stop",
                {"t": str(t)},
                http_timeout=aiohttp.ClientTimeout(total=t + 60),
            )
        except DockerError as e:
            if e.status != 404:
                raise ExecutorError(e.message) from None

    async def remove(self, container_id: str) -> None:
        try:
            await self._call("DELETE", f"containers/{container_id}", {"force": "1", "v": "1"})
        except DockerError as e:
            # 404: already gone; 409: a removal is already in progress.
            if e.status not in (404, 409):
                raise ExecutorError(e.message) from None
        self._forget(container_id)
        self.secrets.container_removed(container_id)
        if self.volumes is not None:  # its nas/ossfs mounts go with the last container that binds them
            await self.volumes.container_removed(container_id)

    async def remove_all(self, node_id: str, cut_off: Iterable[str] = ()) -> int:
        """Remove every container of ``node_id`` (``swarm leave``); returns how many. ``cut_off``:
        names whose create the stopped agent cut off; the engine finishes such a create after the
        call is gone, so each is waited for a moment and removed if it comes."""
        containers = await self.list_task_containers(node_id)
        sem = asyncio.Semaphore(CREATE_CONCURRENCY)

        async def one(cid: str) -> None:
            async with sem:
                await self.remove(cid)

        await asyncio.gather(*(one(c.id) for c in containers))
        late = await asyncio.gather(*(self._remove_late(name) for name in set(cut_off)))
        await self.secrets.drop_node(node_id)  # the secrets' tmpfs: no container binds it now
        try:  # then the node's overlay networks (agent/network/), now that nothing uses them
            await EngineNetworks(self.docker).remove_node(node_id)
        except Exception as exc:
            log.warning("removing the overlay networks of %s: %s", node_id, exc)
        try:  # and what the routing mesh put in the kernel
            await Mesh().remove()
        except Exception as exc:
            log.warning("removing the routing mesh's kernel state: %s", exc)
        return len(containers) + sum(late)

    async def _remove_late(self, name: str) -> bool:
        deadline = time.monotonic() + CUT_OFF_SETTLE_S
        while True:
            try:
                found = await self._call("GET", f"containers/{name}/json")
            except DockerError as e:
                if e.status != 404:
                    raise ExecutorError(e.message) from None
                if time.monotonic() >= deadline:
                    return False
                await asyncio.sleep(0.1)
                continue
            await self.remove(str(found["Id"]))
            return True

    def _forget(self, container_id: str) -> None:
        self._dead.pop(container_id, None)
        self._health.pop(container_id, None)
        for waiters in (self._exit_waiters, self._health_waiters):
            fut = waiters.pop(container_id, None)
            if fut is not None and not fut.done():
                fut.cancel()

    # ------------------------------------------------------------------ events

    async def start_events(self) -> None:
        if self._events_task is None:
            self._events_task = asyncio.create_task(self._events_loop())
        await self._events_ready.wait()

    async def _events_loop(self) -> None:
        filters = json.dumps({"type": ["container"], "event": ["die", "health_status"], "label": [LABEL_TASK_ID]})
        first = True
        while True:
            try:
                async with self.docker._query("events", "GET", params={"filters": filters}, timeout=_INFINITE) as resp:
                    try:
                        self._events_ready.set()
                        if not first:
                            await self._recheck_waiters()  # exits during the gap were not seen
                        first = False
                        async for line in resp.content:
                            if line.strip():
                                self._on_event(json.loads(line))
                    finally:
                        resp.close()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the engine restarted or the socket broke: retry
                log.warning("engine event stream failed (%s); reconnecting", exc)
            else:  # the engine closed the stream (it is shutting down)
                log.warning("engine event stream ended; reconnecting")
            self.engine_trouble.set()
            await asyncio.sleep(1.0)

    def _on_event(self, ev: dict[str, Any]) -> None:
        cid = ev.get("id") or (ev.get("Actor") or {}).get("ID", "")
        action = ev.get("Action") or ev.get("status") or ""
        if action == "die":
            code = int(((ev.get("Actor") or {}).get("Attributes") or {}).get("exitCode", 0) or 0)
            fut = self._exit_waiters.get(cid)
            if fut is None:
                self._dead[cid] = code
                if len(self._dead) > _DEAD_MEMORY:
                    self._dead.popitem(last=False)
            else:
                self._spawn(self._resolve_exit(cid, code))
        elif action.startswith("health_status"):
            healthy = action.endswith("healthy") and not action.endswith("unhealthy")
            fut = self._health_waiters.pop(cid, None)
            if fut is not None and not fut.done():
                fut.set_result(healthy)
            else:
                self._health.setdefault(cid, collections.deque(maxlen=8)).append(healthy)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _resolve_exit(self, cid: str, event_code: int) -> None:
        """Inspect the dead container for its exit code and error; the event's code is the fallback.

        A container killed because its engine is shutting down did not fail: reporting it would
        spend a restart attempt, and its replacement could land on this node before the manager
        hears that the engine is gone. So the exit is resolved only once the engine answers a
        fresh connection: at once normally; while it is away, the agent reports the engine down,
        the manager orphans the task, and the late report (after the engine returns) is ignored.
        """
        while True:
            try:
                await self.ping()
                break
            except EngineUnavailable:
                self.engine_trouble.set()  # the health probe checks now, not at its next tick
                await asyncio.sleep(ENGINE_RETRY_S)
        try:
            info = await self.inspect(cid)
            result = ExitInfo(info.exit_code, info.error, info.error == "OOM killed")
        except ExecutorError:
            result = ExitInfo(event_code)
        fut = self._exit_waiters.pop(cid, None)
        if fut is not None and not fut.done():
            fut.set_result(result)

    async def _recheck_waiters(self) -> None:
        for cid in list(self._exit_waiters):
            try:
                info = await self.inspect(cid)
            except ContainerNotFound:
                info = ContainerInfo(id=cid, state="removed", exit_code=-1, error="container removed")
            except ExecutorError:
                continue
            if not info.running:
                fut = self._exit_waiters.pop(cid, None)
                if fut is not None and not fut.done():
                    fut.set_result(ExitInfo(info.exit_code, info.error))

    async def wait_exit(self, container_id: str) -> ExitInfo:
        await self.start_events()
        fut = self._exit_waiters.get(container_id)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            self._exit_waiters[container_id] = fut
            if container_id in self._dead:  # it died before anyone asked
                self._spawn(self._resolve_exit(container_id, self._dead.pop(container_id)))
        return await asyncio.shield(fut)

    async def wait_health(self, container_id: str) -> bool:
        await self.start_events()
        seen = self._health.get(container_id)
        if seen:
            return seen.popleft()
        fut = self._health_waiters.get(container_id)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            self._health_waiters[container_id] = fut
        return await asyncio.shield(fut)

    async def inspect_health(self, container_id: str) -> TaskHealth | None:
        """The engine's ``State.Health`` as a task's health: status, failing streak, last 5 probes."""
        try:
            c = await self._call("GET", f"containers/{container_id}/json")
        except DockerError:
            return None
        h = (c.get("State") or {}).get("Health")
        if not h:
            return None
        probes = [
            HealthResult(Start=p.get("Start", ""), End=p.get("End", ""), ExitCode=int(p.get("ExitCode", 0)),
                         Output=str(p.get("Output", "")).strip()[-512:])
            for p in (h.get("Log") or [])[-5:]
        ]
        return TaskHealth(Status=h.get("Status", ""), Source="engine", FailingStreak=int(h.get("FailingStreak", 0)),
                          Log=probes or None)

    # ------------------------------------------------------------------ logs

    async def task_logs(self, task: Task, container_id: str, options: LogOptions) -> AsyncIterator[LogMessage]:
        params = {
            "stdout": "1" if options.stdout else "0",
            "stderr": "1" if options.stderr else "0",
            "follow": "1" if options.follow else "0",
            "timestamps": "1",  # always: to honour `since` and to return each line's time
            "tail": "all" if options.tail < 0 else str(options.tail),
        }
        if options.since > 0:
            params["since"] = f"{options.since:.9f}"
        tty = bool(task.Spec.ContainerSpec and task.Spec.ContainerSpec.TTY)
        try:
            async with self.docker._query(
                f"containers/{container_id}/logs", "GET", params=params, timeout=_INFINITE
            ) as resp:
                try:
                    async for stream, ts, data in log_lines(resp.content, tty):
                        if options.since > 0 and _ts(ts) < options.since:
                            continue
                        yield LogMessage(task.ID, task.ServiceID, task.NodeID, stream, ts, data)
                finally:
                    resp.close()
        except DockerError as e:
            if e.status == 404:
                return  # container gone: no more logs, not an error for a service-wide log call
            raise ExecutorError(e.message) from None
