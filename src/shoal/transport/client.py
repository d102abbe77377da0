"""An agent's end of the agent protocol over gRPC with mutual TLS.

:class:`GrpcDispatcherClient` is a :class:`~shoal.dispatcher.protocol.DispatcherClient`: the Agent
uses it exactly as it uses the in-process one. Failures surface as shoal errors (mostly
:class:`~shoal.errors.Unavailable`), which the Agent answers by registering again with back-off;
the gRPC channel itself reconnects underneath.

It also keeps the node's certificate fresh: renewal at 50-80 % of its lifetime (swarmkit's
window), and at once when the manager's replies show that the node's role or the cluster's root
is no longer what the certificate says. And :meth:`serve_logs` answers the manager's requests
for the logs of this node's tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from shoal.ca.certs import generate_key_and_csr
from shoal.dispatcher.protocol import (
    Assignments,
    EngineHealth,
    LogRecord,
    LogSource,
    SessionInfo,
    TaskStats,
    TaskStatusUpdate,
)
from shoal.errors import Unavailable
from shoal.models import NodeDescription, NodeRole
from shoal.transport import messages as m
from shoal.transport.bootstrap import NodeCredentials, save_credentials
from shoal.transport.errors import from_rpc_error
from shoal.transport.rpc import DISPATCHER_SERVICE, decoder, encode, path, secure_channel, split_addr
from shoal.transport.tunnel import open_engine_socket, pump

log = logging.getLogger(__name__)


async def _one(item: m.TunnelChunk) -> AsyncIterator[m.TunnelChunk]:
    yield item


def _closed_under(err: asyncio.CancelledError, manager: str) -> Unavailable:
    """A grpc.aio call raises CancelledError when its *channel* is closed (this node moved to
    another manager, or renewed its certificate twice) — not only when the caller is cancelled.
    The first kind must not look like a cancellation: the status reporter took it for one and
    stopped for good, so a node that changed manager mid-report never reported again. Re-raise
    a real cancellation; turn the other into the failed call it is."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise err
    return Unavailable(f"the connection to the manager at {manager} was closed under the call")

RPC_TIMEOUT_S = 10.0
RENEW_WINDOW = (0.5, 0.8)  # renew when this fraction of the certificate's remaining life has passed
RENEW_RETRY_MAX_S = 30.0


