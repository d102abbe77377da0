"""A project's cluster-wide objects for ``docker stack deploy``: networks, secrets, configs, volume
mounts and the order services start in.

Names follow docker/cli's stack code: an object declared under key ``k`` is created as ``{stack}_k``
unless the file gives ``name:``; external objects keep their own name and must already exist. Every
created object carries the ``com.docker.stack.namespace`` label so the stack can find and remove it.
Warnings (what a cluster cannot honour) go to ``project.warnings`` with the file:line that asks.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

from .. import models as m
from . import aliyun
from .files import MAX_CONFIG_BYTES, MAX_SECRET_BYTES, FileTooLarge, human_size, read_bounded
from .loader import Project
from .merge import to_mapping
from .units import size

NAMESPACE_LABEL = "com.docker.stack.namespace"
DEFAULT_NETWORK = "default"
SERVICE_STARTED = "service_started"


@dataclass
class StackResources:
    """Everything ``docker stack deploy`` of one project creates or needs, keyed for the deployer.

    ``order`` lists waves of Compose service names: a wave depends only on earlier waves, so the
    deployer may create a wave's services together. ``wait_for`` says what each service waits for
    (``{dependency: condition}``); swarm ignores ``depends_on``, Shoal's deployer does not.
    """

    services: dict[str, m.ServiceSpec] = field(default_factory=dict)
    networks: dict[str, m.NetworkSpec] = field(default_factory=dict)
    external_networks: list[str] = field(default_factory=list)
    secrets: dict[str, m.SecretSpec] = field(default_factory=dict)
    external_secrets: list[str] = field(default_factory=list)
    configs: dict[str, m.ConfigSpec] = field(default_factory=dict)
    external_configs: list[str] = field(default_factory=list)
    order: list[list[str]] = field(default_factory=list)
    wait_for: dict[str, dict[str, str]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def _labels(value: Any, stack: str) -> dict[str, str]:
    labels = {k: "" if v is None else str(v) for k, v in to_mapping(value).items()}
    return {**labels, NAMESPACE_LABEL: stack}


def external_name(key: str, cfg: dict[str, Any] | None) -> str | None:
    """The name an external object has (``external: true`` → its key or ``name:``, the v3.0-3.3
    ``external: {name: x}`` → x), or None if the object is not external."""
    cfg = cfg or {}
    ext = cfg.get("external")
    if isinstance(ext, dict):
        return str(ext.get("name") or cfg.get("name") or key)
    if ext:
        return str(cfg.get("name") or key)
    return None


def full_name(stack: str, key: str, cfg: dict[str, Any] | None) -> str:
    """The cluster name of top-level object ``key``: external name, ``name:``, or ``{stack}_{key}``."""
    ext = external_name(key, cfg)
    if ext is not None:
        return ext
    name = (cfg or {}).get("name")
    return str(name) if name else f"{stack}_{key}"


# --------------------------------------------------------------------------- networks


def service_networks(svc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A service's networks as ``{key: options}``; none given means the project's default network."""
    nets = svc.get("networks")
    if not nets:
        return {DEFAULT_NETWORK: {}}
    if isinstance(nets, list):
        return {str(n): {} for n in nets}
    return {str(k): dict(v or {}) for k, v in nets.items()}


def networks(project: Project, stack: str, res: StackResources) -> None:
    """Fill ``res.networks``/``external_networks`` from the declared networks, plus ``{stack}_default``
    when a service joins the default network without the file declaring it."""
    uses_default = any(DEFAULT_NETWORK in service_networks(s) for s in project.services.values()
                       if str(s.get("network_mode")) not in PREDEFINED_NETWORKS)
    declared = dict(project.networks)
    if uses_default and DEFAULT_NETWORK not in declared:
        declared[DEFAULT_NETWORK] = {}
    for key, cfg in declared.items():
        cfg = cfg or {}
        ext = external_name(key, cfg)
        if ext is not None:
            res.external_networks.append(ext)
            continue
        driver = cfg.get("driver") or "overlay"
        if driver != "overlay":
            project.warnings.append(f"{project.where(('networks', key, 'driver'))}: network {key}: driver "
                                    f"{driver!r} cannot span hosts; using overlay")
            driver = "overlay"
        ipam = cfg.get("ipam") or {}
        ipam_opts = None
        if ipam:
            configs = [m.IPAMConfig(Subnet=str(c.get("subnet", "")), Range=str(c.get("ip_range", "")),
                                    Gateway=str(c.get("gateway", ""))) for c in ipam.get("config") or []]
            ipam_driver = None
            if ipam.get("driver") or ipam.get("options"):
                opts = {k: str(v) for k, v in (ipam.get("options") or {}).items()}
                ipam_driver = m.Driver(Name=ipam.get("driver") or "default", Options=opts or None)
            ipam_opts = m.IPAMOptions(Driver=ipam_driver, Configs=configs or None)
        opts = {k: str(v) for k, v in (cfg.get("driver_opts") or {}).items()}
        name = full_name(stack, key, cfg)
        res.networks[name] = m.NetworkSpec(
            Name=name,
            Labels=_labels(cfg.get("labels"), stack),
            DriverConfiguration=m.Driver(Name=driver, Options=opts or None),
            Internal=bool(cfg.get("internal", False)),
            Attachable=bool(cfg.get("attachable", False)),
            Ipv6Enabled=bool(cfg.get("enable_ipv6", False)),
            IPAMOptions=ipam_opts,
        )


