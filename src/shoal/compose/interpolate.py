"""``${VAR}`` interpolation as Compose does it, before validation.

Supported: ``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?err}``,
``${VAR?err}``, ``${VAR:+alt}``, ``${VAR+alt}`` (defaults may nest) and ``$$`` for a literal ``$``.
Only values are interpolated, never keys, as in Compose.

Rancher's built-in variables (rancher-compose): ``${stack_name}`` is the project (stack) name and
``${service_name}`` the name of the service whose value it is, so that a label such as
``io.rancher.scheduler.affinity:container_label_ne: io.rancher.stack_service.name=${stack_name}/${service_name}``
names the service itself. They win over the environment: that label must match the label every task
of the stack carries (compose/convert.py), whatever the shell happens to export.
"""

from __future__ import annotations

import re
from collections import ChainMap
from collections.abc import Callable, Mapping
from typing import Any

from .source import KeyPath, Source

_NAME = re.compile(r"[_a-zA-Z][_a-zA-Z0-9]*")
_BRACED = re.compile(r"([_a-zA-Z][_a-zA-Z0-9]*)(?:(:?[-?+])(.*))?", re.DOTALL)


class InterpolationError(Exception):
    pass


# What substitutions may add, over all the files of one load: the values come from the environment
# and .env (up to 2 MiB each), and a 2 MiB Compose file can name one 500,000 times, which would make
# terabytes. A real file substitutes short values (tags, hosts, a certificate or two): a few KB.
MAX_SUBSTITUTED = 16 * 1024 * 1024


class Budget:
    """Characters substituted so far; past MAX_SUBSTITUTED an InterpolationError."""

    def __init__(self, limit: int = MAX_SUBSTITUTED) -> None:
        self.limit = limit
        self.used = 0

    def spend(self, value: str) -> str:
        self.used += len(value)
        if self.used > self.limit:
            raise InterpolationError(f"variables substituted into the Compose files add up to more than "
                                     f"{self.limit // (1024 * 1024)} MiB")
        return value


def interpolate_str(s: str, env: Mapping[str, str], unset: Callable[[str], None] = lambda _n: None,
                    budget: Budget | None = None) -> str:
    budget = budget or Budget()
    out: list[str] = []
    i = 0
    while i < len(s):
        c = s[i]
        if c != "$":
            out.append(c)
            i += 1
            continue
        nxt = s[i + 1 : i + 2]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "{":
            depth, j = 1, i + 2
            while j < len(s) and depth:
                depth += {"{": 1, "}": -1}.get(s[j], 0)
                j += 1
            if depth:
                raise InterpolationError(f"invalid interpolation format {s!r}: unclosed '${{'")
            out.append(_braced(s[i + 2 : j - 1], s, env, unset, budget))
            i = j
        else:
            m = _NAME.match(s, i + 1)
            if not m:
                raise InterpolationError(f"invalid interpolation format {s!r}: use '$$' for a literal '$'")
            out.append(_lookup(m.group(), env, unset, budget))
            i = m.end()
    return "".join(out)


def _lookup(name: str, env: Mapping[str, str], unset: Callable[[str], None], budget: Budget) -> str:
    if name not in env:
        unset(name)
        return ""
    return budget.spend(env[name])


def _braced(expr: str, whole: str, env: Mapping[str, str], unset: Callable[[str], None], budget: Budget) -> str:
    m = _BRACED.fullmatch(expr)
    if not m:
        raise InterpolationError(f"invalid interpolation format {whole!r}")
    name, op, arg = m.group(1), m.group(2), m.group(3) or ""
    if op is None:
        return _lookup(name, env, unset, budget)
    present = name in env
    nonempty = bool(env.get(name))
    ok = nonempty if op.startswith(":") else present
    kind = op[-1]
    if kind == "-":
        return budget.spend(env[name]) if ok else interpolate_str(arg, env, unset, budget)
    if kind == "+":
        return interpolate_str(arg, env, unset, budget) if ok else ""
    # "?": required
    if not ok:
        detail = interpolate_str(arg, env, unset, budget) if arg else ""
        raise InterpolationError(
            f"required variable {name} is missing a value" + (f": {detail}" if detail else "")
        )
    return budget.spend(env[name])


# Keys whose interpolated string must become a number or a boolean again before validation, as
# Compose converts them (``replicas: ${N}``). Matched on the last key (ports use their own names).
_INT_KEYS = {"replicas", "scale", "cpu_shares", "retries", "max_attempts", "parallelism", "published", "target",
             "max_replicas_per_node", "mem_swappiness", "oom_score_adj", "pids_limit", "cpu_count", "cpu_percent"}
_FLOAT_KEYS = {"cpus", "max_failure_ratio"}
_BOOL_KEYS = {"read_only", "tty", "stdin_open", "privileged", "init", "external", "attachable", "internal",
              "disable"}


def _convert(key: str | int, value: str) -> Any:
    try:
        if key in _INT_KEYS and re.fullmatch(r"-?\d+", value):
            return int(value)
        if key in _FLOAT_KEYS and re.fullmatch(r"-?\d+(\.\d*)?", value):
            return float(value)
    except ValueError:
        return value
    if key in _BOOL_KEYS and value.lower() in ("true", "false", "yes", "no", "y", "n", "on", "off"):
        return value.lower() in ("true", "yes", "y", "on")
    return value


STACK_NAME_VAR = "stack_name"
SERVICE_NAME_VAR = "service_name"


def interpolate(src: Source, env: Mapping[str, str], warnings: list[str],
                budget: Budget | None = None, stack_name: str | None = None,
                services_at: KeyPath | None = ("services",)) -> dict[str, Any]:
    """A copy of ``src.data`` with every string value interpolated. Raises a located ComposeError.

    ``stack_name`` (when known) is Rancher's ``${stack_name}``; under ``services_at`` (``()`` for v1
    files, whose services are at the top level; None for none) each service's values also see
    ``${service_name}``."""
    warned: set[str] = set()
    budget = budget or Budget()
    if stack_name is not None:
        env = ChainMap({STACK_NAME_VAR: stack_name}, env)  # type: ignore[arg-type]
    per_service: dict[str, Mapping[str, str]] = {}

    def scope(path: KeyPath) -> Mapping[str, str]:
        if services_at is None or len(path) <= len(services_at) or tuple(path[:len(services_at)]) != services_at:
            return env
        name = str(path[len(services_at)])
        if name not in per_service:
            per_service[name] = ChainMap({SERVICE_NAME_VAR: name}, env)  # type: ignore[arg-type]
        return per_service[name]

    def unset(name: str) -> None:
        if name not in warned:
            warned.add(name)
            warnings.append(f"{src.path}: the {name} variable is not set, defaulting to a blank string")

    def walk(value: Any, path: KeyPath) -> Any:
        if isinstance(value, dict):
            return {k: walk(v, (*path, k)) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, (*path, i)) for i, v in enumerate(value)]
        if isinstance(value, str) and "$" in value:
            try:
                out = interpolate_str(value, scope(path), unset, budget)
            except InterpolationError as e:
                raise src.error(str(e), path) from None
            return _convert(path[-1], out) if path else out
        return value

    return walk(src.data, ())
