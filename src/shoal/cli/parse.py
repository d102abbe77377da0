"""Parsers for flag values, with the docker CLI's syntax and error wording.

Every parser raises :class:`ValueError` with a one-line message; :func:`flag` turns one into a Typer
``parser`` that reports it as a usage error (exit 2), as the docker CLI does for a bad flag value.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

import typer

from shoal.duration import parse_go_duration
from shoal.models import Mount, NetworkAttachmentConfig, PlacementPreference, PortConfig

T = TypeVar("T")



def flag(func: Callable[[str], T]) -> Callable[[str], T]:
    """Wrap a parser so that its ValueError becomes Typer's one-line 'Invalid value' usage error."""

    def parse(value: Any) -> T:
        if not isinstance(value, str):  # Typer passes defaults through parsers too
            return value  # type: ignore[no-any-return]
        try:
            return func(value)
        except ValueError as e:
            raise typer.BadParameter(str(e)) from None

    return parse


parse_duration = parse_go_duration  # the docker CLI's duration flags


_RAM = re.compile(r"^(\d+(?:\.\d+)?) ?([kKmMgGtTpP])?[iI]?[bB]?$")
_RAM_MULT = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def parse_memory(value: str) -> int:
    """docker's RAMInBytes: "512M", "1g", "1.5GiB", "1024" (bytes); binary multiples as docker uses."""
    m = _RAM.match(value.strip())
    if not m:
        raise ValueError(f"invalid size: '{value}' (e.g. 512M, 1g, 1073741824)")
    mult = _RAM_MULT[m.group(2).lower()] if m.group(2) else 1
    return int(Decimal(m.group(1)) * mult)


def parse_cpus(value: str) -> int:
    """A CPU count ("0.5", "2") to NanoCPUs, refusing values finer than one nano-CPU as docker does."""
    try:
        cpus = Decimal(value.strip())
    except InvalidOperation:
        raise ValueError(f"failed to parse {value} as a rational number") from None
    if cpus < 0 or not cpus.is_finite():
        raise ValueError(f"invalid CPU value {value}: must be a positive number")
    nano = cpus * 1_000_000_000
    if nano != nano.to_integral_value():
        raise ValueError("value is too precise")
    return int(nano)


def parse_uint(value: str) -> int:
    """An unsigned integer, with strconv.ParseUint's complaint for anything else."""
    try:
        n = int(value.strip(), 0)
    except ValueError:
        raise ValueError(f'strconv.ParseUint: parsing "{value}": invalid syntax') from None
    if n < 0:
        raise ValueError(f'strconv.ParseUint: parsing "{value}": invalid syntax')
    return n


def parse_ratio(value: str) -> float:
    """A failure ratio between 0 and 1."""
    try:
        r = float(value)
    except ValueError:
        raise ValueError(f'invalid ratio "{value}"') from None
    if not 0.0 <= r <= 1.0:
        raise ValueError(f'invalid ratio "{value}": must be between 0 and 1')
    return r


def parse_choice(*choices: str) -> Callable[[str], str]:
    """A parser accepting exactly one of ``choices``."""

    def parse(value: str) -> str:
        if value not in choices:
            raise ValueError(f'"{value}" is not one of ' + ", ".join(f'"{c}"' for c in choices))
        return value

    return parse


# --------------------------------------------------------------------------- key=value lists


def parse_env(value: str) -> str:
    """``KEY=VAL`` as is; a bare ``KEY`` takes the value from this shell's environment, as docker does."""
    key, eq, _ = value.partition("=")
    if not key:
        raise ValueError(f"invalid environment variable: {value}")
    if not eq and key in os.environ:
        return f"{key}={os.environ[key]}"
    return value


def parse_label(value: str) -> str:
    """``key[=value]``; the key must not be empty."""
    if not value.partition("=")[0].strip():
        raise ValueError(f"invalid label '{value}': empty name")
    return value


def kv_map(items: Iterable[str]) -> dict[str, str]:
    """``["a=1", "b"]`` to ``{"a": "1", "b": ""}`` (docker's ConvertKVStringsToMap)."""
    out: dict[str, str] = {}
    for item in items:
        k, _, v = item.partition("=")
        out[k] = v
    return out


def merge_env(env: Iterable[str]) -> list[str]:
    """Keep the last value of each variable, where it was last given (as docker's create does)."""
    out: dict[str, str] = {}
    for e in env:
        key = e.partition("=")[0]
        out.pop(key, None)
        out[key] = e
    return list(out.values())


def normalize_image(image: str) -> str:
    """Add ``:latest`` to an untagged image name, as the docker CLI does before it sends a spec."""
    if "@" in image or ":" in image.rpartition("/")[2]:
        return image
    return f"{image}:latest"


