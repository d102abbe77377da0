"""Log sinks (``shoal logs sink add|ls|rm``): where the leader sends collected log lines besides its files.

Checked before anything is written: a sink the leader cannot use would drop every line silently.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import msgspec

from shoal.errors import Conflict, InvalidArgument, NotFound
from shoal.ids import new_id
from shoal.models import LogSink, LogSinkSpec, Version
from shoal.store import MemoryStore

TYPES = ("file", "loki", "elasticsearch")
RESERVED = ("files",)  # the built-in file sink's name (logstore/collector.py)
MAX_SINKS = 16
_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")
_INDEX = re.compile(r"^[a-z0-9][a-z0-9_.+-]{0,254}$")  # Elasticsearch's index naming rules, in short


def check_spec(spec: LogSinkSpec) -> LogSinkSpec:
    if not _NAME.match(spec.Name):
        raise InvalidArgument(f"invalid sink name {spec.Name!r}: 1-63 letters, digits, '_', '.' or '-', "
                              f"starting with a letter or digit")
    if spec.Name in RESERVED:
        raise InvalidArgument(f"sink name {spec.Name!r} is reserved for the built-in file sink")
    if spec.Type not in TYPES:
        raise InvalidArgument(f"invalid sink type {spec.Type!r}: must be one of {', '.join(TYPES)}")
    if spec.Type == "file":
        if not spec.URL.startswith("/") or "/../" in spec.URL + "/" or "\x00" in spec.URL:
            raise InvalidArgument(f"a file sink's URL is an absolute directory on the leading manager, "
                                  f"not {spec.URL!r}")
    else:
        url = urlsplit(spec.URL)
        if url.scheme not in ("http", "https") or not url.hostname or url.query or url.fragment:
            raise InvalidArgument(f"a {spec.Type} sink's URL is http(s)://host[:port][/path], not {spec.URL!r}")
        try:
            url.port  # noqa: B018 - raises ValueError for a port out of range
        except ValueError:
            raise InvalidArgument(f"invalid port in {spec.URL!r}") from None
    if spec.Index and spec.Type != "elasticsearch":
        raise InvalidArgument("an index is for elasticsearch sinks only")
    if spec.Index and not _INDEX.match(spec.Index):
        raise InvalidArgument(f"invalid index {spec.Index!r}: lowercase letters, digits, '_', '.', '+' or '-'")
    return spec


def find(store: MemoryStore, name: str) -> LogSink | None:
    for s in store.list("logsink"):
        if s.Spec.Name == name or s.ID == name:
            return s  # type: ignore[no-any-return]
    return None


def list_sinks(store: MemoryStore) -> list[LogSink]:
    return sorted(store.list("logsink"), key=lambda s: s.Spec.Name)


def create(store: MemoryStore, spec: LogSinkSpec) -> LogSink:
    check_spec(spec)
    if find(store, spec.Name) is not None:
        raise Conflict(f"log sink {spec.Name} already exists")
    if len(store.list("logsink")) >= MAX_SINKS:
        raise InvalidArgument(f"at most {MAX_SINKS} log sinks")
    sink = LogSink(ID=new_id(), Version=Version(), CreatedAt="", UpdatedAt="", Spec=spec)
    with store.tx() as tx:
        tx.create("logsink", sink)
    return sink


def remove(store: MemoryStore, name: str) -> None:
    sink = find(store, name)
    if sink is None:
        raise NotFound(f"log sink {name} not found")
    with store.tx() as tx:
        tx.delete("logsink", sink.ID)


def shown(sink: LogSink) -> LogSink:
    """A sink as the API lists it: a password in its URL is not shown again."""
    url = urlsplit(sink.Spec.URL)
    if url.password:
        netloc = f"{url.username}:***@{url.hostname}" + (f":{url.port}" if url.port else "")
        spec = msgspec.structs.replace(sink.Spec, URL=url._replace(netloc=netloc).geturl())
        return msgspec.structs.replace(sink, Spec=spec)
    return sink
