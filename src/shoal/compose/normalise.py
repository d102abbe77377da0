"""The normalised project as data: merged, interpolated, with Compose's defaults and one spelling
per key, close to what ``docker-compose config`` prints.

One spelling per key, so later code (and the comparison with docker-compose in
tests/unit/test_compose_config_compat.py) never handles both forms: ``environment`` is a mapping
with ``env_file`` folded in (and ``env_file`` dropped, as docker-compose does); ``ports`` and
``volumes`` are the long syntax (bind sources absolute); ``networks`` and ``depends_on`` are
mappings (``depends_on`` with its condition); ``labels`` are mappings; ``secrets``/``configs``
references are the long syntax. Everything else, ``x-`` keys included, is kept as the file says.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

from .convert import environment, parse_port
from .loader import SECTIONS, Project
from .merge import to_mapping
from .stack import dependencies, short_volume


def _port(p: Any) -> list[dict[str, Any]]:
    out = []
    for pc in parse_port(p):
        d: dict[str, Any] = {"target": pc.TargetPort, "protocol": pc.Protocol or "tcp", "mode": pc.PublishMode}
        if pc.PublishedPort:
            d["published"] = pc.PublishedPort
        out.append(d)
    return out


def _volume(project: Project, item: Any) -> dict[str, Any]:
    vol = short_volume(item) if isinstance(item, str) else dict(item)
    vol.setdefault("type", "volume")
    if vol["type"] == "bind" and vol.get("source"):
        path = Path(os.path.expanduser(str(vol["source"])))
        vol["source"] = str(path if path.is_absolute() else (project.working_dir / path).resolve())
    return vol


def _refs(items: Any) -> list[dict[str, Any]]:
    return [{"source": i} if isinstance(i, str) else dict(i) for i in items or []]


def _service(project: Project, svc: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(svc)
    env = environment(project, svc)
    out.pop("env_file", None)
    if env or "environment" in out:
        out["environment"] = env
    if "labels" in out:
        out["labels"] = {k: "" if v is None else str(v) for k, v in to_mapping(out["labels"]).items()}
    if "ports" in out:
        out["ports"] = [d for p in out["ports"] for d in _port(p)]
    if "volumes" in out:
        out["volumes"] = [_volume(project, v) for v in out["volumes"]]
    if "networks" in out:
        nets = out["networks"]
        out["networks"] = {str(n): None for n in nets} if isinstance(nets, list) else dict(nets)
    if "depends_on" in out:
        out["depends_on"] = {k: {"condition": c} for k, c in dependencies(svc).items()}
    for key in ("secrets", "configs"):
        if key in out:
            out[key] = _refs(out[key])
    return out


def normalised(project: Project) -> dict[str, Any]:
    """The project as one Compose Specification document (``name``, ``services``, the other
    sections when not empty, top-level ``x-`` keys)."""
    out: dict[str, Any] = {"name": project.name,
                           "services": {n: _service(project, s) for n, s in project.services.items()}}
    for section in SECTIONS[1:]:
        value = getattr(project, section)
        if value:
            out[section] = copy.deepcopy(value)
    out.update(copy.deepcopy(project.extensions))
    return out