# Swarm's predefined networks (the engines' own): a service may be on one, alone and without aliases.
PREDEFINED_NETWORKS = ("host", "bridge")


def network_mode(project: Project, name: str, svc: dict[str, Any]) -> str | None:
    """A service's ``network_mode`` as the predefined network it means ("host", "bridge"), or None.

    ``docker stack deploy`` ignores network_mode with a warning ("Ignoring unsupported options") and
    puts the service on the stack's overlay network; its documented way to host networking is an
    external network named ``host``. Shoal takes ``host``/``bridge`` to mean that network, and
    refuses what a swarm task cannot be (no network, another container's namespace) instead of
    running it somewhere the file did not ask for.
    """
    mode = svc.get("network_mode")
    if mode is None:
        return None
    mode = str(mode)
    where = ("services", name, "network_mode")
    if mode in PREDEFINED_NETWORKS:
        if svc.get("networks"):
            raise project.error(f"service {name!r} declares mutually exclusive network_mode and networks", where)
        return mode
    if mode == "none":
        raise project.error(f"service {name!r}: network_mode 'none' is not available to swarm services (the "
                            f"predefined networks are host and bridge); leave the service off every network with "
                            f"an internal network instead", where)
    if mode.startswith(("service:", "container:")):
        raise project.error(f"service {name!r}: network_mode {mode!r}: a swarm task cannot share another "
                            f"container's network namespace; put both services on one network instead", where)
    raise project.error(f"service {name!r}: unknown network_mode {mode!r} (a swarm service may use host or "
                        f"bridge; other networks go under networks:)", where)


def attachments(project: Project, name: str, svc: dict[str, Any], stack: str) -> list[m.NetworkAttachmentConfig]:
    """TaskTemplate.Networks of a service: each network by its full name, the service's own name
    first among the aliases (as docker stack deploy does, and only on networks of the swarm's own:
    the predefined ones take no aliases), sorted by network name."""
    mode = network_mode(project, name, svc)
    if mode is not None:
        return [m.NetworkAttachmentConfig(Target=mode)]
    out = []
    for key, opts in service_networks(svc).items():
        if key not in project.networks and key != DEFAULT_NETWORK:
            raise project.error(f"service {name!r} refers to undefined network {key!r}", ("services", name, "networks"))
        target = full_name(stack, key, project.networks.get(key))
        given = [str(a) for a in opts.get("aliases") or [] if str(a) != name]
        aliases = given if target in PREDEFINED_NETWORKS else [name, *given]
        out.append(m.NetworkAttachmentConfig(Target=target, Aliases=aliases or None))
    return sorted(out, key=lambda a: a.Target)


# --------------------------------------------------------------------------- secrets and configs


def _data(project: Project, section: str, key: str, cfg: dict[str, Any]) -> str:
    """Base64 of a secret's or config's ``file`` (relative to the project directory), ``environment``
    variable or inline ``content``."""
    if "file" in cfg:
        path = Path(os.path.expanduser(str(cfg["file"])))
        path = path if path.is_absolute() else project.working_dir / path
        project.confine(path, (section, key, "file"))
        limit = MAX_SECRET_BYTES if section == "secrets" else MAX_CONFIG_BYTES
        try:
            raw = read_bounded(path, limit)
        except FileTooLarge:
            raise project.error(f"{section[:-1]} {key!r}: {path} is larger than {human_size(limit)}, Swarm's limit "
                                f"for a {section[:-1]}", (section, key, "file")) from None
        except OSError as e:
            raise project.error(f"{section[:-1]} {key!r}: cannot read {path}: {e.strerror}",
                                (section, key, "file")) from None
    elif "environment" in cfg:
        var = str(cfg["environment"])
        if var not in project.env:
            raise project.error(f"{section[:-1]} {key!r}: environment variable {var} is not set",
                                (section, key, "environment"))
        raw = project.env[var].encode()
    elif "content" in cfg:
        raw = str(cfg["content"]).encode()
    else:
        raise project.error(f"{section[:-1]} {key!r} needs file, environment or external", (section, key))
    return base64.b64encode(raw).decode()


