"""The manager's gRPC listeners: the cluster port (mutual TLS) and the bootstrap port (join).

Python's gRPC cannot ask for a client certificate only optionally, so joining, which happens
before a host has a certificate, has a listener of its own on the cluster port + 1:

- cluster port (2377): a client certificate signed by the cluster's root is required. The node's
  identity on every call is the certificate's (CN = node ID), never what the request says.
  Dispatcher calls, certificate renewal, and the logs streams.
- bootstrap port (2378): server-only TLS. ``GetRootCA`` (the joiner pins it against its token's
  digest) and ``Join`` (token + CSR → node ID + certificate).

Both use dynamic credentials: after a root rotation new handshakes get the new server certificate
and trust bundle without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import msgspec

from shoal.ca.authority import SWARM_PORT, ClusterCA
from shoal.ca.certs import CertIdentity, cert_identity, verified_ip
from shoal.dispatcher.dispatcher import Dispatcher, SessionInvalid
from shoal.dispatcher.protocol import Assignments
from shoal.errors import InvalidArgument, NotFound, ShoalError, TooManyRequests, Unavailable
from shoal.models import ManagerStatus, NodeRole
from shoal.transport import messages as m
from shoal.transport.errors import ERROR_KEY, PermissionDenied, Unauthenticated, status_of
from shoal.transport.limits import (
    BOOTSTRAP_LIMITS,
    BOOTSTRAP_MAX_CONCURRENT,
    CLUSTER_LIMITS,
    CallCounter,
    JoinLimiter,
    Malformed,
    Oversized,
)
from shoal.transport.logs import RemoteLogSource
from shoal.transport.rpc import (
    BOOTSTRAP_METHODS,
    BOOTSTRAP_OPTIONS,
    BOOTSTRAP_SERVICE,
    DISPATCHER_METHODS,
    DISPATCHER_SERVICE,
    SERVER_OPTIONS,
    bounded_decoder,
    encode,
)
from shoal.transport.tunnel import EngineSource, RemoteEngine, relay_to

log = logging.getLogger(__name__)

Handler = Callable[[Any, grpc.aio.ServicerContext], Any]


class _DynamicConfig:
    """What a listener's certificate fetcher hands gRPC: a new configuration once after each change.

    gRPC calls the fetcher from its own threads before handshakes; it only reads one attribute."""

    def __init__(self, config: grpc.ServerCertificateConfiguration) -> None:
        self.config = config
        self._served: grpc.ServerCertificateConfiguration | None = config

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        config = self.config
        if config is self._served:
            return None
        self._served = config
        return config


async def _abort(ctx: grpc.aio.ServicerContext, err: ShoalError) -> None:
    await ctx.abort(status_of(err), err.message, trailing_metadata=((ERROR_KEY, type(err).__name__),))


Guard = Callable[[grpc.aio.ServicerContext], contextlib.AbstractContextManager[None]]


def _no_guard(ctx: grpc.aio.ServicerContext) -> contextlib.AbstractContextManager[None]:
    return contextlib.nullcontext()


def _check(req: Any) -> None:
    if isinstance(req, Oversized):
        raise TooManyRequests(req.message)
    if isinstance(req, Malformed):
        raise InvalidArgument(req.message)


def _unary(fn: Handler, req_t: type[Any], method: str, limit: int, guard: Guard = _no_guard) -> grpc.RpcMethodHandler:
    async def call(req: Any, ctx: grpc.aio.ServicerContext) -> Any:
        try:
            _check(req)
            with guard(ctx):
                return await fn(req, ctx)
        except ShoalError as e:
            await _abort(ctx, e)

    return grpc.unary_unary_rpc_method_handler(call, request_deserializer=bounded_decoder(req_t, method, limit),
                                               response_serializer=encode)


def _server_stream(fn: Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]], req_t: type[Any],
                   method: str, limit: int, guard: Guard = _no_guard) -> grpc.RpcMethodHandler:
    async def call(req: Any, ctx: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            _check(req)
            with guard(ctx):
                async for item in fn(req, ctx):
                    yield item
        except ShoalError as e:
            await _abort(ctx, e)

    return grpc.unary_stream_rpc_method_handler(call, request_deserializer=bounded_decoder(req_t, method, limit),
                                                response_serializer=encode)


def _client_stream(fn: Handler, req_t: type[Any], method: str, limit: int,
                   guard: Guard = _no_guard) -> grpc.RpcMethodHandler:
    async def checked(reqs: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for req in reqs:
            _check(req)
            yield req

    async def call(reqs: AsyncIterator[Any], ctx: grpc.aio.ServicerContext) -> Any:
        try:
            with guard(ctx):
                return await fn(checked(reqs), ctx)
        except ShoalError as e:
            await _abort(ctx, e)

    return grpc.stream_unary_rpc_method_handler(call, request_deserializer=bounded_decoder(req_t, method, limit),
                                                response_serializer=encode)


def _bidi(fn: Callable[[AsyncIterator[Any], grpc.aio.ServicerContext], AsyncIterator[Any]], req_t: type[Any],
          method: str, limit: int, guard: Guard = _no_guard) -> grpc.RpcMethodHandler:
    async def checked(reqs: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for req in reqs:
            _check(req)
            yield req

    async def call(reqs: AsyncIterator[Any], ctx: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            with guard(ctx):
                async for item in fn(checked(reqs), ctx):
                    yield item
        except ShoalError as e:
            await _abort(ctx, e)

    return grpc.stream_stream_rpc_method_handler(call, request_deserializer=bounded_decoder(req_t, method, limit),
                                                 response_serializer=encode)


def _peer_ip(ctx: grpc.aio.ServicerContext) -> str:
    """The caller's IP from gRPC's ``ipv4:1.2.3.4:5678`` / ``ipv6:[::1]:5678``."""
    peer = ctx.peer() or ""
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return ""
    host = rest.rsplit(":", 1)[0]
    return host.strip("[]")


class ClusterServer:
    """Serves the dispatcher and the CA to agents on other hosts."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        ca: ClusterCA,
        host: str,
        port: int = 2377,
        *,
        node_id_of_manager: str,
        bootstrap_port: int | None = None,
        advertise_addr: str | None = None,
    ) -> None:
        self.dispatcher = dispatcher  # the manager may swap it when it restarts its components
        self.ca = ca
        self.host = host
        self.port = port
        self.bootstrap_port = port + 1 if bootstrap_port is None else bootstrap_port
        self.node_id = node_id_of_manager
        self.advertise_addr = advertise_addr or host
        if ca.local_node_id is None:
            ca.local_node_id = node_id_of_manager
        self._cluster: grpc.aio.Server | None = None
        self._bootstrap: grpc.aio.Server | None = None
        self._cluster_cfg: _DynamicConfig | None = None
        self._bootstrap_cfg: _DynamicConfig | None = None
        self._cert_expires = dt.datetime.now(dt.UTC)
        self._refresh: asyncio.Task[None] | None = None
        self._refreshed = asyncio.Event()
        self._sessions: dict[str, str] = {}  # session ID → node ID (one per node: the latest)
        self._node_session: dict[str, str] = {}
        self._log_sources: dict[str, RemoteLogSource] = {}
        self._engines: dict[str, RemoteEngine] = {}  # node ID → its agent's EngineTunnels stream
        # The engine of any node, for another manager's EngineRelay (the manager sets it).
        self.engine_source: Callable[[str], EngineSource | None] | None = None
        self._join_limit = JoinLimiter()
        self._calls = CallCounter()
        # Another manager's write, to run here (the manager sets it while it leads on etcd).
        self.forward: Callable[[m.ForwardRequest], Awaitable[m.ForwardResponse]] | None = None
        # A manager joining (manager token): the store's part of the join (shoal.manager sets it).
        self.admit_manager: Callable[[str, str, int], Awaitable[m.ManagerJoin | None]] | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Listen on both ports; Unavailable (and nothing left listening) if either is taken."""
        try:
            await self._start()
        except BaseException:
            await self.stop(0)
            raise

    async def _start(self) -> None:
        cluster_cfg, bootstrap_cfg = self._configs()
        self._cluster_cfg, self._bootstrap_cfg = _DynamicConfig(cluster_cfg), _DynamicConfig(bootstrap_cfg)
        self.ca.on_change(self._ca_changed)

        self._cluster = grpc.aio.server(options=SERVER_OPTIONS)

        def handler(kind: Any, fn: Any, name: str) -> grpc.RpcMethodHandler:
            return kind(fn, DISPATCHER_METHODS[name][0], name, CLUSTER_LIMITS[name], self._per_node)

        self._cluster.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(DISPATCHER_SERVICE, {
            "Register": handler(_unary, self._register, "Register"),
            "Heartbeat": handler(_unary, self._heartbeat, "Heartbeat"),
            "Assignments": handler(_server_stream, self._assignments, "Assignments"),
            "UpdateTaskStatus": handler(_unary, self._update_task_status, "UpdateTaskStatus"),
            "ReportStats": handler(_unary, self._report_stats, "ReportStats"),
            "ShipLogs": handler(_unary, self._ship_logs, "ShipLogs"),
            "RenewCertificate": handler(_unary, self._renew, "RenewCertificate"),
            "LogSubscriptions": handler(_server_stream, self._log_subscriptions, "LogSubscriptions"),
            "PublishLogs": handler(_client_stream, self._publish_logs, "PublishLogs"),
            "Forward": handler(_unary, self._forward, "Forward"),
            "Promote": handler(_unary, self._promote, "Promote"),
            "EngineTunnels": handler(_server_stream, self._engine_tunnels, "EngineTunnels"),
            "EngineTunnel": handler(_bidi, self._engine_tunnel, "EngineTunnel"),
            "EngineRelay": handler(_bidi, self._engine_relay, "EngineRelay"),
        })])
        creds = grpc.dynamic_ssl_server_credentials(cluster_cfg, self._cluster_cfg.fetch,
                                                    require_client_authentication=True)
        self.port = self._bind(self._cluster, self.port, creds)

        self._bootstrap = grpc.aio.server(options=BOOTSTRAP_OPTIONS, maximum_concurrent_rpcs=BOOTSTRAP_MAX_CONCURRENT)
        self._bootstrap.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(BOOTSTRAP_SERVICE, {
            "GetRootCA": _unary(self._get_root_ca, BOOTSTRAP_METHODS["GetRootCA"][0], "GetRootCA",
                                BOOTSTRAP_LIMITS["GetRootCA"]),
            "Join": _unary(self._join, BOOTSTRAP_METHODS["Join"][0], "Join", BOOTSTRAP_LIMITS["Join"]),
        })])
        bcreds = grpc.dynamic_ssl_server_credentials(bootstrap_cfg, self._bootstrap_cfg.fetch,
                                                     require_client_authentication=False)
        self.bootstrap_port = self._bind(self._bootstrap, self.bootstrap_port, bcreds)

        await self._cluster.start()
        await self._bootstrap.start()
        self._refresh = asyncio.create_task(self._refresh_loop(), name="cluster-server-cert")
        log.info("cluster listener on %s:%d (mutual TLS), bootstrap on %s:%d", self.host, self.port,
                 self.host, self.bootstrap_port)

    def _bind(self, server: grpc.aio.Server, port: int, creds: grpc.ServerCredentials) -> int:
        try:
            return server.add_secure_port(f"{self.host}:{port}", creds)
        except RuntimeError as e:  # gRPC says only "Failed to bind"; the port is most likely taken
            raise Unavailable(f"cannot listen on {self.host}:{port} (is the port in use?): {e}") from None

    async def stop(self, grace: float = 1.0) -> None:
        if self._refresh is not None:
            self._refresh.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresh
            self._refresh = None
        self.ca.off_change(self._ca_changed)
        for src in list(self._log_sources.values()):
            self._drop_log_source(src)
        for engine in list(self._engines.values()):
            self._drop_engine(engine)
        for server in (self._cluster, self._bootstrap):
            if server is not None:
                await server.stop(grace)
        self._cluster = self._bootstrap = None

    # ------------------------------------------------------------------ certificates

    def _configs(self) -> tuple[grpc.ServerCertificateConfiguration, grpc.ServerCertificateConfiguration]:
        """Fresh server certificate; the cluster listener trusts the CA's whole bundle."""
        chain, key = self.ca.issue_manager_server_cert(self.node_id, self.advertise_addr)
        self._cert_expires = cert_identity(chain).not_after
        pair = [(key.encode(), chain.encode())]
        return (grpc.ssl_server_certificate_configuration(pair, root_certificates=self.ca.trust_bundle_pem().encode()),
                grpc.ssl_server_certificate_configuration(pair))

    def _ca_changed(self) -> None:
        self._reload()

    def _reload(self) -> None:
        if self._cluster_cfg is None or self._bootstrap_cfg is None:
            return
        self._cluster_cfg.config, self._bootstrap_cfg.config = self._configs()
        self._refreshed.set()

    async def _refresh_loop(self) -> None:
        """Re-issue the server certificate at half its remaining life (node certs may be short)."""
        while True:
            left = (self._cert_expires - dt.datetime.now(dt.UTC)).total_seconds()
            self._refreshed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._refreshed.wait(), timeout=max(left / 2, 1.0))
                continue  # reloaded by a CA change: recompute from its expiry
            try:
                self._reload()
            except Exception:
                log.exception("could not renew the manager's TLS certificate; retrying")

    # ------------------------------------------------------------------ identity

    def _per_node(self, ctx: grpc.aio.ServicerContext) -> contextlib.AbstractContextManager[None]:
        """Count the call against its node's cap (by certificate; an unauthenticated call fails
        in its handler anyway)."""
        pems = ctx.auth_context().get("x509_pem_cert")
        return self._calls.hold(cert_identity(pems[0].decode()).node_id if pems else "")

    def _identity(self, ctx: grpc.aio.ServicerContext) -> CertIdentity:
        pems = ctx.auth_context().get("x509_pem_cert")
        if not pems:
            raise Unauthenticated("a client certificate issued by the cluster's CA is required")
        ident = cert_identity(pems[0].decode())
        cluster = self.ca.store.cluster()
        if not ident.node_id or ident.role is None or cluster is None or ident.cluster_id != cluster.ID:
            raise Unauthenticated("the client certificate names no node of this cluster")
        return ident

    def _session_owner(self, ctx: grpc.aio.ServicerContext, session_id: str) -> str:
        ident = self._identity(ctx)
        owner = self._sessions.get(session_id)
        if owner is None:
            raise SessionInvalid()
        if owner != ident.node_id:
            raise PermissionDenied(f"session {session_id} is not node {ident.node_id}'s")
        return owner

    def _cert_state(self, node_id: str) -> m.CertState:
        node = self.ca.store.get("node", node_id)
        return m.CertState(role=str(node.Spec.Role) if node is not None else "", root_digest=self.ca.root_digest)

    # ------------------------------------------------------------------ dispatcher calls

    async def _register(self, req: m.RegisterRequest, ctx: grpc.aio.ServicerContext) -> m.RegisterResponse:
        ident = self._identity(ctx)
        if req.node_id != ident.node_id:
            raise PermissionDenied(f"the certificate of node {ident.node_id} cannot register as node {req.node_id}")
        if self.ca.store.get("node", ident.node_id) is None:
            raise NotFound(f"node {ident.node_id} not found: it was removed from the swarm; join it again")
        # Where peers reach the node (its advertise address): an IP, else the address the call came from.
        addr = verified_ip(req.addr) or _peer_ip(ctx)
        info = await self.dispatcher.register(ident.node_id, req.description, addr, req.engine)
        old = self._node_session.get(ident.node_id)
        if old is not None:
            self._sessions.pop(old, None)
        self._sessions[info.session_id] = ident.node_id
        self._node_session[ident.node_id] = info.session_id
        return m.RegisterResponse(session=info, state=self._cert_state(ident.node_id))

    async def _heartbeat(self, req: m.HeartbeatRequest, ctx: grpc.aio.ServicerContext) -> m.HeartbeatResponse:
        node_id = self._session_owner(ctx, req.session_id)
        period = await self.dispatcher.heartbeat(req.session_id, req.engine)
        return m.HeartbeatResponse(period_s=period, state=self._cert_state(node_id))

    async def _assignments(self, req: m.SessionRequest, ctx: grpc.aio.ServicerContext) -> AsyncIterator[Assignments]:
        self._session_owner(ctx, req.session_id)
        stream = self.dispatcher.assignments(req.session_id)
        try:
            async for msg in stream:
                yield msg
        finally:
            await stream.aclose()  # type: ignore[attr-defined]

    async def _update_task_status(self, req: m.UpdateTaskStatusRequest, ctx: grpc.aio.ServicerContext) -> m.Empty:
        self._session_owner(ctx, req.session_id)
        await self.dispatcher.update_task_status(req.session_id, req.updates)
        return m.Empty()

    async def _report_stats(self, req: m.ReportStatsRequest, ctx: grpc.aio.ServicerContext) -> m.Empty:
        self._session_owner(ctx, req.session_id)
        self.dispatcher.report_stats(req.session_id, req.stats)
        return m.Empty()

    async def _ship_logs(self, req: m.ShipLogsRequest, ctx: grpc.aio.ServicerContext) -> m.Empty:
        self._session_owner(ctx, req.session_id)
        await self.dispatcher.ship_logs(req.session_id, req.records)
        return m.Empty()

    async def _renew(self, req: m.RenewRequest, ctx: grpc.aio.ServicerContext) -> m.RenewResponse:
        ident = self._identity(ctx)
        cert = self.ca.renew(ident.node_id, req.csr_pem, _peer_ip(ctx))
        role = cert_identity(cert).role
        log.info("renewed the certificate of node %s (%s)", ident.node_id, role)
        return m.RenewResponse(cert_pem=cert, role=str(role), bundle_pem=self.ca.trust_bundle_pem())

    # ------------------------------------------------------------------ logs

    async def _log_subscriptions(self, req: m.SessionRequest,
                                 ctx: grpc.aio.ServicerContext) -> AsyncIterator[m.LogSubscription]:
        node_id = self._session_owner(ctx, req.session_id)
        old = self._log_sources.get(node_id)
        if old is not None:
            self._drop_log_source(old)
        src = RemoteLogSource(node_id)
        self._log_sources[node_id] = src
        self.dispatcher.register_log_source(node_id, src)
        try:
            async for sub in src.subscriptions():
                yield sub
        finally:
            self._drop_log_source(src)

    def _drop_log_source(self, src: RemoteLogSource) -> None:
        src.close()
        if self._log_sources.get(src.node_id) is src:
            del self._log_sources[src.node_id]
            self.dispatcher.unregister_log_source(src.node_id)

    async def _publish_logs(self, reqs: AsyncIterator[m.PublishLogsMessage], ctx: grpc.aio.ServicerContext) -> m.Empty:
        ident = self._identity(ctx)
        async for msg in reqs:
            src = self._log_sources.get(ident.node_id)  # subscriptions are per node: no one else's
            if src is None:
                break
            await src.publish(msg.subscription_id, msg.messages)
            if msg.close:
                if msg.error:
                    log.info("logs from node %s ended early: %s", ident.node_id, msg.error)
                await src.end(msg.subscription_id)
                break
        return m.Empty()

    # ------------------------------------------------------------------ engine pipes

    def engine(self, node_id: str) -> RemoteEngine | None:
        """The engine of a node whose agent keeps its EngineTunnels stream open here."""
        return self._engines.get(node_id)

    async def _engine_tunnels(self, req: m.SessionRequest,
                              ctx: grpc.aio.ServicerContext) -> AsyncIterator[m.TunnelRequest]:
        node_id = self._session_owner(ctx, req.session_id)
        old = self._engines.get(node_id)
        if old is not None:
            self._drop_engine(old)
        engine = RemoteEngine(node_id)
        self._engines[node_id] = engine
        try:
            async for tunnel in engine.requests():
                yield tunnel
        finally:
            self._drop_engine(engine)

    def _drop_engine(self, engine: RemoteEngine) -> None:
        engine.close()
        if self._engines.get(engine.node_id) is engine:
            del self._engines[engine.node_id]

    async def _engine_tunnel(self, reqs: AsyncIterator[m.TunnelChunk],
                             ctx: grpc.aio.ServicerContext) -> AsyncIterator[m.TunnelChunk]:
        ident = self._identity(ctx)
        first = await anext(reqs, None)
        engine = self._engines.get(ident.node_id)  # pipes are per node: no one else's
        if first is None or engine is None:
            return
        async for chunk in engine.serve(first, reqs):
            yield chunk

    async def _engine_relay(self, reqs: AsyncIterator[m.TunnelChunk],
                            ctx: grpc.aio.ServicerContext) -> AsyncIterator[m.TunnelChunk]:
        ident = self._identity(ctx)
        if ident.role != NodeRole.MANAGER:
            raise PermissionDenied("only the swarm's managers reach other nodes' engines")
        first = await anext(reqs, None)
        if first is None:
            return
        source = self.engine_source(first.node) if self.engine_source is not None else self.engine(first.node)
        async for chunk in relay_to(source, first, reqs):
            yield chunk

    async def _promote(self, req: m.PromoteRequest, ctx: grpc.aio.ServicerContext) -> m.ManagerJoin:
        """A promoted worker (its certificate renewed with the manager role) joins the store."""
        ident = self._identity(ctx)
        node = self.ca.store.get("node", ident.node_id)
        if ident.role != NodeRole.MANAGER or node is None or node.Spec.Role != NodeRole.MANAGER:
            raise PermissionDenied(f"node {ident.node_id} is not a manager")
        if self.admit_manager is None:
            raise Unavailable("this swarm's store is not replicated: its managers hold no copy of it")
        joined = await self.admit_manager(ident.node_id, node.Status.Addr, req.etcd_port)
        if joined is None:
            raise Unavailable("this swarm's store is not replicated: its managers hold no copy of it")
        port = req.listen_port or SWARM_PORT
        cur = self.ca.store.get("node", ident.node_id)
        if cur is not None:
            status = ManagerStatus(Leader=False, Reachability="unknown", Addr=f"{cur.Status.Addr}:{port}")
            with self.ca.store.tx() as tx:
                tx.update("node", msgspec.structs.replace(cur, ManagerStatus=status))
        return joined

    async def _forward(self, req: m.ForwardRequest, ctx: grpc.aio.ServicerContext) -> m.ForwardResponse:
        ident = self._identity(ctx)
        if ident.role != NodeRole.MANAGER:
            raise PermissionDenied("only the swarm's managers forward writes")
        if self.forward is None:
            raise Unavailable("this manager does not lead the swarm")
        return await self.forward(req)

    # ------------------------------------------------------------------ bootstrap calls

    async def _get_root_ca(self, req: m.Empty, ctx: grpc.aio.ServicerContext) -> m.RootCAResponse:
        self._join_limit.take(_peer_ip(ctx))
        return m.RootCAResponse(root_pem=self.ca.root_pem)

    async def _join(self, req: m.JoinRequest, ctx: grpc.aio.ServicerContext) -> m.JoinResponse:
        peer = _peer_ip(ctx)
        self._join_limit.take(peer)
        addr = req.addr or peer
        node_id, cert = self.ca.join(req.token, req.csr_pem, req.hostname, addr, req.availability,
                                     listen_port=req.listen_port or SWARM_PORT, peer_ip=peer)
        role = cert_identity(cert).role
        manager: m.ManagerJoin | None = None
        if role == NodeRole.MANAGER and self.admit_manager is not None:
            try:
                manager = await self.admit_manager(node_id, addr, req.etcd_port)
            except BaseException:
                # The store could not take the new manager (e.g. etcd refused the member): the
                # join fails whole, so the node can simply try again.
                with contextlib.suppress(Exception), self.ca.store.tx() as tx:
                    tx.delete("node", node_id)
                raise
        return m.JoinResponse(node_id=node_id, role=str(role), cert_pem=cert,
                              bundle_pem=self.ca.trust_bundle_pem(), manager=manager)
