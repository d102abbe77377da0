"""Bounds on what a node says about itself (its description, its engine's health).

A node's description is self-reported: the scheduler places tasks by its resources, `node ls`
shows its hostname, constraints match its engine labels. A hostile or broken agent must not be
able to store a 10 MB label, claim a million CPUs to attract every task, or take another node's
name. The bounds are far above any real machine (and what Docker engines report)."""

from __future__ import annotations

import re

from shoal.errors import InvalidArgument
from shoal.models import NodeDescription
from shoal.netmode import ENCRYPTION_LABEL

MAX_NANO_CPUS = 4096 * 10**9  # the largest machines have a few hundred cores
MAX_MEMORY_BYTES = 256 * 1024**4  # 256 TiB
MAX_LABELS = 256
MAX_LABEL_KEY, MAX_LABEL_VALUE = 256, 4096
MAX_PLUGINS = 512
MAX_GENERIC_RESOURCES = 256
MAX_SHORT = 128  # platform, OS, engine version, plugin names
MAX_REASON = 512  # an engine-down reason, shown in `node ls`
ENCRYPTION_MODES = ("ipsec", "wireguard", "none")  # of ENCRYPTION_LABEL (agent/encryption.py's probe)

_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,251}[A-Za-z0-9])?$")


def check_hostname(hostname: str) -> None:
    """A node's name as engines report it: letters, digits, '.', '_' and '-', at most 253."""
    if not hostname:
        raise InvalidArgument("a node must give its hostname")
    if not _HOSTNAME.match(hostname):
        raise InvalidArgument(f"invalid hostname {hostname[:64]!r}: letters, digits, '.', '_' and '-', "
                              "starting and ending with a letter or digit, at most 253 characters")


def check_description(desc: NodeDescription) -> None:
    """InvalidArgument naming the first field out of bounds; nothing is stored before this passes."""
    check_hostname(desc.Hostname)
    res = desc.Resources
    if not 0 <= res.NanoCPUs <= MAX_NANO_CPUS:
        raise InvalidArgument(f"node {desc.Hostname}: NanoCPUs {res.NanoCPUs} out of range (0 to {MAX_NANO_CPUS})")
    if not 0 <= res.MemoryBytes <= MAX_MEMORY_BYTES:
        raise InvalidArgument(f"node {desc.Hostname}: MemoryBytes {res.MemoryBytes} out of range "
                              f"(0 to {MAX_MEMORY_BYTES})")
    if len(res.GenericResources or ()) > MAX_GENERIC_RESOURCES:
        raise InvalidArgument(f"node {desc.Hostname}: more than {MAX_GENERIC_RESOURCES} generic resources")
    for name, value in (("Architecture", desc.Platform.Architecture), ("OS", desc.Platform.OS),
                        ("EngineVersion", desc.Engine.EngineVersion)):
        if len(value) > MAX_SHORT:
            raise InvalidArgument(f"node {desc.Hostname}: {name} longer than {MAX_SHORT} characters")
    labels = desc.Engine.Labels or {}
    if len(labels) > MAX_LABELS:
        raise InvalidArgument(f"node {desc.Hostname}: more than {MAX_LABELS} engine labels")
    for k, v in labels.items():
        if not k or len(k) > MAX_LABEL_KEY or len(v) > MAX_LABEL_VALUE:
            raise InvalidArgument(f"node {desc.Hostname}: engine label {k[:64]!r}: keys 1 to {MAX_LABEL_KEY} "
                                  f"characters, values at most {MAX_LABEL_VALUE}")
    plugins = desc.Engine.Plugins or []
    if len(plugins) > MAX_PLUGINS or any(len(v) > MAX_SHORT for p in plugins for v in p.values()):
        raise InvalidArgument(f"node {desc.Hostname}: at most {MAX_PLUGINS} plugins, names of at most "
                              f"{MAX_SHORT} characters")
    mode = labels.get(ENCRYPTION_LABEL)
    if mode is not None and mode not in ENCRYPTION_MODES:
        # The manager decides `--opt encrypted` from this label (controlapi/encryption.py).
        raise InvalidArgument(f"node {desc.Hostname}: engine label {ENCRYPTION_LABEL}={mode[:64]!r}: "
                              f"one of {', '.join(ENCRYPTION_MODES)}")