def secrets_and_configs(project: Project, stack: str, res: StackResources) -> None:
    for key, cfg in project.secrets.items():
        cfg = cfg or {}
        ext = external_name(key, cfg)
        if ext is not None:
            res.external_secrets.append(ext)
            continue
        name = full_name(stack, key, cfg)
        driver = None
        if cfg.get("driver"):
            driver = m.Driver(Name=cfg["driver"], Options={k: str(v) for k, v in (cfg.get("driver_opts") or {}).items()}
                              or None)
        templating = m.Driver(Name=cfg["template_driver"]) if cfg.get("template_driver") else None
        data = "" if driver else _data(project, "secrets", key, cfg)
        res.secrets[name] = m.SecretSpec(Name=name, Labels=_labels(cfg.get("labels"), stack), Data=data,
                                         Driver=driver, Templating=templating)
    for key, cfg in project.configs.items():
        cfg = cfg or {}
        ext = external_name(key, cfg)
        if ext is not None:
            res.external_configs.append(ext)
            continue
        name = full_name(stack, key, cfg)
        templating = m.Driver(Name=cfg["template_driver"]) if cfg.get("template_driver") else None
        res.configs[name] = m.ConfigSpec(Name=name, Labels=_labels(cfg.get("labels"), stack),
                                         Data=_data(project, "configs", key, cfg), Templating=templating)


def _mode(value: Any, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, str):
        return int(value, 8)
    return int(value)


def file_refs(project: Project, name: str, svc: dict[str, Any], stack: str, section: str) -> list[dict[str, Any]]:
    """A service's ``secrets:``/``configs:`` (short or long syntax) as reference fields: the full
    name and the file it appears as (secrets: ``target`` or the key; configs: ``/<key>``)."""
    declared: dict[str, Any] = getattr(project, section)
    out = []
    for i, item in enumerate(svc.get(section) or []):
        ref = {"source": item} if isinstance(item, str) else dict(item)
        key = str(ref.get("source", ""))
        if key not in declared:
            raise project.error(f"service {name!r} refers to undefined {section[:-1]} {key!r}",
                                ("services", name, section, i))
        target = ref.get("target") or (key if section == "secrets" else f"/{key}")
        out.append({
            "name": full_name(stack, key, declared[key]),
            "File": {"Name": str(target), "UID": str(ref.get("uid", "0")), "GID": str(ref.get("gid", "0")),
                     "Mode": _mode(ref.get("mode"), 0o444)},
        })
    return out


# --------------------------------------------------------------------------- volumes

_PROPAGATION = {"shared", "slave", "private", "rshared", "rslave", "rprivate"}
_CONSISTENCY = {"consistent", "cached", "delegated"}


def _is_path(source: str) -> bool:
    return source.startswith(("/", ".", "~"))


def short_volume(spec: str) -> dict[str, Any]:
    """``[source:]target[:mode]`` → the long syntax."""
    parts = spec.split(":")
    if len(parts) == 1:
        return {"type": "volume", "target": parts[0]}
    if len(parts) > 3:
        raise ValueError(f"invalid volume specification {spec!r}")
    source, target = parts[0], parts[1]
    modes = parts[2].split(",") if len(parts) == 3 else []
    out: dict[str, Any] = {"type": "bind" if _is_path(source) else "volume", "source": source, "target": target}
    for mode in modes:
        if mode == "ro":
            out["read_only"] = True
        elif mode == "nocopy":
            out["volume"] = {"nocopy": True}
        elif mode in _PROPAGATION:
            out["bind"] = {"propagation": mode}
        elif mode in _CONSISTENCY:
            out["consistency"] = mode
        elif mode not in ("rw", "z", "Z"):
            raise ValueError(f"invalid volume mode {mode!r} in {spec!r}")
    return out


def _tmpfs(target: str, options: str = "") -> m.Mount:
    opts: dict[str, Any] = {}
    for opt in filter(None, options.split(",")):
        k, _, v = opt.partition("=")
        if k == "size":
            opts["SizeBytes"] = size(v)
        elif k == "mode":
            opts["Mode"] = int(v, 8)
    return m.Mount(Type="tmpfs", Target=target, TmpfsOptions=opts or None)


