"""Shared pieces of the HTTP layer: the manager interface, JSON I/O and Docker's query conventions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol, TypeVar

import msgspec
from aiohttp import web

from shoal.dispatcher.protocol import LogMessage, LogOptions
from shoal.errors import InvalidArgument
from shoal.models import InitRequest, JoinRequest, Task, decode
from shoal.store import MemoryStore

T = TypeVar("T")


class ManagerAPI(Protocol):
    """What the API needs of :class:`shoal.manager.Manager`."""

    store: MemoryStore
    node_id: str | None
    engine_info: dict[str, Any]
    addr: str

    @property
    def in_swarm(self) -> bool: ...

    def require_swarm(self) -> None: ...

    async def init_swarm(self, req: InitRequest) -> str: ...

    async def join(self, req: JoinRequest) -> None: ...

    def rotate_root_ca(self) -> None: ...

    def check_unlockable(self) -> None: ...

    async def unlock(self, key: bytes) -> None: ...

    async def apply_autolock(self) -> None: ...

    @property
    def is_manager(self) -> bool: ...

    async def leave(self, force: bool) -> None: ...

    def logs(self, tasks: list[Task], options: LogOptions) -> AsyncIterator[LogMessage]: ...


MANAGER: web.AppKey[ManagerAPI] = web.AppKey("manager")

_encoder = msgspec.json.Encoder()


def manager_of(request: web.Request) -> ManagerAPI:
    return request.app[MANAGER]


def swarm_manager(request: web.Request) -> ManagerAPI:
    """The manager, after checking this node is in a swarm (503 otherwise, as Docker answers)."""
    manager = request.app[MANAGER]
    manager.require_swarm()
    return manager


def json_response(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=_encoder.encode(obj), status=status, content_type="application/json")


def empty_response(status: int = 200) -> web.Response:
    return web.Response(status=status)


async def decode_body(request: web.Request, typ: type[T]) -> T:
    """Decode a JSON body strictly: a malformed body, a wrong type or an unknown field is a 400."""
    body = await request.read()
    if not body.strip():
        raise InvalidArgument("got EOF while reading request body")
    try:
        return decode(body, typ)
    except (msgspec.ValidationError, msgspec.DecodeError) as e:
        raise InvalidArgument(str(e)) from None


def query_bool(request: web.Request, key: str) -> bool:
    """Docker's boolean query values: anything but "", 0, no, false and none is true."""
    value = request.query.get(key, "").strip().lower()
    return value not in ("", "0", "no", "false", "none")


def query_version(request: web.Request, what: str) -> int:
    """The ``version`` query parameter of an update, with moby's wording when it is not a number."""
    raw = request.query.get("version", "")
    try:
        value = int(raw)
        if value < 0:
            raise ValueError
    except ValueError:
        raise InvalidArgument(
            f"invalid {what} version '{raw}': strconv.ParseUint: parsing \"{raw}\": invalid syntax"
        ) from None
    return value
