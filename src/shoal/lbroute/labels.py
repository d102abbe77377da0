"""Aliyun Container Service's load-balancer and routing labels, parsed and checked.

- ``aliyun.lb.port_<p>: <scheme>://<lb name>:<front port>`` (Aliyun: ``$scheme://$[slb_name|slb_id]:
  $slb_front_port``) puts the service's published port behind load balancer ``<lb name>`` listening on
  ``<front port>``. Aliyun names the *container* port and wants it published; the seed Compose file
  names the *published* port (``8080:80`` with ``port_8080``). Both are accepted: ``<p>`` is a published
  port of the service, or else a target port it publishes. Schemes: ``tcp`` and ``http`` (``https``
  needs a certificate Shoal does not hold, and haproxy balances no UDP: both refused).
- ``aliyun.routing.port_<p>: [http://]<host>[/<path>][;...]`` sends HTTP requests whose Host is
  ``<host>`` (and whose path starts with ``<path>``, Aliyun's context path) to the tasks' container
  port ``<p>``, which need not be published. Hostnames at most 128 characters, paths 128 (Aliyun's
  limits).
- ``aliyun.routing.session_sticky: true|false``: a cookie keeps a client on one task.

Everything raises :class:`LabelError` naming the label, so the API can answer 400 and Compose can
point at the line.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

LB_PREFIX = "aliyun.lb.port_"
ROUTING_PREFIX = "aliyun.routing.port_"
STICKY_LABEL = "aliyun.routing.session_sticky"

_LB_SCHEMES = ("tcp", "http")
_LB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,79}")
_HOST_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_PATH = re.compile(r"/[A-Za-z0-9._~!$&'()*+,=:@%/-]*")
MAX_HOST = 128
MAX_PATH = 128
DEFAULT_ROUTER_PORT = 80


def router_port() -> int:
    """The HTTP router's port: ``SHOAL_ROUTER_PORT`` in the managers' environment, 80 by default (as
    Aliyun's routing service). Managers should agree: the router follows the leader."""
    return int(os.environ.get("SHOAL_ROUTER_PORT") or DEFAULT_ROUTER_PORT)


class LabelError(ValueError):
    """A malformed label: ``key`` is the label, the message says what is wrong and what is expected."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}")


@dataclass(frozen=True, order=True)
class LbBinding:
    port: int  # the label's <p>: a published port, or a published target port
    scheme: str  # tcp | http
    lb: str  # the load balancer's name
    front: int  # the port it listens on


@dataclass(frozen=True, order=True)
class Route:
    port: int  # the container port requests go to
    host: str  # lower-case hostname, matched against the Host header (port stripped)
    path: str = ""  # "" or a path prefix beginning with "/"


@dataclass(frozen=True)
class ServiceRouting:
    bindings: tuple[LbBinding, ...] = ()
    routes: tuple[Route, ...] = ()
    sticky: bool = False

    def __bool__(self) -> bool:
        return bool(self.bindings or self.routes)


@dataclass
class _Acc:
    bindings: list[LbBinding] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)


def _port(key: str, text: str, what: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise LabelError(key, f"{what} {text!r} is not a port number (1-65535)")
    return int(text)


def parse_lb(key: str, value: str) -> LbBinding:
    """One ``aliyun.lb.port_<p>`` label."""
    port = _port(key, key[len(LB_PREFIX):], "port")
    example = f"expected <scheme>://<load balancer>:<front port>, e.g. tcp://slbtest:{port}"
    scheme, sep, rest = value.strip().partition("://")
    if not sep:
        raise LabelError(key, f"{value!r}: {example}")
    scheme = scheme.lower()
    if scheme == "https":
        raise LabelError(key, "https is not supported: Shoal's load balancer holds no certificate (use tcp:// and "
                              "terminate TLS in the service)")
    if scheme not in _LB_SCHEMES:
        raise LabelError(key, f"scheme {scheme!r} is not supported (tcp or http; haproxy balances no UDP)")
    name, sep, front = rest.rpartition(":")
    if not sep or not name:
        raise LabelError(key, f"{value!r}: {example}")
    if not _LB_NAME.fullmatch(name):
        raise LabelError(key, f"load balancer name {name!r} must be 1-80 letters, digits, '_', '.' or '-', "
                              "starting with a letter or digit")
    return LbBinding(port, scheme, name, _port(key, front, "front port"))


def parse_routes(key: str, value: str) -> list[Route]:
    """One ``aliyun.routing.port_<p>`` label: one route per ``;``-separated hostname."""
    port = _port(key, key[len(ROUTING_PREFIX):], "port")
    out: list[Route] = []
    for item in value.split(";"):
        item = item.strip()
        if not item:
            continue
        scheme, sep, rest = item.partition("://")
        if sep:
            if scheme.lower() == "https":
                raise LabelError(key, f"{item!r}: https is not supported: Shoal's router holds no certificate "
                                      "(use http://)")
            if scheme.lower() != "http":
                raise LabelError(key, f"{item!r}: scheme {scheme!r} is not supported (http)")
        else:
            rest = item
        host, slash, path = rest.partition("/")
        path = slash + path
        host = host.lower().rstrip(".")
        if ":" in host:
            raise LabelError(key, f"{item!r}: a routing hostname takes no port (the router listens on its own port)")
        if not host or len(host) > MAX_HOST or not all(_HOST_LABEL.fullmatch(p) for p in host.split(".")):
            raise LabelError(key, f"{item!r}: {host!r} is not a hostname (letters, digits, '-' and '.', at most "
                                  f"{MAX_HOST} characters)")
        if path == "/":
            path = ""
        if path and (len(path) > MAX_PATH or not _PATH.fullmatch(path)):
            raise LabelError(key, f"{item!r}: context path {path!r} is not a URL path of at most {MAX_PATH} "
                                  "characters")
        out.append(Route(port, host, path.rstrip("/")))
    if not out:
        raise LabelError(key, "no hostname: expected http://<host>[/<path>][;http://<host2>...]")
    return out


def parse(labels: dict[str, str] | None) -> ServiceRouting:
    """The load-balancer and routing labels of a service (empty when it has none)."""
    if not labels:
        return ServiceRouting()
    acc = _Acc()
    sticky = False
    for key, value in labels.items():
        if key.startswith(LB_PREFIX):
            acc.bindings.append(parse_lb(key, value))
        elif key.startswith(ROUTING_PREFIX):
            acc.routes.extend(parse_routes(key, value))
        elif key == STICKY_LABEL:
            v = value.strip().lower()
            if v not in ("true", "false"):
                raise LabelError(key, f"{value!r} is not true or false")
            sticky = v == "true"
    seen: dict[tuple[str, str], Route] = {}
    for r in acc.routes:
        other = seen.setdefault((r.host, r.path), r)
        if other is not r:
            raise LabelError(f"{ROUTING_PREFIX}{r.port}", f"{r.host}{r.path} is routed twice (ports {other.port} "
                                                          f"and {r.port})")
    fronts: dict[tuple[str, int], LbBinding] = {}
    for b in acc.bindings:
        other = fronts.setdefault((b.lb, b.front), b)
        if other is not b:
            raise LabelError(f"{LB_PREFIX}{b.port}", f"load balancer {b.lb} port {b.front} is already given to "
                                                     f"{LB_PREFIX}{other.port}")
    return ServiceRouting(tuple(sorted(acc.bindings)), tuple(sorted(acc.routes)), sticky)


def is_routing_label(key: str) -> bool:
    return key.startswith((LB_PREFIX, ROUTING_PREFIX)) or key == STICKY_LABEL
