"""Errors that carry their Docker API status, so every layer can raise and the API maps once."""

from __future__ import annotations


class ShoalError(Exception):
    """Base error. ``status`` is the HTTP status the Docker API would answer with."""

    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(ShoalError):
    status = 400


class Unauthorized(ShoalError):
    """No usable identity: no client certificate or token where one is required, or a bad one."""

    status = 401


class Forbidden(ShoalError):
    """A known caller whose role or teams do not allow the call."""

    status = 403


class NotFound(ShoalError):
    status = 404


class Conflict(ShoalError):
    status = 409


class TooManyRequests(ShoalError):
    """A caller over a bound (joins per second, concurrent streams): it may try again later."""

    status = 429


class Unavailable(ShoalError):
    status = 503


class StoreUnavailable(Unavailable):
    """The cluster store cannot make writes durable now (disk full, no etcd quorum): retry later.

    From etcd, the outcome of the write that raised it is unknown (etcd may still apply it): do not
    assume it failed; reload or retry idempotently."""


class FencedOut(Unavailable):
    """A write carried the fence of a leadership that is over; etcd refused it and wrote nothing.
    The API answers 503 like any other "ask again" (the next leader serves the retry)."""


NOT_IN_SWARM = (
    "This node is not a swarm manager. Use \"docker swarm init\" or \"docker swarm join\" to connect "
    "this node to swarm and try again."
)


class NotInSwarm(Unavailable):
    def __init__(self, message: str = NOT_IN_SWARM) -> None:
        super().__init__(message)