def parse_scale(value: str) -> tuple[str, int]:
    """``SERVICE=REPLICAS`` for ``service scale``."""
    name, eq, n = value.partition("=")
    if not eq or not name:
        raise ValueError(f"invalid scale specifier '{value}'. See 'shoal service scale --help'")
    try:
        replicas = int(n)
    except ValueError:
        raise ValueError(f'invalid replicas value {n}: strconv.ParseUint: parsing "{n}": invalid syntax') from None
    if replicas < 0:
        raise ValueError(f"invalid replicas value {n}: must not be negative")
    return name, replicas


def parse_filter(value: str) -> tuple[str, str]:
    """``key=value`` for ``-f/--filter``."""
    k, eq, v = value.partition("=")
    if not eq or not k:
        raise ValueError(f"bad format of filter (expected name=value): {value}")
    return k.strip().lower(), v


# --------------------------------------------------------------------------- ports


_PROTOCOLS = ("tcp", "udp", "sctp")


def _port_range(text: str, what: str) -> tuple[int, int]:
    lo_s, dash, hi_s = text.partition("-")
    try:
        lo = int(lo_s)
        hi = int(hi_s) if dash else lo
    except ValueError:
        raise ValueError(f"invalid {what}port: {text}") from None
    if not (0 < lo <= 65535 and 0 < hi <= 65535) or hi < lo:
        raise ValueError(f"invalid {what}port: {text}")
    return lo, hi


def _parse_publish_long(value: str) -> list[PortConfig]:
    port = PortConfig()
    for field in value.split(","):
        key, eq, val = field.partition("=")
        key = key.strip().lower()
        if not eq:
            raise ValueError(f"invalid field {field} must be a key=value pair")
        if key == "mode":
            if val not in ("ingress", "host"):
                raise ValueError(f"invalid publish mode value ({val}): must be either 'ingress' or 'host'")
            port.PublishMode = val
        elif key == "protocol":
            if val not in _PROTOCOLS:
                raise ValueError(f"invalid protocol value '{val}'")
            port.Protocol = val
        elif key in ("target", "published"):
            try:
                n = int(val)
            except ValueError:
                raise ValueError(f'invalid {key} port ({val}): value must be an integer') from None
            if not 0 <= n <= 65535:
                raise ValueError(f"invalid {key} port ({val}): out of range")
            if key == "target":
                port.TargetPort = n
            else:
                port.PublishedPort = n
        else:
            raise ValueError(f"invalid field key {key}")
    if port.TargetPort == 0:
        raise ValueError(f"missing mandatory field \"target\" in '{value}'")
    return [port]


def parse_publish(value: str) -> list[PortConfig]:
    """A ``-p`` value: long syntax ``published=8080,target=80,protocol=udp,mode=host`` or the short
    ``[published:]target[/proto]`` with equal-length ranges (``8080-8081:80-81``). As in docker, a host
    IP is refused (services listen on every address) and a bare target port gets a port picked by the swarm."""
    if "=" in value:
        return _parse_publish_long(value)
    rest, slash, proto = value.rpartition("/") if "/" in value else (value, "", "tcp")
    proto = proto.lower() if slash else "tcp"
    if proto not in _PROTOCOLS:
        raise ValueError(f"invalid proto: {proto}")
    parts = rest.split(":")
    if rest.startswith("[") or len(parts) == 3:
        raise ValueError("hostip is not supported")
    if len(parts) == 1:
        published, target = "", parts[0]
    elif len(parts) == 2:
        published, target = parts
    else:
        raise ValueError(f"invalid port format for --publish: {value}")
    if not target:
        raise ValueError(f"no port specified: {value}<empty>")
    t_lo, t_hi = _port_range(target, "container")
    if published:
        p_lo, p_hi = _port_range(published, "host")
        if p_hi - p_lo != t_hi - t_lo:
            raise ValueError(f"invalid ranges specified for container and host Ports: {target} and {published}")
    else:
        p_lo = 0
    return [
        PortConfig(
            Protocol=proto,
            TargetPort=t,
            PublishedPort=(p_lo + i) if published else 0,
            PublishMode="ingress",
        )
        for i, t in enumerate(range(t_lo, t_hi + 1))
    ]


def port_key(spec: str) -> tuple[int, str]:
    """``--publish-rm`` accepts ``TARGET[/PROTO]`` or a full publish spec; return (target, protocol)."""
    ports = parse_publish(spec) if "=" in spec or ":" in spec else None
    if ports:
        return ports[0].TargetPort, ports[0].Protocol
    num, _, proto = spec.partition("/")
    try:
        return int(num), (proto or "tcp").lower()
    except ValueError:
        raise ValueError(f"invalid port: {spec}") from None


