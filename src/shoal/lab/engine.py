"""Each lab host's dockerd, the lab's registry, and moving the preload images between them.

Every host runs its own dockerd inside its namespaces (entered with ``nsenter``, not ``ip netns
exec``, which would remount /sys in a new mount namespace and hide the cgroup mounts from dockerd),
with its own data root, exec root, pid file, socket, daemon.json and identity key (dockerd 20.10
otherwise shares /etc/docker/key.json, and so its engine ID, with the machine's engine).

containerd: dockerd 20.10 uses the system containerd only if /run/containerd/containerd.sock
exists; otherwise (the case on this machine) each dockerd starts and supervises its own, with state
under its exec root and a pid file there that a restarted dockerd picks up again. Each host also has
its own containerd namespaces, so hosts stay apart even if they come to share a system containerd.

Images: the machine's engine cannot push to the lab registry (it is plain http and that engine only
trusts 127.0.0.0/8 as insecure; it must not be reconfigured), so the images are saved from it,
loaded into host-1, pushed from there to the registry, and pulled from the registry by the others.
Every host ends with each image under its plain name and under ``10.77.0.254:5000/<name>``.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import aiodocker
import aiohttp

from shoal.lab import proc
from shoal.lab.errors import LabError
from shoal.lab.state import HostState, ProcRef

MAIN_ENGINE = "unix:///var/run/docker.sock"
SYSTEM_CONTAINERD = "/run/containerd/containerd.sock"


def dockerd_argv(h: HostState, registry: str) -> list[str]:
    d = h.dir
    return [
        "nsenter", f"--net={h.netns_path}", f"--uts={h.uts_path}", "dockerd",
        "--config-file", f"{d}/daemon.json",
        "--data-root", f"{d}/docker",
        "--exec-root", f"{d}/exec",
        "--pidfile", f"{d}/docker.pid",
        "-H", h.engine,
        "--insecure-registry", registry,
        "--containerd-namespace", h.netns,
        "--containerd-plugins-namespace", f"{h.netns}-plugins",
    ]


def start_dockerd(h: HostState, registry: str) -> ProcRef:
    d = Path(h.dir)
    # Our own daemon.json: the machine's /etc/docker/daemon.json (if any) is not for lab hosts.
    (d / "daemon.json").write_text(json.dumps({"deprecated-key-path": f"{d}/key.json"}) + "\n")
    pidfile = d / "docker.pid"
    # dockerd refuses to start over a pid file whose process runs; a stale one (a SIGKILLed
    # dockerd) only needs to go.
    try:
        stale = int(pidfile.read_text().strip())
        if proc.ref_of(stale) is None:
            pidfile.unlink()
    except (OSError, ValueError):
        pass
    return proc.spawn(dockerd_argv(h, registry), d / "dockerd.log")


def containerd_mode() -> str:
    return "the system one, shared" if os.path.exists(SYSTEM_CONTAINERD) else "one per dockerd"


def write_registry_config(state_dir: Path, addr: str) -> Path:
    """docker-registry (distribution 2.8) serving plain http on the bridge address only."""
    cfg = state_dir / "registry.yml"
    cfg.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {state_dir}/registry\n  delete:\n    enabled: true\n"
        f"http:\n  addr: {addr}\n"
    )
    return cfg


def start_registry(state_dir: Path, addr: str) -> ProcRef:
    cfg = write_registry_config(state_dir, addr)
    return proc.spawn(["docker-registry", "serve", str(cfg)], state_dir / "registry.log")


async def ping(url: str) -> bool:
    """True when the daemon at ``url`` answers: ``unix://<sock>`` (a Docker API) or ``http://`` as is."""
    if url.startswith("unix://"):
        connector: aiohttp.BaseConnector = aiohttp.UnixConnector(path=url[len("unix://") :])
        target = "http://localhost/_ping"
    else:
        connector, target = aiohttp.TCPConnector(), url
    try:
        async with (
            aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=2)) as s,
            s.get(target) as r,
        ):
            return r.status == 200
    except (TimeoutError, aiohttp.ClientError, OSError):
        return False