def mounts(project: Project, name: str, svc: dict[str, Any], stack: str) -> list[m.Mount]:
    """ContainerSpec.Mounts from ``volumes`` (short and long syntax) and ``tmpfs``."""
    out: list[m.Mount] = []
    for i, item in enumerate(svc.get("volumes") or []):
        where = ("services", name, "volumes", i)
        vol = short_volume(item) if isinstance(item, str) else dict(item)
        kind = vol.get("type", "volume")
        source = str(vol.get("source") or "")
        target = str(vol.get("target", ""))
        read_only = bool(vol.get("read_only", False))
        consistency = str(vol.get("consistency", ""))
        if kind == "volume" and not source:
            out.append(m.Mount(Type="volume", Target=target, ReadOnly=read_only))
        elif kind == "volume":
            cfg = project.volumes.get(source)
            if source not in project.volumes:
                if project.format != "v1":
                    raise project.error(f"named volume {source!r} is used in service {name!r} but no declaration "
                                        "was found in the volumes section", where)
                cfg = {}  # v1 files create named volumes on first use
            cfg = cfg or {}
            opts: dict[str, Any] = {}
            if (vol.get("volume") or {}).get("nocopy"):
                opts["NoCopy"] = True
            if external_name(source, cfg) is None:
                opts["Labels"] = _labels(cfg.get("labels"), stack)
                if cfg.get("driver") or cfg.get("driver_opts"):
                    drv: dict[str, Any] = {"Name": cfg.get("driver") or "local"}
                    if cfg.get("driver_opts"):
                        drv["Options"] = {k: str(v) for k, v in cfg["driver_opts"].items()}
                    opts["DriverConfig"] = drv
            out.append(m.Mount(Type="volume", Source=full_name(stack, source, cfg), Target=target, ReadOnly=read_only,
                               Consistency=consistency, VolumeOptions=opts or None))
        elif kind == "bind":
            path = Path(os.path.expanduser(source))
            path = path if path.is_absolute() else (project.working_dir / path).resolve()
            project.warnings.append(f"{project.where(where)}: {name}: bind mount {path}: the path must exist on "
                                    "every node the service's tasks may run on")
            prop = (vol.get("bind") or {}).get("propagation")
            out.append(m.Mount(Type="bind", Source=str(path), Target=target, ReadOnly=read_only,
                               Consistency=consistency, BindOptions={"Propagation": prop} if prop else None))
        elif kind == "tmpfs":
            if source:
                raise project.error("a tmpfs mount takes no source", where)
            tsize = (vol.get("tmpfs") or {}).get("size")
            out.append(m.Mount(Type="tmpfs", Target=target, ReadOnly=read_only,
                               TmpfsOptions={"SizeBytes": size(tsize)} if tsize is not None else None))
        else:
            project.warnings.append(f"{project.where(where)}: {name}: {kind} mounts are not supported; ignored")
    tmpfs = svc.get("tmpfs") or []
    for i, item in enumerate([tmpfs] if isinstance(tmpfs, str) else tmpfs):
        target, _, options = str(item).partition(":")
        try:
            out.append(_tmpfs(target, options))
        except ValueError as e:
            raise project.error(str(e), ("services", name, "tmpfs", i)) from None
    return out


# --------------------------------------------------------------------------- start order


def dependencies(svc: dict[str, Any]) -> dict[str, str]:
    """``{dependency: condition}`` from ``depends_on`` (list or long form) and Aliyun's
    ``aliyun.depends`` label (compose/aliyun.py checks its names; depends_on's condition wins)."""
    deps = svc.get("depends_on") or []
    if isinstance(deps, list):
        out = dict.fromkeys((str(d) for d in deps), SERVICE_STARTED)
    else:
        out = {str(k): str((v or {}).get("condition", SERVICE_STARTED)) for k, v in deps.items()}
    for dep in aliyun.depends(svc):
        out.setdefault(dep, aliyun.DEPENDS_CONDITION)
    return out


def start_order(project: Project, res: StackResources) -> None:
    """Fill ``res.order`` (waves, Kahn's algorithm, names sorted within a wave) and ``res.wait_for``;
    a cycle is an error naming its services."""
    deps = {name: dependencies(svc) for name, svc in project.services.items()}
    res.wait_for = {n: d for n, d in deps.items() if d}
    placed: set[str] = set()
    while len(placed) < len(deps):
        wave = sorted(n for n, d in deps.items() if n not in placed and set(d) <= placed)
        if not wave:
            left = {n: [d for d in ds if d not in placed] for n, ds in deps.items() if n not in placed}
            cycle = _cycle(left)
            for a, b in pairwise(cycle):  # an edge only the Aliyun label makes: name it
                svc = project.services[a]
                if b in aliyun.depends(svc) and b not in to_mapping(svc.get("depends_on")):
                    raise project.error(f"{a}: {aliyun.DEPENDS}: circular dependency: " + " -> ".join(cycle),
                                        aliyun.label_path(svc, a, aliyun.DEPENDS))
            raise project.error("circular depends_on: " + " -> ".join(cycle), ("services", cycle[0], "depends_on"))
        res.order.append(wave)
        placed.update(wave)


def _cycle(graph: dict[str, list[str]]) -> list[str]:
    # Every node left has an unplaced dependency, so walking first dependencies must revisit a node.
    path: list[str] = []
    node = min(graph)
    while node not in path:
        path.append(node)
        node = sorted(graph[node])[0]
    return [*path[path.index(node):], node]