# --------------------------------------------------------------------------- mounts, networks, placement


def _bool(key: str, val: str) -> bool:
    low = val.lower()
    if low in ("", "1", "true"):
        return True
    if low in ("0", "false"):
        return False
    raise ValueError(f"invalid value for {key}: {val}")


def parse_mount(value: str) -> Mount:
    """``type=bind,source=/a,target=/b,readonly`` (docker's --mount CSV syntax)."""
    mount = Mount(Type="volume")
    bind: dict[str, Any] = {}
    volume: dict[str, Any] = {}
    tmpfs: dict[str, Any] = {}
    for field in value.split(","):
        key, eq, val = field.partition("=")
        key = key.strip().lower()
        if not eq and key not in ("readonly", "ro", "volume-nocopy", "bind-nonrecursive"):
            raise ValueError(f"invalid field '{field}' must be a key=value pair")
        if key == "type":
            if val not in ("bind", "volume", "tmpfs", "npipe"):
                raise ValueError(f"invalid mount type '{val}'")
            mount.Type = val
        elif key in ("source", "src"):
            mount.Source = val
        elif key in ("target", "dst", "destination"):
            mount.Target = val
        elif key in ("readonly", "ro"):
            mount.ReadOnly = _bool(key, val)
        elif key == "consistency":
            mount.Consistency = val
        elif key == "bind-propagation":
            bind["Propagation"] = val.lower()
        elif key == "bind-nonrecursive":
            bind["NonRecursive"] = _bool(key, val)
        elif key == "volume-nocopy":
            volume["NoCopy"] = _bool(key, val)
        elif key == "volume-label":
            lk, _, lv = val.partition("=")
            volume.setdefault("Labels", {})[lk] = lv
        elif key == "volume-driver":
            volume.setdefault("DriverConfig", {})["Name"] = val
        elif key == "volume-opt":
            ok, _, ov = val.partition("=")
            volume.setdefault("DriverConfig", {}).setdefault("Options", {})[ok] = ov
        elif key == "tmpfs-size":
            tmpfs["SizeBytes"] = parse_memory(val)
        elif key == "tmpfs-mode":
            try:
                tmpfs["Mode"] = int(val, 8)
            except ValueError:
                raise ValueError(f"invalid value for {key}: {val}") from None
        else:
            raise ValueError(f"unexpected key '{key}' in '{field}'")
    if not mount.Target:
        raise ValueError("target is required")
    for opts, kind in ((bind, "bind"), (volume, "volume"), (tmpfs, "tmpfs")):
        if opts and mount.Type != kind:
            raise ValueError(f"cannot mix '{kind}-*' options with mount type '{mount.Type}'")
    mount.BindOptions = bind or None
    mount.VolumeOptions = volume or None
    mount.TmpfsOptions = tmpfs or None
    return mount


def parse_network(value: str) -> NetworkAttachmentConfig:
    """``NAME`` or ``name=NAME,alias=A,driver-opt=k=v``."""
    if "=" not in value:
        return NetworkAttachmentConfig(Target=value)
    net = NetworkAttachmentConfig()
    for field in value.split(","):
        key, _, val = field.partition("=")
        key = key.strip().lower()
        if key in ("name", "target"):
            net.Target = val
        elif key == "alias":
            net.Aliases = [*(net.Aliases or []), val]
        elif key == "driver-opt":
            dk, _, dv = val.partition("=")
            net.DriverOpts = {**(net.DriverOpts or {}), dk: dv}
        else:
            raise ValueError(f"invalid field key {key}")
    if not net.Target:
        raise ValueError("network name/id is not specified")
    return net


def parse_placement_pref(value: str) -> PlacementPreference:
    """``spread=node.labels.zone``; spread is the only strategy, as in Swarm."""
    strategy, eq, arg = value.partition("=")
    if not eq:
        raise ValueError('placement preference must be of the format "<strategy>=<arg>"')
    if strategy != "spread":
        raise ValueError(f"unsupported placement preference {strategy} (only spread is supported)")
    return PlacementPreference(Spread={"SpreadDescriptor": arg})


def parse_generic_resource(value: str) -> tuple[str, int]:
    """``--generic-resource gpu=2``: a discrete resource kind and how many units to reserve."""
    kind, sep, n = value.partition("=")
    if not sep or not kind or not n.isdigit() or int(n) <= 0:
        raise ValueError(f"invalid generic resource {value!r}: expected KIND=COUNT, e.g. gpu=2")
    return kind, int(n)
