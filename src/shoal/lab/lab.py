"""``Lab``: N Shoal hosts on this machine, built, broken and torn down on request.

Host N = network namespace ``shoal-lab-hN`` (10.77.0.N on the ``shoal-lab0`` bridge), its own
hostname ``host-N``, its own dockerd and its own Shoal daemon (``<state>/hN/shoal.sock``). host-1
inits the swarm, the others join it. Fault injection works on one host at a time: ``kill`` (its
Shoal daemon, SIGKILL), ``stop_engine`` (its dockerd, SIGTERM), ``cut`` (its link down), ``restore``.

The methods are synchronous (tests and the CLI call them as plain steps); the work inside is
asyncio, so hosts come up concurrently. Only processes the lab started are ever signalled, by pid.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import re
import shutil
import signal
import sys
from collections.abc import Callable, Coroutine, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import docker
import docker.errors
import msgspec

from shoal.lab import engine, mounts, net, proc, state
from shoal.lab.errors import LabError
from shoal.lab.state import BRIDGE, MARKER, MAX_HOSTS, HostState, LabState, ProcRef

DEFAULT_STATE_DIR = "/run/shoal-lab"
DEFAULT_PRELOAD = ("busybox:latest",)
SWARM_PORT = 2377
NEED_ROOT = "the lab needs root (network namespaces, bridges, dockerd)"
REQUIRED = ("ip", "nsenter", "unshare", "hostname", "iptables", "umount", "dockerd", "docker-registry")

T = TypeVar("T")


class HostStatus(msgspec.Struct):
    name: str
    addr: str
    link: str  # up | down | missing
    dockerd_pid: int | None
    engine_running: bool
    daemon_pid: int | None
    daemon_running: bool
    node_id: str
    api: str


def missing_requirements() -> str | None:
    """Why the lab cannot run here (not root, a command missing), or None."""
    if os.geteuid() != 0:
        return NEED_ROOT
    missing = [c for c in REQUIRED if shutil.which(c) is None]
    if missing:
        return f"missing commands: {', '.join(missing)} (scripts/install-deps.sh installs them)"
    return None


def _need_root() -> None:
    if os.geteuid() != 0:
        raise LabError(NEED_ROOT)


def parse_host(name: str | int) -> int:
    """``host-N``, ``hN`` or ``N`` → N."""
    m = re.fullmatch(r"(?:host-|h)?(\d+)", str(name).strip())
    if not m:
        raise LabError(f"unknown host {name!r}: name a host as host-N, hN or N")
    return int(m.group(1))


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion from synchronous code, also when called from inside an event loop
    (an async test): then it runs on a worker thread with a loop of its own."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _all(coros: Iterable[Coroutine[Any, Any, T]]) -> list[T]:
    """Run concurrently; on the first failure cancel the rest and raise that failure itself."""
    try:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(c) for c in coros]
    except BaseExceptionGroup as eg:
        raise eg.exceptions[0] from None
    return [t.result() for t in tasks]


def _etcd_member(h: HostState) -> int | None:
    """The PID of the etcd member the host's manager runs (None: none, or not ours)."""
    try:
        pid = int((h.path / "shoal" / "etcd.pid").read_text())
        argv = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if f"--data-dir={h.path / 'shoal' / 'etcd'}".encode() in argv else None


def _shoal_command() -> list[str]:
    """This installation's ``shoal`` (the venv's script next to the running interpreter)."""
    script = Path(sys.executable).with_name("shoal")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from shoal.cli.main import main; main()"]


