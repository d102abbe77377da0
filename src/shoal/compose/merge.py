"""Merging service definitions (several ``-f`` files, ``extends``) with Compose's rules.

Scalars and sequences like ``command`` are replaced; mappings merge key by key; ``environment``,
``labels``, ``extra_hosts``, ``sysctls`` merge as mappings whichever form (list or mapping) each
side uses; ``ports`` merge as a set; ``volumes``/``devices`` merge by container path;
``depends_on``/``networks`` merge by name.
"""

from __future__ import annotations

from typing import Any

_AS_MAPPING = {"environment", "labels", "extra_hosts", "sysctls", "annotations"}
_BY_NAME = {"depends_on", "networks"}
_BY_TARGET = {"volumes", "devices"}
_UNIQUE = {"ports", "expose", "dns", "dns_search", "external_links", "tmpfs", "cap_add", "cap_drop",
           "security_opt", "env_file", "profiles"}
_REPLACE = {"command", "entrypoint"}


def to_mapping(value: Any, sep: str = "=") -> dict[str, Any]:
    """``["A=1", "B"]`` → ``{"A": "1", "B": None}``; a mapping is returned as is."""
    if isinstance(value, dict):
        return dict(value)
    out: dict[str, Any] = {}
    for item in value or []:
        k, found, v = str(item).partition(sep)
        out[k] = v if found else None
    return out


def _names(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return dict(value)
    return {str(n): None for n in value or []}


def _target(item: Any) -> str:
    if isinstance(item, dict):
        return str(item.get("target", item))
    parts = str(item).split(":")
    return parts[1] if len(parts) > 1 else parts[0]


def _key(item: Any) -> str:
    return repr(sorted(item.items())) if isinstance(item, dict) else str(item)


def deep_merge(base: Any, override: Any) -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for k, v in override.items():
            out[k] = deep_merge(base[k], v) if k in base else v
        return out
    return override


def merge_service(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if key not in base or key in _REPLACE:
            out[key] = value
        elif key in _AS_MAPPING:
            sep = ":" if key == "extra_hosts" else "="
            out[key] = {**to_mapping(base[key], sep), **to_mapping(value, sep)}
        elif key in _BY_NAME:
            out[key] = deep_merge(_names(base[key]), _names(value))
        elif key in _BY_TARGET:
            merged = {_target(i): i for i in base[key] or []}
            merged.update({_target(i): i for i in value or []})
            out[key] = list(merged.values())
        elif key in _UNIQUE and isinstance(base[key], list) and isinstance(value, list):
            merged = {_key(i): i for i in base[key]}
            merged.update({_key(i): i for i in value})
            out[key] = list(merged.values())
        else:
            out[key] = deep_merge(base[key], value)
    return out


def merge_section(base: dict[str, Any], override: dict[str, Any], services: bool) -> dict[str, Any]:
    """Merge a top-level section (``services``, ``networks`` ...) entry by entry."""
    out = dict(base)
    for name, value in override.items():
        if name in base and isinstance(base[name], dict) and isinstance(value, dict):
            out[name] = merge_service(base[name], value) if services else deep_merge(base[name], value)
        else:
            out[name] = value if value is not None else base.get(name)
    return out