def last_lines(log: Path, n: int = 3) -> str:
    try:
        lines = [x.strip() for x in log.read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return ""
    return " | ".join(lines[-n:])


async def wait_ready(what: str, url: str, ref: ProcRef | None, log: Path, within_s: float = 60.0) -> None:
    """Poll until ``url`` answers; fail at once, with the end of its log, if the process exits."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while not await ping(url):
        if not proc.alive(ref):
            raise LabError(f"{what} exited: {last_lines(log) or 'no output'} (log: {log})")
        if loop.time() >= deadline:
            raise LabError(f"{what} did not answer on {url} within {within_s:.0f}s (log: {log})")
        await asyncio.sleep(0.1)


# ---------------------------------------------------------------------------------------- images


def split_ref(image: str) -> tuple[str, str]:
    """``[registry/]path[:tag]`` → (path, tag) without the registry part; digests are refused."""
    if "@" in image:
        raise LabError(f"--preload {image}: name the image by tag, not by digest")
    parts = image.split("/")
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        parts = parts[1:]
    path = "/".join(parts)
    name, _, tag = path.rpartition(":") if ":" in parts[-1] else (path, "", "latest")
    if not name or not tag:
        raise LabError(f"--preload {image}: not an image name")
    return name, tag


def plain_name(image: str) -> str:
    """The name hosts know an image by: the name given (``busybox`` → ``busybox:latest``)."""
    if ":" in image.rsplit("/", 1)[-1]:
        return image
    return f"{image}:latest"


def registry_name(image: str, registry: str) -> str:
    name, tag = split_ref(image)
    return f"{registry}/{name}:{tag}"


async def check_images(engine: str, images: list[str]) -> None:
    """Fail before building anything if the machine's engine lacks an image to preload."""
    docker = aiodocker.Docker(url=engine)
    try:
        for image in images:
            split_ref(image)
            try:
                await docker.images.inspect(plain_name(image))
            except aiodocker.DockerError as e:
                if e.status == 404:
                    raise LabError(
                        f"image {plain_name(image)} is not in the machine's engine ({engine}); "
                        "scripts/build-test-image.sh builds busybox:latest"
                    ) from None
                raise LabError(f"the machine's engine ({engine}): {e.message}") from None
    except aiohttp.ClientError as e:
        raise LabError(f"cannot reach the machine's engine at {engine}: {e}") from None
    finally:
        await docker.close()


async def save_images(engine: str, images: list[str], dest: Path) -> list[Path]:
    """``docker save`` each image from the machine's engine into ``dest``."""
    await asyncio.to_thread(dest.mkdir, parents=True, exist_ok=True)
    docker = aiodocker.Docker(url=engine)
    tars: list[Path] = []
    try:
        for i, image in enumerate(images):
            tar = dest / f"image-{i}.tar"
            out = await asyncio.to_thread(tar.open, "wb")
            try:
                async with docker.images.export_image(plain_name(image)) as stream:
                    async for chunk in stream.iter_chunked(1 << 20):
                        await asyncio.to_thread(out.write, chunk)
            finally:
                out.close()
            tars.append(tar)
    finally:
        await docker.close()
    return tars


async def load_and_push(engine: str, images: list[str], tars: list[Path], registry: str) -> None:
    """On host-1: load the saved images, then push each to the lab registry."""
    docker = aiodocker.Docker(url=engine)
    try:
        for image, tar in zip(images, tars, strict=True):
            f = await asyncio.to_thread(tar.open, "rb")
            try:
                await docker.images.import_image(data=f)
            finally:
                f.close()
            remote = registry_name(image, registry)
            repo, _, tag = remote.rpartition(":")
            await docker.images.tag(plain_name(image), repo, tag=tag)
            await docker.images.push(repo, tag=tag)
    except aiodocker.DockerError as e:
        raise LabError(f"preloading images into the registry failed: {e.message}") from None
    finally:
        await docker.close()


async def pull_and_tag(engine: str, images: list[str], registry: str) -> None:
    """On the other hosts: pull from the lab registry and tag under the plain name."""
    docker = aiodocker.Docker(url=engine)
    try:
        for image in images:
            remote = registry_name(image, registry)
            repo, _, tag = remote.rpartition(":")
            await docker.images.pull(repo, tag=tag)
            name, _, plain_tag = plain_name(image).rpartition(":")
            await docker.images.tag(remote, name, tag=plain_tag)
    except aiodocker.DockerError as e:
        raise LabError(f"pulling the preload images from {registry} failed: {e.message}") from None
    finally:
        await docker.close()


async def kill_containers(engine: str) -> None:
    """SIGKILL every running container, so the engine's shutdown need not wait out stop timeouts."""
    docker = aiodocker.Docker(url=engine)
    try:
        containers = await asyncio.wait_for(docker.containers.list(), 10)
        await asyncio.gather(*(c.kill() for c in containers), return_exceptions=True)
    except (TimeoutError, aiodocker.DockerError, aiohttp.ClientError, OSError):
        pass  # stopping the engine (and the sweep after it) still ends them
    finally:
        await docker.close()


def container_ids(h: HostState) -> list[str]:
    try:
        return os.listdir(f"{h.dir}/docker/containers")
    except OSError:
        return []
