"""Shared volumes of Aliyun's ``driver: nas`` / ``driver: ossfs``: what their options mean here.

A stateful service must find its data on whichever node its task lands. Aliyun mounts a NAS (NFS)
export or an OSS bucket; this machine's kernel has no NFS/CIFS/9P/Ceph, but FUSE works, so here a
volume is an ``sshfs`` mount of ``<server>:<path>[/<bucket>]/<volume>``: any host with sshd (sftp) is
the shared store. The node's agent mounts it and binds the mount into the container
(agent/volumes.py); this module only parses, so the API (400 at create/update) and the agent
(the mount) apply the same rules.

Options (``driver_opts``): ``server`` (host[:port], Aliyun's NAS mount target; ``host`` is accepted
for it), ``path`` (the export directory, default ``/``), ``user``, ``identity`` (a private key file
on the node), ``known_hosts`` (a file on the node with the server's host key, else root's); ossfs's
``bucket`` is a sub-directory of the export named after the bucket. Aliyun's NFS-only ``vers`` and
``mode`` are accepted and ignored; anything else is refused with the reason. The node's defaults
(``SHOAL_VOLUME_OPTS``) fill what a volume leaves out: Aliyun's files often name no server.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

DRIVERS = ("nas", "ossfs")
ENV_DEFAULTS = "SHOAL_VOLUME_OPTS"

# The options each driver takes; ignored ones are Aliyun's NFS details with no meaning over sshfs.
COMMON_OPTS = frozenset({"server", "host", "path", "user", "identity", "known_hosts"})
ALLOWED = {"nas": COMMON_OPTS | {"vers", "mode"}, "ossfs": COMMON_OPTS | {"bucket"}}
IGNORED = frozenset({"vers", "mode"})
DEFAULT_KEYS = COMMON_OPTS - {"host"}  # what SHOAL_VOLUME_OPTS may say (a bucket is the volume's own)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # a volume name is one path segment on the server
_HOST_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)(:\d{1,5})?$")
_USER_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


class VolumeError(ValueError):
    """A shared volume that cannot be used as given; the text names the volume and says why."""


@dataclass(frozen=True)
class Remote:
    """Where a volume's data lives: ``user@host:directory`` over ssh on ``port``."""

    host: str
    port: int
    directory: str
    user: str = ""
    identity: str = ""
    known_hosts: str = ""
    made: tuple[str, ...] = ()  # the directories below the export the volume needs (made on first mount)

    @property
    def login(self) -> str:
        return f"{self.user + '@' if self.user else ''}{self.host}"

    def target(self) -> str:
        return f"{self.login}:{self.directory}"

    def describe(self) -> str:
        return f"{self.target()} (port {self.port})"


def shared_driver(volume_options: dict[str, Any] | None) -> tuple[str, dict[str, str]] | None:
    """(driver, options) of a mount's ``VolumeOptions`` when its driver is nas/ossfs, else None."""
    dc = (volume_options or {}).get("DriverConfig") or {}
    driver = dc.get("Name") if isinstance(dc, dict) else None
    if driver not in DRIVERS:
        return None
    opts = dc.get("Options") or {}
    return str(driver), {str(k): str(v) for k, v in (opts.items() if isinstance(opts, dict) else ())}


