"""Swarmkit-worded errors: Docker relays swarmkit's gRPC errors as ``rpc error: code = X desc = Y``."""

from __future__ import annotations

from shoal.errors import Conflict, InvalidArgument, ShoalError


class NotImplementedYet(ShoalError):
    """HTTP 501, what Docker answers for gRPC ``Unimplemented`` (e.g. renaming a service)."""

    status = 501


def rpc(code: str, desc: str) -> str:
    return f"rpc error: code = {code} desc = {desc}"


def invalid(desc: str) -> InvalidArgument:
    return InvalidArgument(rpc("InvalidArgument", desc))


def precondition(desc: str) -> InvalidArgument:
    """gRPC FailedPrecondition, which Docker maps to 400."""
    return InvalidArgument(rpc("FailedPrecondition", desc))


def already_exists(desc: str) -> Conflict:
    return Conflict(rpc("AlreadyExists", desc))


def unimplemented(desc: str) -> NotImplementedYet:
    return NotImplementedYet(rpc("Unimplemented", desc))
