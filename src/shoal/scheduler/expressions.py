"""Classic Swarm and Rancher placement expressions, as hard rules (filters) and soft ones (ranking).

Classic Swarm (in ``ContainerSpec.Env`` or the service labels ``com.docker.swarm.constraints`` /
``com.docker.swarm.affinities``, JSON lists)::

    constraint:node==name        node hostname, name or ID
    constraint:key==value        node label, else engine label
    affinity:image==foo          a task running image foo is on the node
    affinity:service==foo        a task of service foo is on the node
    affinity:container==name     a container named <name> ("web.1" or "web.1.<taskid>") is on the node

Operators ``==`` and ``!=``; ``==~`` / ``!=~`` are soft (preferred, not required). Values may be
globs (``*``, ``?``) or ``/regex/``, matched case-insensitively, as classic Swarm did.

Rancher (service or container labels), values ``k=v[,k=v...]``::

    io.rancher.scheduler.affinity:host_label[_ne][_soft]       node labels (or engine labels)
    io.rancher.scheduler.affinity:container_label[_ne][_soft]  labels of tasks on the node
    io.rancher.scheduler.affinity:container[_ne][_soft]        container names on the node

A positive rule needs every pair; a ``_ne`` rule needs none of them.
Affinity looks at the *active* tasks the scheduler knows on each node (the images it knows of are
those of its tasks, not the engine's image store).
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from shoal.errors import InvalidArgument
from shoal.scheduler.nodeinfo import NodeInfo

CONSTRAINTS_LABEL = "com.docker.swarm.constraints"
AFFINITIES_LABEL = "com.docker.swarm.affinities"
RANCHER_PREFIX = "io.rancher.scheduler.affinity:"
_CLASSIC_RE = re.compile(r"^\s*([A-Za-z0-9_.\-/]+)\s*(==~|!=~|==|!=)\s*(.+?)\s*$")
_AFFINITY_KEYS = ("image", "service", "container")
_RANCHER_KINDS = ("host_label", "container_label", "container")

Matcher = Callable[[str], bool]


def _on(nodes: int) -> str:
    return "1 node" if nodes == 1 else f"{nodes} nodes"


def value_matcher(value: str) -> Matcher:
    """Glob / ``/regex/`` / plain value, case-insensitive. Raises InvalidArgument on a bad regex."""
    if len(value) >= 2 and value.startswith("/") and value.endswith("/"):
        try:
            rx = re.compile(value[1:-1], re.IGNORECASE)
        except re.error as e:
            raise InvalidArgument(f"invalid regular expression {value}: {e}") from None
        return lambda s: rx.search(s) is not None
    if any(c in value for c in "*?["):
        rx = re.compile(fnmatch.translate(value), re.IGNORECASE)
        return lambda s: rx.match(s) is not None
    v = value.casefold()
    return lambda s: s.casefold() == v


@dataclass(slots=True, eq=False)
class Rule:
    """One expression. Hard rules are filters (:meth:`check`); soft ones only rank nodes."""

    text: str
    soft: bool
    test: Callable[[NodeInfo], bool] = field(repr=False)
    name: str = "expression"

    # The Filter protocol, so the pipeline counts and explains each rule on its own.
    def set_task(self, task: Any) -> bool:
        return True

    def check(self, info: NodeInfo) -> bool:
        return self.test(info)

    def explain(self, nodes: int) -> str:
        return f"{self.text} not satisfied on {_on(nodes)}"


def _node_attr_values(info: NodeInfo, key: str) -> list[str]:
    node = info.node
    if key == "node":
        desc = node.Description
        return [desc.Hostname if desc is not None else "", node.Spec.Name, node.ID]
    labels = node.Spec.Labels or {}
    if key in labels:
        return [labels[key]]
    engine = node.Description.Engine if node.Description is not None else None
    elabels = (engine.Labels if engine is not None else None) or {}
    return [elabels[key]] if key in elabels else []


def _classic(expr: str, kind: str) -> Rule:
    m = _CLASSIC_RE.match(expr)
    if m is None:
        raise InvalidArgument(f"invalid {kind} expression '{expr}': expected key==value, key!=value, ==~ or !=~")
    key, op, value = m.groups()
    match = value_matcher(value)
    equal, soft = op.startswith("=="), op.endswith("~")
    text = f"{kind}:{key}{op}{value}"
    if kind == "constraint":

        def has(info: NodeInfo) -> bool:
            return any(match(v) for v in _node_attr_values(info, key))

    else:
        if key not in _AFFINITY_KEYS:
            raise InvalidArgument(f"invalid affinity '{expr}': key must be one of {', '.join(_AFFINITY_KEYS)}")
        if key == "image":

            def has(info: NodeInfo) -> bool:
                return any(match(i) or match(i.split("@")[0].rsplit(":", 1)[0]) for i in info.images)

        elif key == "service":

            def has(info: NodeInfo) -> bool:
                return any(match(s) for s in info.service_names)

        else:

            def has(info: NodeInfo) -> bool:
                return any(match(n) for n in info.names)

    return Rule(text, soft, has if equal else (lambda info: not has(info)))


def _pairs(key: str, value: str) -> list[tuple[str, str]]:
    out = []
    for part in value.split(","):
        k, sep, v = part.strip().partition("=")
        if not part.strip():
            continue
        if not sep or not k.strip():
            raise InvalidArgument(f"invalid label {key}: '{value}': expected key=value[,key=value]")
        out.append((k.strip(), v.strip()))
    if not out:
        raise InvalidArgument(f"invalid label {key}: empty value")
    return out


def _rancher(key: str, value: str) -> Rule:
    kind = key[len(RANCHER_PREFIX) :]
    base, soft, ne = kind, False, False
    if base.endswith("_soft"):
        base, soft = base[: -len("_soft")], True
    if base.endswith("_ne"):
        base, ne = base[: -len("_ne")], True
    if base.endswith("_soft"):  # "_soft_ne" spelling
        base, soft = base[: -len("_soft")], True
    if base not in _RANCHER_KINDS:
        raise InvalidArgument(f"unsupported scheduling label {key}")
    text = f"{key}: {value}"
    if base == "container":
        names = [value_matcher(v.strip()) for v in value.split(",") if v.strip()]
        if not names:
            raise InvalidArgument(f"invalid label {key}: empty value")
        checks: list[Callable[[NodeInfo], bool]] = [(lambda info, m=m: any(m(n) for n in info.names)) for m in names]
    elif base == "container_label":
        checks = [(lambda info, p=p: p in info.label_pairs) for p in _pairs(key, value)]
    else:
        pairs = _pairs(key, value)

        def host_has(info: NodeInfo, p: tuple[str, str]) -> bool:
            return any(v.casefold() == p[1].casefold() for v in _node_attr_values(info, p[0]))

        checks = [(lambda info, p=p: host_has(info, p)) for p in pairs]
    if ne:
        return Rule(text, soft, lambda info: not any(c(info) for c in checks))
    return Rule(text, soft, lambda info: all(c(info) for c in checks))


def _json_list(key: str, raw: str) -> list[str]:
    try:
        v = json.loads(raw)
    except ValueError:
        raise InvalidArgument(f"invalid label {key}: expected a JSON list of expressions") from None
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise InvalidArgument(f"invalid label {key}: expected a JSON list of expressions")
    return v


def parse_rules(env: Iterable[str] | None, labels: Mapping[str, str] | None) -> list[Rule]:
    """All classic/Rancher rules in an environment list and a label map; InvalidArgument if malformed."""
    rules: list[Rule] = []
    for e in env or ():
        for kind in ("constraint", "affinity"):
            if e.startswith(kind + ":"):
                rules.append(_classic(e[len(kind) + 1 :], kind))
    for key, value in (labels or {}).items():
        if key == CONSTRAINTS_LABEL:
            rules.extend(_classic(x, "constraint") for x in _json_list(key, value))
        elif key == AFFINITIES_LABEL:
            rules.extend(_classic(x, "affinity") for x in _json_list(key, value))
        elif key.startswith(RANCHER_PREFIX):
            rules.append(_rancher(key, value))
    return rules


@lru_cache(maxsize=4096)
def _cached(env: tuple[str, ...], labels: tuple[tuple[str, str], ...]) -> tuple[Rule, ...]:
    try:
        return tuple(parse_rules(env, dict(labels)))
    except InvalidArgument:
        return ()  # refused at create time by the control API; never wedge the scheduler


def _relevant_env(env: list[str] | None) -> tuple[str, ...]:
    return tuple(e for e in env or () if e.startswith(("constraint:", "affinity:")))


def _relevant_labels(labels: Mapping[str, str] | None) -> tuple[tuple[str, str], ...]:
    if not labels:
        return ()
    return tuple(
        sorted(
            (k, v)
            for k, v in labels.items()
            if k in (CONSTRAINTS_LABEL, AFFINITIES_LABEL) or k.startswith(RANCHER_PREFIX)
        )
    )


def rules_of(task: Any) -> tuple[Rule, ...]:
    """The rules of a task: its container env and labels, and its service's labels."""
    cs = task.Spec.ContainerSpec
    env = _relevant_env(cs.Env if cs is not None else None)
    labels = _relevant_labels(cs.Labels if cs is not None else None) + _relevant_labels(task.Labels)
    if not env and not labels:
        return ()
    return _cached(env, labels)


def check_spec(spec: Any) -> None:
    """Parse the rules of a ServiceSpec (raises InvalidArgument): the control API's create-time check."""
    cs = spec.TaskTemplate.ContainerSpec
    parse_rules(cs.Env if cs is not None else None, cs.Labels if cs is not None else None)
    parse_rules(None, spec.Labels)