class Lab:
    def __init__(
        self,
        state_dir: str | Path = DEFAULT_STATE_DIR,
        hosts: int = 4,
        preload: Sequence[str] = DEFAULT_PRELOAD,
        *,
        join: bool = True,
        managers: int = 1,
        main_engine: str = engine.MAIN_ENGINE,
        daemon_args: Sequence[str] = (),
        progress: Callable[[str], None] | None = None,
    ) -> None:
        if not 1 <= hosts <= MAX_HOSTS:
            raise LabError(f"--hosts {hosts}: a lab has 1 to {MAX_HOSTS} hosts")
        if not 1 <= managers <= hosts:
            raise LabError(f"--managers {managers}: between 1 and the number of hosts ({hosts})")
        self.managers = managers
        self.state_dir = Path(state_dir).absolute()
        self.n_hosts = hosts
        self.preload = list(preload)
        self.join = join
        self.main_engine = main_engine
        self.daemon_args = list(daemon_args)
        self.progress = progress or (lambda _msg: None)
        self._state: LabState | None = state.load(self.state_dir)

    @classmethod
    def attach(cls, state_dir: str | Path = DEFAULT_STATE_DIR, **kw: Any) -> Lab:
        """The lab that ``up`` built at ``state_dir`` (for the commands that act on it)."""
        st = state.load(Path(state_dir).absolute())
        if st is None:
            raise LabError(f"no lab at {state_dir} (`shoal lab up --hosts N` builds one)")
        return cls(state_dir, len(st.hosts) or 1, st.preload, join=st.join, managers=st.managers, **kw)

    # ------------------------------------------------------------------------------ looking at it

    @property
    def state(self) -> LabState:
        if self._state is None:
            raise LabError(f"no lab at {self.state_dir} (`shoal lab up --hosts N` builds one)")
        return self._state

    @property
    def hosts(self) -> list[HostState]:
        return self.state.hosts

    def host(self, name: str | int) -> HostState:
        n = parse_host(name)
        if not 1 <= n <= len(self.hosts):
            raise LabError(f"unknown host {name!r}: this lab has host-1 … host-{len(self.hosts)}")
        return self.hosts[n - 1]

    @property
    def docker_host(self) -> str:
        """The manager's API (host-1's Shoal daemon), for DOCKER_HOST / ``docker.DockerClient``."""
        return self.state.manager.api

    @property
    def registry(self) -> str:
        return self.state.registry

    def nsenter(self, host: str | int, *argv: str) -> list[str]:
        """A command line that runs ``argv`` inside the host's network (and UTS) namespace."""
        h = self.host(host)
        return ["nsenter", f"--net={h.netns_path}", f"--uts={h.uts_path}", *argv]

    def status(self) -> list[HostStatus]:
        out = []
        for h in self.hosts:
            link = net.link_up(h.veth)
            out.append(HostStatus(
                name=h.name, addr=h.addr, link="missing" if link is None else ("up" if link else "down"),
                dockerd_pid=h.dockerd.pid if h.dockerd else None, engine_running=proc.alive(h.dockerd),
                daemon_pid=h.daemon.pid if h.daemon else None, daemon_running=proc.alive(h.daemon),
                node_id=h.node_id, api=h.api,
            ))
        return out

    def registry_running(self) -> bool:
        return proc.alive(self.state.registry_proc)

    # ------------------------------------------------------------------------------ fault injection

    def kill(self, host: str | int) -> None:
        """SIGKILL the host's Shoal daemon (its containers and engine keep running)."""
        _need_root()
        h = self.host(host)
        if not proc.send(h.daemon, signal.SIGKILL):
            raise LabError(f"{h.name}: its Shoal daemon is not running")
        assert h.daemon is not None
        if not _run(proc.wait_gone([h.daemon], 10)):
            raise LabError(f"{h.name}: the Shoal daemon (pid {h.daemon.pid}) survived SIGKILL")

    def stop_etcd(self, host: str | int) -> None:
        """SIGSTOP the etcd member of a manager of a swarm on etcd: it stops answering (its daemon
        sees it still there, so does not start another); ``restore`` lets it go on (SIGCONT)."""
        _need_root()
        h = self.host(host)
        pid = _etcd_member(h)
        if pid is None:
            raise LabError(f"{h.name}: no etcd member is running")
        os.kill(pid, signal.SIGSTOP)

    def stop_engine(self, host: str | int, grace_s: float = 60.0) -> None:
        """SIGTERM the host's dockerd and wait for it to exit (it stops its containers first)."""
        _need_root()
        h = self.host(host)
        if not proc.alive(h.dockerd):
            raise LabError(f"{h.name}: its engine is not running")
        _run(proc.stop(h.dockerd, signal.SIGTERM, grace_s))

    def cut(self, host: str | int) -> None:
        """Take the host's link down: its daemon and engine run on, unreachable."""
        _need_root()
        _run(net.set_link(self.host(host), False))

    def restore(self, host: str | int) -> None:
        """Link up; restart the host's dockerd and Shoal daemon if they are not running. The daemon
        rejoins the swarm by itself from its data root."""
        _need_root()
        _run(self._restore(self.host(host)))

    def heal(self) -> None:
        """Restore every host (a no-op for a healthy lab): the fixture's reset between tests."""
        _need_root()
        _run(_all(self._restore(h) for h in self.hosts))

    # ------------------------------------------------------------------------------ up / down

    def up(self) -> None:
        """Build the lab. On failure what was built stays (and its logs): ``down`` removes it."""
        _run(self._up())

    def down(self) -> None:
        """Remove everything a lab made, also after a failed ``up``; safe to repeat."""
        _need_root()
        _run(self._down())

    async def _up(self) -> None:
        why = missing_requirements()
        if why:
            raise LabError(why)
        if state.state_file(self.state_dir).exists():
            raise LabError(f"a lab is already up at {self.state_dir} (`shoal lab down` removes it)")
        if len(f"{self.state_dir}/h{self.n_hosts}/exec/containerd/containerd-debug.sock") > 100:
            raise LabError(f"--state-dir {self.state_dir} is too long for the unix sockets under it (108 bytes)")
        if net.link_exists(BRIDGE) or net.lab_netns():
            owner = net.bridge_owner() or self.state_dir
            raise LabError(f"a lab already exists on this machine (state dir {owner}): "
                           f"`shoal lab down --state-dir {owner}` removes it")
        await engine.check_images(self.main_engine, self.preload)
        try:
            await self._build()
        except LabError as e:
            raise LabError(f"{e} (logs under {self.state_dir}; `shoal lab down` removes what was built)") from None

    async def _build(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / MARKER).touch()
        st = LabState(state_dir=str(self.state_dir), preload=self.preload, join=self.join, managers=self.managers,
                      hosts=[state.new_host(self.state_dir, i) for i in range(1, self.n_hosts + 1)])
        self._state = st
        for h in st.hosts:
            os.makedirs(h.dir, exist_ok=True)
        state.save(st)

        await net.create_bridge(str(self.state_dir))
        self.progress(f"bridge {BRIDGE} {st.gateway}/24")
        st.registry_proc = engine.start_registry(self.state_dir, st.registry)
        state.save(st)
        await _all(net.create_host(h) for h in st.hosts)
        self.progress(f"{len(st.hosts)} host namespaces: {st.hosts[0].addr} … {st.hosts[-1].addr}")
        for h in st.hosts:
            h.dockerd = engine.start_dockerd(h, st.registry)
        state.save(st)
        self.progress(f"containerd: {engine.containerd_mode()} (namespaces {st.hosts[0].netns}…)")

        saved = asyncio.create_task(engine.save_images(self.main_engine, self.preload, self.state_dir / "images"))
        await engine.wait_ready("registry", f"http://{st.registry}/v2/", st.registry_proc,
                                self.state_dir / "registry.log")
        self.progress(f"registry {st.registry}")
        pushed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        try:
            await _all(self._bring_up(h, saved, pushed) for h in st.hosts)
        finally:
            saved.cancel()
            for f in (saved, pushed):  # retrieved: no "never retrieved" noise after a failure
                if f.done() and not f.cancelled():
                    f.exception()
        if self.join:
            await self._form_swarm()
        st.complete = True
        state.save(st)

    async def _bring_up(self, h: HostState, saved: asyncio.Task[list[Path]], pushed: asyncio.Future[None]) -> None:
        st = self.state
        await engine.wait_ready(f"{h.name}: dockerd", h.engine, h.dockerd, h.path / "dockerd.log")
        self.progress(f"{h.name}: dockerd pid {h.dockerd.pid if h.dockerd else '?'} on {h.engine}")
        h.daemon = self._start_daemon(h)
        state.save(st)
        if h.index == 1:
            try:
                await engine.load_and_push(h.engine, self.preload, await saved, st.registry)
            except BaseException as e:
                pushed.set_exception(LabError(f"host-1 could not fill the registry: {e}"))
                raise
            pushed.set_result(None)
            self.progress(f"{h.name}: pushed {', '.join(self.preload)} to {st.registry}")
        else:
            await pushed
            await engine.pull_and_tag(h.engine, self.preload, st.registry)
            self.progress(f"{h.name}: pulled {', '.join(self.preload)}")
        await engine.wait_ready(f"{h.name}: shoal daemon", h.api, h.daemon, h.path / "shoal.log")
        self.progress(f"{h.name}: shoal daemon pid {h.daemon.pid if h.daemon else '?'} on {h.api}")

    def _start_daemon(self, h: HostState) -> ProcRef:
        argv = [
            "nsenter", f"--net={h.netns_path}", f"--uts={h.uts_path}", *_shoal_command(), "daemon",
            "-H", h.api, "--data-root", f"{h.dir}/shoal", "--engine", h.engine, "--advertise-addr", h.addr,
            *self.daemon_args,
        ]
        env = {k: v for k, v in os.environ.items() if k not in ("DOCKER_HOST", "SHOAL_HOST")}
        env["PYTHONUNBUFFERED"] = "1"
        return proc.spawn(argv, h.path / "shoal.log", env)

    async def _form_swarm(self) -> None:
        st = self.state
        mgr = st.manager

        def init() -> tuple[str, str, str]:
            api = docker.APIClient(base_url=mgr.api, version="1.41", timeout=60)
            body: dict[str, Any] = {"AdvertiseAddr": mgr.addr, "ListenAddr": f"0.0.0.0:{SWARM_PORT}"}
            if st.managers > 1:
                body["Store"] = "etcd"  # managers that fail over: each runs an etcd member
            resp = api._post_json(api._url("/swarm/init"), data=body)
            api._raise_for_status(resp)
            tokens = api.inspect_swarm()["JoinTokens"]
            return str(resp.json()), tokens["Worker"], tokens["Manager"]

        def join(h: HostState, token: str) -> str:
            api = docker.APIClient(base_url=h.api, version="1.41", timeout=60)
            api.join_swarm([f"{mgr.addr}:{SWARM_PORT}"], token, listen_addr=f"0.0.0.0:{SWARM_PORT}",
                           advertise_addr=h.addr)
            return str(api.info()["Swarm"]["NodeID"])

        try:
            mgr.node_id, token, manager_token = await asyncio.to_thread(init)
        except docker.errors.APIError as e:
            raise LabError(f"{mgr.name}: swarm init failed: Error response from daemon: {e.explanation}") from None
        state.save(st)
        store = " on etcd" if st.managers > 1 else ""
        self.progress(f"{mgr.name}: swarm init{store}, node {mgr.node_id} (manager)")

        async def join_one(h: HostState, token: str, role: str) -> None:
            try:
                h.node_id = await asyncio.to_thread(join, h, token)
            except docker.errors.APIError as e:
                raise LabError(f"{h.name}: swarm join failed: Error response from daemon: {e.explanation}") from None
            state.save(st)
            self.progress(f"{h.name}: joined, node {h.node_id} ({role})")

        for h in st.hosts[1:st.managers]:  # one at a time: etcd takes one new member at a time
            await join_one(h, manager_token, "manager")
        await _all(join_one(h, token, "worker") for h in st.hosts[st.managers:])

    async def _restore(self, h: HostState) -> None:
        st = self.state
        member = _etcd_member(h)
        if member is not None:
            os.kill(member, signal.SIGCONT)  # stopped by stop_etcd, or running: harmless
        link = net.link_up(h.veth)
        if link is None:
            raise LabError(f"{h.name}: its link {h.veth} is gone; the lab needs rebuilding (down, then up)")
        if not link:
            await net.set_link(h, True)
            await net.forget_neighbours(h, st.hosts)
            self.progress(f"{h.name}: link up")
        if not proc.alive(h.dockerd):
            h.dockerd = engine.start_dockerd(h, st.registry)
            state.save(st)
            await engine.wait_ready(f"{h.name}: dockerd", h.engine, h.dockerd, h.path / "dockerd.log")
            self.progress(f"{h.name}: dockerd restarted, pid {h.dockerd.pid}")
        if not proc.alive(h.daemon):
            h.daemon = self._start_daemon(h)
            state.save(st)
            await engine.wait_ready(f"{h.name}: shoal daemon", h.api, h.daemon, h.path / "shoal.log")
            self.progress(f"{h.name}: shoal daemon restarted, pid {h.daemon.pid}")

    async def _down(self) -> None:
        if self.state_dir.is_dir() and not (self.state_dir / MARKER).exists() and any(self.state_dir.iterdir()):
            raise LabError(f"{self.state_dir} holds no lab (no {MARKER} file): nothing done")
        owner = net.bridge_owner()
        if owner and Path(owner) != self.state_dir and state.state_file(Path(owner)).exists():
            raise LabError(f"no lab at {self.state_dir}: the lab on this machine is at {owner} "
                           f"(`shoal lab down --state-dir {owner}` removes it)")
        st = state.load(self.state_dir)
        problems: list[str] = []
        if st is not None:
            await _all(self._stop_host(h) for h in st.hosts)
            if await proc.stop(st.registry_proc, signal.SIGTERM, 5):
                self.progress("registry stopped")
        # Whatever still lives in a lab namespace (a lab whose state was lost, a crashed engine's
        # containerd or shims) was started by a lab.
        leftovers = [r for ns in net.lab_netns() for r in proc.in_netns(f"/run/netns/{ns}")]
        if leftovers:
            for r in leftovers:
                proc.send(r, signal.SIGKILL)
            if not await proc.wait_gone(leftovers, 10):
                problems.append(f"processes survived SIGKILL: {[r.pid for r in leftovers if proc.alive(r)]}")
            self.progress(f"killed {len(leftovers)} leftover process(es) in lab namespaces")
        existed = bool(net.lab_netns() or net.lab_links())
        problems += await net.teardown()
        if existed:
            self.progress(f"removed bridge {BRIDGE}, host namespaces and links, firewall rules")
        stuck = await mounts.unmount_all(self.state_dir)
        if stuck:
            problems.append(f"could not unmount {', '.join(stuck)}")
        elif (self.state_dir / MARKER).exists():
            shutil.rmtree(self.state_dir)
            self.progress(f"removed {self.state_dir}")
        self._state = None
        if problems:
            raise LabError("down: " + "; ".join(problems))

    async def _stop_host(self, h: HostState) -> None:
        """Daemon, then the engine (its containers killed first: no waiting out stop timeouts), then
        anything of the engine's that is left: processes in the host namespace, container cgroups."""
        if await proc.stop(h.daemon, signal.SIGTERM, 5):
            self.progress(f"{h.name}: shoal daemon stopped")
        if proc.alive(h.dockerd):
            await engine.kill_containers(h.engine)
            await proc.stop(h.dockerd, signal.SIGTERM, 20)
            self.progress(f"{h.name}: dockerd stopped")
        rest = proc.in_netns(h.netns_path) + proc.in_cgroups(engine.container_ids(h))
        for r in rest:
            proc.send(r, signal.SIGKILL)
        await proc.wait_gone(rest, 10)
        if rest:
            self.progress(f"{h.name}: killed {len(rest)} process(es) its engine left behind")
