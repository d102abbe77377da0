"""Placement constraints in Swarm mode's syntax: ``key==value`` / ``key!=value``.

Same grammar, keys and matching rules as swarmkit's constraint package: values compare
case-insensitively; label *names* are case-sensitive; ``node.ip`` takes an address or a CIDR; an
unknown key parses but never matches (Docker accepts ``--constraint foo==bar`` and the task stays
pending with "scheduling constraints not satisfied").
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from shoal.errors import InvalidArgument

_KEY = re.compile(r"[a-z_][a-z0-9\-_.]+", re.IGNORECASE)
# No operator characters (<, >, ~ ...) so that future operators stay unambiguous.
_VALUE = re.compile(r"[a-z0-9:\-_\s.*()?+\[\]\\^$|/]+", re.IGNORECASE)
_OPERATORS = ("==", "!=")
_NODE_LABEL = "node.labels."
_ENGINE_LABEL = "engine.labels."
KNOWN_KEYS = frozenset(
    {"node.id", "node.hostname", "node.ip", "node.role", "node.platform.os", "node.platform.arch"}
)


@dataclass(frozen=True, slots=True)
class Constraint:
    key: str
    equal: bool  # True for ==, False for !=
    value: str

    @property
    def known(self) -> bool:
        """Whether the key is one the scheduler can match (the control API rejects the rest)."""
        key = self.key.lower()
        return key in KNOWN_KEYS or any(
            key.startswith(p) and len(key) > len(p) for p in (_NODE_LABEL, _ENGINE_LABEL)
        )

    def _match(self, what: str) -> bool:
        return (self.value.casefold() == what.casefold()) is self.equal

    def matches(self, node: Any) -> bool:
        key = self.key.lower()
        desc = node.Description
        if key == "node.id":
            return self._match(node.ID)
        if key == "node.hostname":
            return self._match(desc.Hostname if desc is not None else "")
        if key == "node.role":
            return self._match(str(node.Spec.Role))
        if key == "node.platform.os":
            return self._match(desc.Platform.OS if desc is not None and desc.Platform is not None else "")
        if key == "node.platform.arch":
            plat = desc.Platform if desc is not None else None
            return self._match(plat.Architecture if plat is not None else "")
        if key == "node.ip":
            return self._match_ip(node.Status.Addr if node.Status is not None else "")
        if key.startswith(_NODE_LABEL) and len(key) > len(_NODE_LABEL):
            labels = node.Spec.Labels or {}
            return self._match(labels.get(self.key[len(_NODE_LABEL) :], ""))
        if key.startswith(_ENGINE_LABEL) and len(key) > len(_ENGINE_LABEL):
            engine = desc.Engine if desc is not None else None
            labels = (engine.Labels if engine is not None else None) or {}
            return self._match(labels.get(self.key[len(_ENGINE_LABEL) :], ""))
        return False  # unknown key: never satisfied

    def _match_ip(self, addr: str) -> bool:
        host = addr.rsplit(":", 1)[0] if addr.count(":") == 1 else addr  # tolerate "ip:port"
        try:
            node_ip = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            node_ip = None
        try:
            want = ipaddress.ip_address(self.value)
            return (node_ip == want) is self.equal
        except ValueError:
            pass
        try:
            net = ipaddress.ip_network(self.value, strict=False)
        except ValueError:
            return False  # malformed address or network: never satisfied, as in swarmkit
        return (node_ip is not None and node_ip in net) is self.equal


def parse_constraints(exprs: Iterable[str] | None) -> list[Constraint]:
    """Parse ``key==value`` / ``key!=value`` expressions; raise InvalidArgument on bad syntax."""
    out: list[Constraint] = []
    for expr in exprs or ():
        for op in _OPERATORS:
            if op not in expr:
                continue
            key, _, value = expr.partition(op)
            key, value = key.strip(), value.strip()
            if not _KEY.fullmatch(key):
                raise InvalidArgument(f"key '{key}' is invalid")
            if not _VALUE.fullmatch(value):
                raise InvalidArgument(f"value '{value}' is invalid")
            out.append(Constraint(key, op == "==", value))
            break
        else:
            raise InvalidArgument(f"constraint expected one operator from {', '.join(_OPERATORS)}")
    return out


@lru_cache(maxsize=4096)
def _parse_cached(exprs: tuple[str, ...]) -> tuple[Constraint, ...]:
    try:
        return tuple(parse_constraints(exprs))
    except InvalidArgument:
        # Validated by the control API at create time; should a bad one slip through, ignore it
        # rather than wedge the scheduler (swarmkit does the same).
        return ()


def constraints_of(task_spec: Any) -> tuple[Constraint, ...]:
    """The parsed constraints of a TaskSpec (cached: thousands of tasks share a few specs)."""
    placement = task_spec.Placement
    if placement is None or not placement.Constraints:
        return ()
    return _parse_cached(tuple(placement.Constraints))


def node_matches(constraints: Sequence[Constraint], node: Any) -> bool:
    return all(c.matches(node) for c in constraints)