class GrpcDispatcherClient:
    """A node's connection to its manager: dispatcher calls, certificate renewal, log serving."""

    def __init__(self, creds: NodeCredentials, cert_dir: str | Path, *, rpc_timeout_s: float = RPC_TIMEOUT_S) -> None:
        self.creds = creds
        self.cert_dir = Path(cert_dir)
        self.rpc_timeout_s = rpc_timeout_s
        # Called with the new credentials after each renewal (e.g. the daemon acting on a promotion).
        self.on_renewed: Callable[[NodeCredentials], None] | None = None
        self._host, self._port = split_addr(creds.manager)
        self._channel = self._open()
        # Where else a manager may answer (the last session's list, kept with the credentials):
        # when this one stops answering, the next register tries the next one.
        self.remotes: list[str] = list(dict.fromkeys([creds.manager, *creds.managers]))
        self._previous: grpc.aio.Channel | None = None  # kept open for calls begun before a renewal
        self._session_id: str | None = None
        self._new_session = asyncio.Event()
        self._new_tunnel_session = asyncio.Event()  # serve_tunnels' own copy of the signal
        self._renew_now = asyncio.Event()
        self._renewer: asyncio.Task[None] | None = None
        self._renew_lock = asyncio.Lock()

    @property
    def node_id(self) -> str:
        return self.creds.node_id

    def _open(self) -> grpc.aio.Channel:
        c = self.creds
        return secure_channel(self._host, self._port, c.root_pem, c.key_pem, c.cert_pem)

    async def close(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
            self._renewer = None
        for ch in (self._channel, self._previous):
            if ch is not None:
                await ch.close()
        self._previous = None

    # ------------------------------------------------------------------ calls

    async def _unary(self, method: str, req: Any, resp_t: type[Any]) -> Any:
        call = self._channel.unary_unary(path(DISPATCHER_SERVICE, method), request_serializer=encode,
                                         response_deserializer=decoder(resp_t))
        try:
            return await call(req, timeout=self.rpc_timeout_s)
        except grpc.aio.AioRpcError as e:
            raise from_rpc_error(e, self.creds.manager) from None
        except asyncio.CancelledError as e:
            raise _closed_under(e, self.creds.manager) from None

    async def register(
        self, node_id: str | None, description: NodeDescription, addr: str, engine: EngineHealth | None = None
    ) -> SessionInfo:
        self._start_renewer()
        req = m.RegisterRequest(node_id=node_id or self.creds.node_id, description=description, addr=addr,
                                engine=engine)
        try:
            resp: m.RegisterResponse = await self._unary("Register", req, m.RegisterResponse)
        except Unavailable:
            await self._next_remote()
            raise
        self._session_id = resp.session.session_id
        if resp.session.managers and resp.session.managers != list(self.creds.managers):
            self.creds = dataclasses.replace(self.creds, managers=tuple(resp.session.managers))
            save_credentials(self.cert_dir, self.creds)
            self.remotes = list(dict.fromkeys([self.creds.manager, *resp.session.managers]))
        self._new_session.set()
        self._new_tunnel_session.set()
        self._check(resp.state)
        return resp.session

    async def heartbeat(self, session_id: str, engine: EngineHealth | None = None) -> float:
        resp: m.HeartbeatResponse = await self._unary("Heartbeat", m.HeartbeatRequest(session_id, engine),
                                                      m.HeartbeatResponse)
        self._check(resp.state)
        return resp.period_s

    async def assignments(self, session_id: str) -> AsyncIterator[Assignments]:
        call = self._channel.unary_stream(path(DISPATCHER_SERVICE, "Assignments"), request_serializer=encode,
                                          response_deserializer=decoder(Assignments))(m.SessionRequest(session_id))
        try:
            async for msg in call:
                yield msg
        except grpc.aio.AioRpcError as e:
            raise from_rpc_error(e, self.creds.manager) from None
        except asyncio.CancelledError as e:
            raise _closed_under(e, self.creds.manager) from None
        finally:
            call.cancel()

    async def update_task_status(self, session_id: str, updates: list[TaskStatusUpdate]) -> None:
        await self._unary("UpdateTaskStatus", m.UpdateTaskStatusRequest(session_id, updates), m.Empty)

    async def report_stats(self, session_id: str, stats: list[TaskStats]) -> None:
        await self._unary("ReportStats", m.ReportStatsRequest(session_id, stats), m.Empty)

    async def ship_logs(self, session_id: str, records: list[LogRecord]) -> None:
        await self._unary("ShipLogs", m.ShipLogsRequest(session_id, records), m.Empty)

    async def promote(self, listen_port: int = 0, etcd_port: int = 0) -> m.ManagerJoin:
        """This node was promoted: its part of the store (a swarm on etcd), from the leader."""
        return await self._unary("Promote", m.PromoteRequest(listen_port=listen_port, etcd_port=etcd_port),
                                 m.ManagerJoin)

    async def _next_remote(self) -> None:
        """This manager does not answer (or does not lead): the next register goes to the next one."""
        if len(self.remotes) < 2:
            return
        i = self.remotes.index(self.creds.manager) if self.creds.manager in self.remotes else -1
        target = self.remotes[(i + 1) % len(self.remotes)]
        log.info("node %s: manager %s does not answer; trying %s", self.creds.node_id, self.creds.manager, target)
        self.creds = dataclasses.replace(self.creds, manager=target)
        self._host, self._port = split_addr(target)
        old, self._channel = self._channel, self._open()
        await old.close()

    # ------------------------------------------------------------------ certificates

    def _check(self, state: m.CertState) -> None:
        """Renew now if the manager says our certificate is out of date."""
        stale_role = bool(state.role) and state.role != str(self.creds.role)
        stale_root = bool(state.root_digest) and state.root_digest != self.creds.root_digest
        if stale_role or stale_root:
            self._renew_now.set()

    def _start_renewer(self) -> None:
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.create_task(self._renew_loop(), name=f"cert-renewal-{self.creds.node_id}")

    def _renew_delay(self) -> float:
        left = (self.creds.not_after - dt.datetime.now(dt.UTC)).total_seconds()
        return max(left * random.uniform(*RENEW_WINDOW), 0.0)

    async def _renew_loop(self) -> None:
        backoff = 1.0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._renew_now.wait(), timeout=self._renew_delay())
            self._renew_now.clear()
            try:
                await self.renew_certificate()
                backoff = 1.0
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("node %s: certificate renewal failed (retrying in %.0f s): %s",
                            self.creds.node_id, backoff, e)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, RENEW_RETRY_MAX_S)
                self._renew_now.set()

    async def renew_certificate(self) -> NodeCredentials:
        """A new key and certificate (role and trusted roots as the manager says now), saved and used
        for new calls. Calls already running go on over the previous connection, which stays open
        until the next renewal."""
        async with self._renew_lock:
            key_pem, csr_pem = generate_key_and_csr()
            resp: m.RenewResponse = await self._unary("RenewCertificate", m.RenewRequest(csr_pem), m.RenewResponse)
            creds = dataclasses.replace(self.creds, role=NodeRole(resp.role), cert_pem=resp.cert_pem,
                                        key_pem=key_pem, root_pem=resp.bundle_pem)
            save_credentials(self.cert_dir, creds)
            if creds.role != self.creds.role:
                log.info("node %s is now a %s", creds.node_id, creds.role)
            self.creds = creds
            if self._previous is not None:
                await self._previous.close()
            self._previous, self._channel = self._channel, self._open()
            if self.on_renewed is not None:
                self.on_renewed(creds)
            return creds

    # ------------------------------------------------------------------ logs

    async def serve_logs(self, source: LogSource) -> None:
        """Until cancelled: while a session is up, answer the manager's log requests from ``source``
        (normally the Agent). Run it beside ``Agent.run()``."""
        await self._each_session(self._new_session, "log",
                                 lambda session_id: self._serve_logs_once(source, session_id))

    async def _each_session(self, new_session: asyncio.Event, what: str,
                            serve: Callable[[str], Awaitable[None]]) -> None:
        """Run ``serve(session_id)`` for each session (a stream the agent keeps open to the manager)."""
        while True:
            await new_session.wait()
            new_session.clear()
            session_id = self._session_id
            if session_id is None:
                continue
            try:
                await serve(session_id)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.debug("node %s: %s stream ended: %s", self.creds.node_id, what, e)
            # Same session: the stream broke (manager restarting?) — try again shortly; a new
            # session (the Agent registered again) starts at once.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(new_session.wait(), timeout=1.0)
            if self._session_id == session_id:
                new_session.set()

    async def _serve_logs_once(self, source: LogSource, session_id: str) -> None:
        call = self._channel.unary_stream(path(DISPATCHER_SERVICE, "LogSubscriptions"), request_serializer=encode,
                                          response_deserializer=decoder(m.LogSubscription))(
                                              m.SessionRequest(session_id))
        running: dict[str, asyncio.Task[None]] = {}
        try:
            async for sub in call:
                if sub.cancel:
                    task = running.pop(sub.id, None)
                    if task is not None:
                        task.cancel()
                    continue
                task = asyncio.create_task(self._publish(source, sub))
                running[sub.id] = task
                task.add_done_callback(lambda _t, sid=sub.id: running.pop(sid, None))
        except grpc.aio.AioRpcError as e:
            raise from_rpc_error(e, self.creds.manager) from None
        except asyncio.CancelledError as e:
            raise _closed_under(e, self.creds.manager) from None
        finally:
            call.cancel()
            for task in list(running.values()):
                task.cancel()

    # ------------------------------------------------------------------ engine pipes

    async def serve_tunnels(self, engine_url: str) -> None:
        """Until cancelled: while a session is up, open the pipes to this node's engine that the
        leader asks for (transport/tunnel.py). Run it beside ``Agent.run()``."""
        await self._each_session(self._new_tunnel_session, "engine tunnel",
                                 lambda session_id: self._serve_tunnels_once(engine_url, session_id))

    async def _serve_tunnels_once(self, engine_url: str, session_id: str) -> None:
        call = self._channel.unary_stream(path(DISPATCHER_SERVICE, "EngineTunnels"), request_serializer=encode,
                                          response_deserializer=decoder(m.TunnelRequest))(
                                              m.SessionRequest(session_id))
        running: set[asyncio.Task[None]] = set()
        try:
            async for req in call:
                task = asyncio.create_task(self._tunnel(engine_url, req.id), name=f"tunnel-{req.id}")
                running.add(task)
                task.add_done_callback(running.discard)
        except grpc.aio.AioRpcError as e:
            raise from_rpc_error(e, self.creds.manager) from None
        except asyncio.CancelledError as e:
            raise _closed_under(e, self.creds.manager) from None
        finally:
            call.cancel()
            for task in list(running):
                task.cancel()

    async def _tunnel(self, engine_url: str, pipe_id: str) -> None:
        """One pipe: a new connection to the engine, joined to an EngineTunnel call."""
        call = self._channel.stream_stream(path(DISPATCHER_SERVICE, "EngineTunnel"), request_serializer=encode,
                                           response_deserializer=decoder(m.TunnelChunk))
        try:
            reader, writer = await open_engine_socket(engine_url)
        except Unavailable as e:
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
                await call(_one(m.TunnelChunk(id=pipe_id, error=e.message))).read()
            return
        inbox: asyncio.Queue[m.TunnelChunk | None] = asyncio.Queue()

        async def incoming() -> AsyncIterator[m.TunnelChunk]:
            while (chunk := await inbox.get()) is not None:
                yield chunk

        async def outgoing() -> AsyncIterator[m.TunnelChunk]:
            yield m.TunnelChunk(id=pipe_id)
            async for chunk in pump(reader, writer, incoming()):
                yield chunk

        stream = call(outgoing())
        try:
            async for chunk in stream:
                inbox.put_nowait(chunk)
        except grpc.aio.AioRpcError as e:
            log.debug("node %s: engine pipe %s ended: %s", self.creds.node_id, pipe_id, e.details())
        finally:
            inbox.put_nowait(None)
            stream.cancel()
            writer.close()

    async def _publish(self, source: LogSource, sub: m.LogSubscription) -> None:
        async def messages() -> AsyncIterator[m.PublishLogsMessage]:
            try:
                async for line in source.task_logs(sub.tasks, sub.options):
                    yield m.PublishLogsMessage(subscription_id=sub.id, messages=[line])
            except Exception as e:  # the manager's reader gets the lines so far and the reason
                yield m.PublishLogsMessage(subscription_id=sub.id, close=True, error=str(e))
                return
            yield m.PublishLogsMessage(subscription_id=sub.id, close=True)

        call = self._channel.stream_unary(path(DISPATCHER_SERVICE, "PublishLogs"), request_serializer=encode,
                                          response_deserializer=decoder(m.Empty))
        try:
            await call(messages())
        except asyncio.CancelledError as e:  # a closed channel ends this stream like a failed call
            log.debug("node %s: publishing logs for %s failed: %s", self.creds.node_id, sub.id,
                      _closed_under(e, self.creds.manager))
        except grpc.aio.AioRpcError as e:
            log.debug("node %s: publishing logs for %s failed: %s", self.creds.node_id, sub.id, e.details())
