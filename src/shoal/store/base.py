"""The store's interface: versioned objects, transactional batches, and watches.

Every manager component reads the in-memory view (:class:`shoal.store.memory.MemoryStore`) and writes
through :meth:`Store.update`, which applies a whole batch or nothing, bumps each written object's
``Version.Index`` to the new store revision, persists the batch through a :class:`Backend`, and only
then publishes it to watchers. Components never call each other: they watch the store.
"""

from __future__ import annotations

import contextlib
import enum
import gc
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec

from shoal.models import Cluster, Config, LogSink, Network, Node, Secret, Service, Stack, Task, User

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
    "user": User,
    "logsink": LogSink,
}


@dataclass(slots=True, frozen=True)
class Problem:
    """An object the store could not keep or read back, shown to operators (``docker info``)."""

    kind: Kind
    id: str
    error: str

    def __str__(self) -> str:
        return f"{self.kind} {self.id}: {self.error}"


class Action(enum.StrEnum):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"


class Event(msgspec.Struct, frozen=True, gc=False):
    """One object changed in one committed transaction. ``old`` is None on create.

    A struct the garbage collector does not track (the store keeps 50,000 for replay), as the
    models are: it only refers to stored objects, never to anything that refers back to it."""

    kind: Kind
    action: Action
    obj: Any
    old: Any
    revision: int


@dataclass(slots=True)
class Snapshot:
    """What a backend holds: the last durable revision, every object it could decode, by kind, and
    the rows it could not (reported, never fatal: the daemon starts without them)."""

    revision: int
    objects: dict[Kind, list[Any]]
    bad: list[Problem] = field(default_factory=list)


class Backend(Protocol):
    """Durable storage under the in-memory view (sqlite for one manager, etcd for HA)."""

    def load(self) -> Snapshot:
        """The last committed revision and every stored object."""
        ...

    async def persist(
        self, revision: int, puts: list[tuple[Kind, Any]], deletes: list[tuple[Kind, str]]
    ) -> list[Problem]:
        """Make one (merged) batch durable, atomically, bringing the backend to ``revision``. Raise
        on failure (the writer retries); return the objects rejected on their own (written without)."""
        ...

    async def wipe(self) -> None:
        """Forget everything (``swarm leave``), rows that could not be decoded included."""
        ...

    async def close(self) -> None: ...


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while loading a store: decoding 100,000 objects that all
    stay alive makes it rescan the growing heap again and again (loads took over twice as long)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
