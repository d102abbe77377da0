"""Shoal errors across the wire: each maps to a gRPC status, and back to the same class on the client.

The error's class name travels in the trailing metadata, so subclasses that share a status code
(``SessionInvalid`` and ``Unavailable``) come back as what they were.
"""

from __future__ import annotations

import grpc

from shoal.dispatcher.dispatcher import SessionInvalid
from shoal.errors import Conflict, InvalidArgument, NotFound, NotInSwarm, ShoalError, TooManyRequests, Unavailable

ERROR_KEY = "shoal-error"


class Unauthenticated(ShoalError):
    """No valid client certificate (or one that names no node of this cluster)."""

    status = 401


class PermissionDenied(ShoalError):
    """A valid certificate, used for something its node may not do (e.g. act as another node)."""

    status = 403


_CLASSES: dict[str, type[ShoalError]] = {
    c.__name__: c
    for c in (InvalidArgument, NotFound, Conflict, Unavailable, NotInSwarm, SessionInvalid,
              Unauthenticated, PermissionDenied, TooManyRequests)
}

_CODES: list[tuple[type[ShoalError], grpc.StatusCode]] = [
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (Conflict, grpc.StatusCode.ALREADY_EXISTS),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),  # SessionInvalid, NotInSwarm too
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (TooManyRequests, grpc.StatusCode.RESOURCE_EXHAUSTED),
]
_BY_CODE: dict[grpc.StatusCode, type[ShoalError]] = {code: cls for cls, code in _CODES}


def status_of(err: ShoalError) -> grpc.StatusCode:
    for cls, code in _CODES:
        if isinstance(err, cls):
            return code
    return grpc.StatusCode.INTERNAL


def from_rpc_error(err: grpc.aio.AioRpcError, target: str) -> ShoalError:
    """The shoal error a failed call means. Failures that no handler raised (no connection,
    TLS refused, deadline) become :class:`Unavailable` naming ``target``."""
    name = next((str(v) for k, v in (err.trailing_metadata() or ()) if k == ERROR_KEY), "")
    details = err.details() or err.code().name
    cls = _CLASSES.get(name)
    if cls is None and not name:
        code = err.code()
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
            return Unavailable(f"could not reach the manager at {target}: {_short(details)}")
        cls = _BY_CODE.get(code)
    if cls is None:
        return ShoalError(f"{err.code().name}: {details}")
    if cls is NotInSwarm:
        return NotInSwarm(details)
    if cls is SessionInvalid:
        return SessionInvalid(details)
    return cls(details)


def _short(details: str) -> str:
    """gRPC's connection errors are long and repetitive; the first line says it."""
    return details.strip().splitlines()[0] if details.strip() else "unreachable"
