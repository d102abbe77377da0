"""Find an object the way the Docker daemon does: full ID, then name, then a unique ID prefix.

The exact look-ups are dictionary hits; only a miss falls back to a scan (a prefix typed by a
person), so the common path stays O(1) however many tasks the store holds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from shoal.errors import InvalidArgument, NotFound
from shoal.models import Node, Service, Task
from shoal.store import MemoryStore


def _unique(kind: str, ref: str, matches: list[Any]) -> Any:
    if not matches:
        raise NotFound(f"{kind} {ref} not found")
    if len(matches) > 1:
        # moby answers InvalidParameter (400) for an ambiguous reference.
        raise InvalidArgument(f"{kind} {ref} is ambiguous ({len(matches)} matches found)")
    return matches[0]


def _by_prefix(objs: Iterable[Any], ref: str, key: Callable[[Any], str] = lambda o: o.ID) -> list[Any]:
    return [o for o in objs if key(o).startswith(ref)]


def get_service(store: MemoryStore, ref: str) -> Service:
    """A service by ID, name or unique ID prefix; 404 ``service X not found``."""
    if ref:
        svc = store.get("service", ref) or store.service_by_name(ref)
        if svc is not None:
            return svc
    return _unique("service", ref, _by_prefix(store.list("service"), ref) if ref else [])


def get_node(store: MemoryStore, ref: str) -> Node:
    """A node by ID, hostname or unique ID prefix; 404 ``node X not found``."""
    if ref:
        node = store.get("node", ref)
        if node is not None:
            return node
        nodes = store.list("node")
        named = [n for n in nodes if n.Description.Hostname == ref]
        if named:
            return _unique("node", ref, named)
        return _unique("node", ref, _by_prefix(nodes, ref))
    return _unique("node", ref, [])


def get_task(store: MemoryStore, ref: str) -> Task:
    """A task by ID or unique ID prefix; 404 ``task X not found``."""
    if ref:
        task = store.get("task", ref)
        if task is not None:
            return task
        return _unique("task", ref, _by_prefix(store.list("task"), ref))
    return _unique("task", ref, [])
