"""Leader election among managers, on an etcd lease (the pattern of etcd's own concurrency.Election).

Each candidate holds a lease and puts one key under ``<prefix>/election/<member_id>/<lease>`` with
its info (an address to forward writes to). Keys are ordered by their etcd create revision; the
lowest is the leader. A candidate waits for the deletion of the key just before its own, so a
leader's departure wakes exactly one successor. A dead leader's key goes with its lease, ``ttl_s``
after its last keepalive; that bounds failover.

The leader's :class:`Fence` (its key and create revision) goes into every transaction it persists:
once the key is gone, or recreated by a newer term, etcd refuses the write, so a deposed leader that
has not noticed yet still cannot write. ``Leadership.lost`` is set as soon as the leader can tell:
the key is deleted, etcd says the lease is gone, or no keepalive has succeeded for ``0.6 * ttl``
(before the lease can expire on the server, so the leader stops acting before a successor starts).

aetcd has no client for etcd's v3election service, so this is done with KV, Lease and Watch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aetcd
import grpc
from aetcd import rpc

from shoal.errors import StoreUnavailable
from shoal.store.etcd import DEFAULT_PREFIX, DEFAULT_TIMEOUT_S, Fence, etcd_client, prefix_end, retrying

log = logging.getLogger(__name__)

_REQUIRE_LEADER = (("hasleader", "true"),)
DEFAULT_TTL_S = 5  # a dead leader's key expires 5 s after its last keepalive: failover well under 10 s


@dataclass(slots=True)
class Leadership:
    """This candidate's term as leader. Stop acting as leader when ``lost`` is set."""

    key: bytes
    lease_id: int
    fence: Fence
    info: bytes
    lost: asyncio.Event = field(default_factory=asyncio.Event)