def check_options(driver: str, name: str, opts: dict[str, str], *, need_server: bool = True) -> None:
    """Everything about a volume's own options that can be known without the node; the server may
    be missing when ``need_server`` is false (the node's SHOAL_VOLUME_OPTS may give it)."""
    if driver not in DRIVERS:
        raise VolumeError(f"unknown shared-volume driver {driver!r} (known: {', '.join(DRIVERS)})")
    if not name:
        raise VolumeError(f"a {driver} volume needs a name: the name is its directory on the server")
    if not _NAME_RE.match(name):
        raise VolumeError(f"{driver} volume name {name!r}: use letters, digits, '_', '.', '-' only")
    unknown = sorted(set(opts) - ALLOWED[driver])
    if unknown:
        raise VolumeError(f"{driver} volume {name}: unknown option(s) {', '.join(unknown)} "
                          f"(known: {', '.join(sorted(ALLOWED[driver] - IGNORED))})")
    if "server" in opts and "host" in opts:
        raise VolumeError(f"{driver} volume {name}: give server or host, not both")
    server = opts.get("server") or opts.get("host") or ""
    if not server:
        if need_server:
            raise VolumeError(f"{driver} volume {name}: missing option server (host[:port] of the ssh/sftp "
                              f"server; or the node's {ENV_DEFAULTS})")
    else:
        _host_port(driver, name, server)
    base = opts.get("path") or "/"
    if not base.startswith("/") or ".." in base.split("/"):
        raise VolumeError(f"{driver} volume {name}: path {base!r} must be absolute, without '..'")
    if driver == "ossfs":
        bucket = opts.get("bucket", "")
        if not bucket:
            raise VolumeError(f"ossfs volume {name}: missing option bucket")
        if not _NAME_RE.match(bucket):
            raise VolumeError(f"ossfs volume {name}: bad bucket {bucket!r}")
    for key in ("identity", "known_hosts"):
        value = opts.get(key, "")
        if value and not os.path.isabs(value):
            raise VolumeError(f"{driver} volume {name}: {key} {value!r} must be an absolute path on the node")
    user = opts.get("user", "")
    if user and not _USER_RE.match(user):
        raise VolumeError(f"{driver} volume {name}: bad user {user!r}")


def _host_port(driver: str, name: str, server: str) -> tuple[str, int]:
    m = _HOST_RE.match(server)
    if m is None:
        raise VolumeError(f"{driver} volume {name}: bad server {server!r}: want host[:port]")
    port = int(m.group(2)[1:]) if m.group(2) else 22
    if not 0 < port < 65536:
        raise VolumeError(f"{driver} volume {name}: bad port in server {server!r}")
    return m.group(1).strip("[]"), port


def parse_options(driver: str, name: str, opts: dict[str, str]) -> Remote:
    """Check a volume's options (already merged with the node's defaults) and say where its data
    lives, or why not."""
    check_options(driver, name, opts)
    host, port = _host_port(driver, name, opts.get("server") or opts.get("host") or "")
    parts = [(opts.get("path") or "/").rstrip("/")]
    if driver == "ossfs":
        parts.append(opts["bucket"])
    parts.append(name)
    made = tuple("/".join(parts[:i]) for i in range(2, len(parts) + 1))
    return Remote(host=host, port=port, directory="/".join(parts), user=opts.get("user", ""),
                  identity=opts.get("identity", ""), known_hosts=opts.get("known_hosts", ""), made=made)


def with_defaults(defaults: dict[str, str], opts: dict[str, str]) -> dict[str, str]:
    """A volume's own options over the node's defaults (its server or host replaces the default's)."""
    own_server = "server" in opts or "host" in opts
    base = {k: v for k, v in defaults.items() if not (own_server and k in ("server", "host"))}
    return {**base, **opts}


def parse_defaults(text: str) -> dict[str, str]:
    """``server=nas.example:22,path=/export,identity=/etc/shoal/nas_key`` (SHOAL_VOLUME_OPTS)."""
    out: dict[str, str] = {}
    for item in filter(None, (i.strip() for i in text.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or key not in DEFAULT_KEYS:
            raise VolumeError(f"{ENV_DEFAULTS}: bad item {item!r}: want KEY=VALUE with KEY one of "
                              f"{', '.join(sorted(DEFAULT_KEYS))}")
        out[key] = value.strip()
    # The same checks as a volume's own (a default that can never work is a node misconfiguration).
    check_options("nas", "defaults", out, need_server=False)
    return out


__all__ = ["DRIVERS", "ENV_DEFAULTS", "Remote", "VolumeError", "check_options", "parse_defaults",
           "parse_options", "shared_driver", "with_defaults"]
