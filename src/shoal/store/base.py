"""The store's interface: versioned objects, transactional batches, and watches.

Every manager component reads the in-memory view (:class:`shoal.store.memory.MemoryStore`) and writes
through :meth:`Store.update`, which applies a whole batch or nothing, bumps each written object's
``Version.Index`` to the new store revision, persists the batch through a :class:`Backend`, and only
then publishes it to watchers. Components never call each other: they watch the store.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from shoal.models import Cluster, Config, Network, Node, Secret, Service, Stack, Task

Kind = str
KINDS: dict[Kind, type] = {
    "cluster": Cluster,
    "node": Node,
    "service": Service,
    "task": Task,
    "network": Network,
    "secret": Secret,
    "config": Config,
    "stack": Stack,
}


class Action(enum.StrEnum):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"


@dataclass(slots=True, frozen=True)
class Event:
    """One object changed in one committed transaction. ``old`` is None on create."""

    kind: Kind
    action: Action
    obj: Any
    old: Any
    revision: int


class Backend(Protocol):
    """Durable storage under the in-memory view (sqlite for one manager, etcd for HA)."""

    def load(self) -> tuple[int, dict[Kind, list[Any]]]:
        """Return the last committed revision and every stored object, by kind."""
        ...

    def commit(self, revision: int, puts: Iterable[tuple[Kind, Any]], deletes: Iterable[tuple[Kind, str]]) -> None:
        """Persist one transaction atomically."""
        ...

    def wipe(self) -> None:
        """Forget everything (``swarm leave``)."""
        ...

    def close(self) -> None: ...