class LeaderElection:
    def __init__(
        self,
        client: aetcd.Client,
        prefix: str = DEFAULT_PREFIX,
        member_id: str = "",
        info: bytes = b"",
        ttl_s: float = DEFAULT_TTL_S,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        keepalive_endpoints: list[str] | None = None,
    ) -> None:
        if not member_id or "/" in member_id:
            raise ValueError("member_id must be a non-empty name without '/'")
        self.client = client
        self.election_prefix = prefix.rstrip("/").encode() + b"/election/"
        self.member_id = member_id
        self.info = info
        # etcd leases are whole seconds, and etcd raises anything below 1.5 election timeouts anyway.
        self.ttl = max(2, math.ceil(ttl_s))
        self.timeout_s = timeout_s
        self._mine = self.election_prefix + member_id.encode() + b"/"
        self._tasks: list[asyncio.Task[None]] = []
        self.leadership: Leadership | None = None
        self._lease_id = 0
        # With endpoints, the lease is refreshed from a thread and event loop of its own (and its
        # own client): on a manager whose loop is busy for seconds at a time (a 100,000-task
        # deploy), refreshes queued behind that work and the leader lost its lease mid-deploy.
        self.keepalive_endpoints = keepalive_endpoints

    # ------------------------------------------------------------------ campaign

    async def campaign(self) -> Leadership:
        """Return once this candidate is the leader. Waits as long as another leader lives; survives
        etcd outages (it starts over with a new lease). Cancel it to stop campaigning. After a term
        is lost, call it again (or :meth:`resign`): that also ends the old term's tasks and lease."""
        await self.client.connect()
        await self._stop(revoke=True)
        self.leadership = None
        while True:
            lost = asyncio.Event()
            try:
                grant = await retrying("lease grant", lambda left: self.client.leasestub.LeaseGrant(
                    rpc.LeaseGrantRequest(TTL=self.ttl), timeout=left), self.timeout_s)
                self._lease_id = grant.ID
                self._spawn(self._keepalive_apart(grant.ID, lost) if self.keepalive_endpoints
                            else self._keepalive(self.client, grant.ID, lost))
                key = self._mine + f"{grant.ID:016x}".encode()
                create_rev = await self._create_key(key, grant.ID)
                await self._clear_stale_keys(key)
                if not await self._wait_for_turn(create_rev, lost):
                    raise _Lost
            except (_Lost, StoreUnavailable) as e:
                log.info("election: campaign of %s starts over (%s)", self.member_id, str(e) or "lease lost")
                await self._stop(revoke=True)
                await asyncio.sleep(0.2)
                continue
            except BaseException:
                await self._stop(revoke=True)
                raise
            leadership = Leadership(key=key, lease_id=grant.ID, fence=Fence(key, create_rev), info=self.info,
                                    lost=lost)
            self.leadership = leadership
            self._spawn(self._guard_key(leadership))
            log.info("election: %s is the leader (key %s)", self.member_id, key.decode())
            return leadership

    async def resign(self) -> None:
        """Give up leadership (or the campaign) now: the lease is revoked, so the next candidate
        takes over without waiting for the TTL."""
        if self.leadership is not None:
            self.leadership.lost.set()
        await self._stop(revoke=True)
        self.leadership = None

    async def close(self) -> None:
        await self.resign()

    async def _create_key(self, key: bytes, lease_id: int) -> int:
        req = rpc.TxnRequest(
            compare=[rpc.Compare(result=rpc.Compare.EQUAL, target=rpc.Compare.CREATE, key=key, create_revision=0)],
            success=[rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=self.info, lease=lease_id))],
            failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=key))],
        )
        resp = await retrying("election put", lambda left: self.client.kvstub.Txn(req, timeout=left), self.timeout_s)
        if resp.succeeded:
            return resp.header.revision
        return resp.responses[0].response_range.kvs[0].create_revision  # a retried put that had landed

    async def _clear_stale_keys(self, key: bytes) -> None:
        """Delete this member's keys from an earlier run (a restart within the TTL): we are that
        member, so they are not a leader we should wait for. A stale leader is fenced by this."""
        resp = await retrying("election stale keys", lambda left: self.client.kvstub.Range(
            rpc.RangeRequest(key=self._mine, range_end=prefix_end(self._mine), keys_only=True),
            timeout=left), self.timeout_s)
        for kv in resp.kvs:
            if kv.key != key:
                await retrying("election delete stale", lambda left, k=kv.key: self.client.kvstub.DeleteRange(
                    rpc.DeleteRangeRequest(key=k), timeout=left), self.timeout_s)

    async def _wait_for_turn(self, create_rev: int, lost: asyncio.Event) -> bool:
        """Wait until no candidate key older than ours exists. False if our lease was lost."""
        while not lost.is_set():
            resp = await retrying("election range", lambda left: self.client.kvstub.Range(
                rpc.RangeRequest(
                    key=self.election_prefix, range_end=prefix_end(self.election_prefix),
                    max_create_revision=create_rev - 1, sort_order=rpc.RangeRequest.DESCEND,
                    sort_target=rpc.RangeRequest.CREATE, limit=1, keys_only=True),
                timeout=left), self.timeout_s)
            if not resp.kvs:
                return True
            waiter = asyncio.ensure_future(self._deleted(resp.kvs[0].key, resp.header.revision + 1))
            lost_wait = asyncio.ensure_future(lost.wait())
            try:
                await asyncio.wait({waiter, lost_wait}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in (waiter, lost_wait):
                    t.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await t
        return False

    async def _deleted(self, key: bytes, start: int) -> None:
        """Return when ``key`` is deleted, or when the watch breaks (the caller looks again)."""
        try:
            async with contextlib.aclosing(_watch(self.client, key, b"", start)) as stream:
                async for resp in stream:
                    if any(ev.type == rpc.Event.DELETE for ev in resp.events):
                        return
        except (grpc.aio.AioRpcError, _WatchEnded):
            await asyncio.sleep(0.2)

    # ------------------------------------------------------------------ holding the lease

    async def _keepalive_apart(self, lease_id: int, lost: asyncio.Event) -> None:
        """:meth:`_keepalive` on a thread and loop of its own, until ``lost`` is set (here or there)."""
        loop = asyncio.get_running_loop()
        endpoints = list(self.keepalive_endpoints or ())
        tloop = asyncio.new_event_loop()

        async def run() -> None:
            client = etcd_client(endpoints)
            inner = asyncio.Event()
            try:
                await self._keepalive(client, lease_id, inner)
            finally:
                await client.close()
            if inner.is_set():
                loop.call_soon_threadsafe(lost.set)

        task = tloop.create_task(run())

        def main() -> None:
            try:
                tloop.run_until_complete(task)
            except BaseException:  # cancelled (the term ended here), or the loop failed: stop
                pass
            finally:
                tloop.close()

        thread = threading.Thread(target=main, name=f"lease-{lease_id:x}", daemon=True)
        thread.start()
        try:
            await lost.wait()
        finally:
            with contextlib.suppress(RuntimeError):  # its loop has ended already
                tloop.call_soon_threadsafe(task.cancel)
            await loop.run_in_executor(None, thread.join)

    async def _keepalive(self, client: aetcd.Client, lease_id: int, lost: asyncio.Event) -> None:
        """Refresh the lease every ttl/5; declare the lease lost when etcd says so, or when no refresh
        has succeeded for 0.6 * ttl (measured from when the last good refresh was *sent*, so this
        side gives up before the server can expire the lease)."""
        interval, grace = self.ttl / 5, self.ttl * 0.6
        last_ok = time.monotonic()
        while not lost.is_set():
            sent = time.monotonic()
            try:
                # Capped per attempt, like retrying(): an attempt that went to a dying member must
                # leave time for another one before the grace is over.
                attempt = min(max(0.05, last_ok + grace - sent), self.ttl / 4)
                ttl = await asyncio.wait_for(_refresh(client, lease_id), timeout=attempt)
            except (grpc.aio.AioRpcError, TimeoutError) as e:
                if time.monotonic() >= last_ok + grace:
                    log.warning("election: lease %x not refreshed for %.1fs (%s)", lease_id, grace,
                                str(e) or type(e).__name__)
                    lost.set()
                    return
                await asyncio.sleep(0.1)
                continue
            if ttl <= 0:
                log.warning("election: lease %x is gone", lease_id)
                lost.set()
                return
            last_ok = sent
            await asyncio.sleep(interval)

    async def _guard_key(self, leadership: Leadership) -> None:
        """Set ``lost`` when the leader key is deleted (lease revoked or expired, or removed by hand)."""
        start = leadership.fence.create_revision + 1
        while not leadership.lost.is_set():
            try:
                async with contextlib.aclosing(_watch(self.client, leadership.key, b"", start)) as stream:
                    async for resp in stream:
                        for ev in resp.events:
                            if (ev.type == rpc.Event.DELETE
                                    or ev.kv.create_revision != leadership.fence.create_revision):
                                log.warning("election: leader key %s is gone", leadership.key.decode())
                                leadership.lost.set()
                                return
                        start = resp.header.revision + 1
            except _Compacted:
                # History is gone: look at the key itself.
                resp = await retrying("election check", lambda left: self.client.kvstub.Range(
                    rpc.RangeRequest(key=leadership.key), timeout=left), self.timeout_s)
                if not resp.kvs or resp.kvs[0].create_revision != leadership.fence.create_revision:
                    leadership.lost.set()
                    return
                start = resp.header.revision + 1
            except (grpc.aio.AioRpcError, _WatchEnded, StoreUnavailable):
                await asyncio.sleep(0.2)  # the keepalive decides whether the lease is lost meanwhile

    def _spawn(self, coro: object) -> None:
        self._tasks.append(asyncio.ensure_future(coro))  # type: ignore[arg-type]

    async def _stop(self, revoke: bool) -> None:
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        lease_id, self._lease_id = self._lease_id, 0
        if revoke and lease_id:
            try:  # best effort: if etcd is unreachable the lease expires on its own
                await retrying("lease revoke", lambda left: self.client.leasestub.LeaseRevoke(
                    rpc.LeaseRevokeRequest(ID=lease_id), timeout=left), min(self.timeout_s, 2.0))
            except StoreUnavailable as e:
                log.info("election: could not revoke lease %x: %s", lease_id, e)

    # ------------------------------------------------------------------ followers

    async def leader(self) -> bytes | None:
        """The current leader's info, or None when there is no leader."""
        await self.client.connect()
        resp = await self._first()
        return resp.kvs[0].value if resp.kvs else None

    async def _first(self) -> rpc.RangeResponse:
        return await retrying("election leader", lambda left: self.client.kvstub.Range(
            rpc.RangeRequest(key=self.election_prefix, range_end=prefix_end(self.election_prefix),
                             sort_order=rpc.RangeRequest.ASCEND, sort_target=rpc.RangeRequest.CREATE, limit=1),
            timeout=left), self.timeout_s)

    async def candidates(self) -> set[str]:
        """The member IDs holding a live election key: the managers connected to etcd right now."""
        await self.client.connect()
        resp = await retrying("election candidates", lambda left: self.client.kvstub.Range(
            rpc.RangeRequest(key=self.election_prefix, range_end=prefix_end(self.election_prefix), keys_only=True),
            timeout=left), self.timeout_s)
        return {kv.key[len(self.election_prefix):].split(b"/", 1)[0].decode() for kv in resp.kvs}

    async def observe(self) -> AsyncIterator[bytes | None]:
        """The leader's info now and after every change (None while there is none). Keeps trying
        through etcd outages; the last value stays current until etcd answers again."""
        await self.client.connect()
        last: bytes | object | None = object()
        while True:
            try:
                resp = await self._first()
                cur = resp.kvs[0].value if resp.kvs else None
                if cur != last:
                    last = cur
                    yield cur
                async with contextlib.aclosing(_watch(
                        self.client, self.election_prefix, prefix_end(self.election_prefix),
                        resp.header.revision + 1)) as stream:
                    async for wr in stream:
                        if wr.events:
                            break
            except (grpc.aio.AioRpcError, _WatchEnded, _Compacted, StoreUnavailable):
                await asyncio.sleep(0.3)


async def _refresh(client: aetcd.Client, lease_id: int) -> int:
    await client.connect()
    call = client.leasestub.LeaseKeepAlive(iter([rpc.LeaseKeepAliveRequest(ID=lease_id)]))
    try:
        async for resp in call:
            return int(resp.TTL)
        return 0
    finally:
        call.cancel()


class _Lost(Exception):
    pass


class _WatchEnded(Exception):
    pass


class _Compacted(Exception):
    pass


async def _watch(client: aetcd.Client, key: bytes, range_end: bytes, start: int
                 ) -> AsyncIterator[rpc.WatchResponse]:
    """Watch responses carrying events for ``key`` (or the range) from revision ``start``."""
    stop = asyncio.Event()

    async def requests() -> AsyncIterator[rpc.WatchRequest]:
        yield rpc.WatchRequest(create_request=rpc.WatchCreateRequest(
            key=key, range_end=range_end, start_revision=start))
        await stop.wait()

    call = rpc.WatchStub(client.channel).Watch(requests(), metadata=_REQUIRE_LEADER)
    try:
        async for resp in call:
            if resp.compact_revision:
                raise _Compacted
            if resp.canceled:
                raise _WatchEnded(resp.cancel_reason)
            if resp.events:
                yield resp
        raise _WatchEnded("stream closed")
    finally:
        stop.set()
        call.cancel()
