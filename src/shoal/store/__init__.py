"""Versioned objects with transactional batches and watches; see :mod:`shoal.store.base`."""

from shoal.store.base import KINDS, Action, Backend, Event, Kind, Problem, Snapshot
from shoal.store.memory import MemoryStore, Tx, Watcher
from shoal.store.sqlite import NullBackend, SqliteBackend

__all__ = [
    "KINDS",
    "Action",
    "Backend",
    "Event",
    "Kind",
    "MemoryStore",
    "NullBackend",
    "Problem",
    "Snapshot",
    "SqliteBackend",
    "Tx",
    "Watcher",
]
