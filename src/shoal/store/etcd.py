"""The HA backend: every stored object is one etcd key, encoded exactly as SqliteBackend encodes it.

Layout under a prefix (``/shoal`` by default)::

    <prefix>/<kind>/<id>        msgspec msgpack of the object (same KINDS, same decoders as sqlite)
    <prefix>/meta/revision      the store revision (decimal ASCII) of the last batch persisted whole
    <prefix>/election/...       leader election keys (shoal.store.election), never objects

``Version.Index`` of an object is the *store* revision, not etcd's: etcd's revision also moves for
election keys and for every chunk of a batch, and the store must keep its own numbering when it is
copied between backends.

etcd refuses a transaction with more than ``--max-txn-ops`` operations or bigger than
``--max-request-bytes``, so :meth:`EtcdBackend.persist` cuts a batch into chunks. Each chunk is one
etcd transaction (one etcd revision, so a watcher sees it as one group), each carries the leader's
fence, and the meta revision rides in the last one: a store revision in etcd means "every chunk of
this batch and of all earlier ones landed". A leader that dies between chunks leaves a torn batch:
objects with ``Version.Index`` above the meta revision (:attr:`Snapshot.max_index` shows it).

We use aetcd for the channel and etcd's generated v3 API, and call the stubs directly: aetcd's
convenience methods have no paginated range, one timeout for every call, and a watch that hands out
single events without the revision boundaries that keep a chunk together.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aetcd
import grpc
import msgspec
from aetcd import rpc

from shoal.errors import Conflict, FencedOut, InvalidArgument, StoreUnavailable
from shoal.store.base import KINDS, Kind

DEFAULT_PREFIX = "/shoal"
DEFAULT_TIMEOUT_S = 5.0
ETCD_MAX_TXN_OPS = 128  # etcd's defaults; a ManagedEtcd member runs with higher limits
ETCD_MAX_REQUEST_BYTES = 1536 * 1024
_OP_OVERHEAD = 24  # protobuf framing of one put/delete in a TxnRequest, rounded up
_TXN_SLACK = 4096  # compare, header and gRPC framing of one transaction
_RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
_PERMANENT = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED,
                        grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.UNIMPLEMENTED})
# A member cut off from the raft leader must end our watch instead of going silent (etcd's Go client
# sends the same metadata: clientv3.WithRequireLeader).
_REQUIRE_LEADER = (("hasleader", "true"),)

T = TypeVar("T")

# round_robin: each call goes to a member whose connection is up, so a retry after a dead member
# lands on another one; short reconnect backoff so members that come back are used within a second
# (gRPC's default backoff grows to two minutes); keepalive finds half-open connections. etcd
# refuses client pings more often than its --grpc-keepalive-min-time (5 s unless told otherwise).
CHANNEL_OPTIONS: dict[str, Any] = {
    "grpc.lb_policy_name": "round_robin",
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.min_reconnect_backoff_ms": 100,
    "grpc.max_reconnect_backoff_ms": 1000,
    "grpc.keepalive_time_ms": 10_000,
    "grpc.keepalive_timeout_ms": 5_000,
    "grpc.max_receive_message_length": 256 * 1024 * 1024,
    "grpc.max_send_message_length": 64 * 1024 * 1024,
}


class RevisionCompacted(Exception):
    """A watch asked for history etcd no longer has; reload a snapshot and watch from its revision."""

    def __init__(self, requested: int, compact_revision: int) -> None:
        super().__init__(
            f"etcd history before revision {compact_revision} is compacted; cannot watch from {requested}"
        )
        self.requested = requested
        self.compact_revision = compact_revision


def etcd_client(endpoints: Sequence[str]) -> aetcd.Client:
    """An aetcd client over every member in ``endpoints`` ("http://127.0.0.1:2379" or "host:port").

    aetcd builds its gRPC target as ``f"{host}:{port}"``; several members become gRPC's ``ipv4:``
    address-list target by handing it all but the last port inside ``host``.
    """
    if not endpoints:
        raise ValueError("no etcd endpoints")
    hostports = []
    for ep in endpoints:
        parts = urlsplit(ep if "//" in ep else f"//{ep}")
        if parts.scheme not in ("", "http"):
            raise ValueError(f"etcd endpoint {ep!r}: only plain http is supported")
        if not parts.hostname or not parts.port:
            raise ValueError(f"etcd endpoint {ep!r}: want host:port")
        hostports.append((parts.hostname, parts.port))
    options = dict(CHANNEL_OPTIONS)
    if len(hostports) == 1:
        host, port = hostports[0]
        return aetcd.Client(host=host, port=port, options=options)
    for host, _ in hostports:
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"etcd endpoint {host!r}: several endpoints must be IPv4 addresses") from None
    head = ",".join(f"{h}:{p}" for h, p in hostports[:-1])
    return aetcd.Client(host=f"ipv4:{head},{hostports[-1][0]}", port=hostports[-1][1], options=options)


async def retrying(what: str, call: Callable[[float], Awaitable[T]], timeout_s: float) -> T:
    """Run ``call(seconds)`` until it answers, retrying lost connections and timeouts (another
    member may answer) for at most ``timeout_s``; then :class:`StoreUnavailable`. Other gRPC errors
    are not retried.

    One attempt gets at most half the budget: a member that forwarded our write to an etcd leader
    that just died never answers (etcd drops the proposal and waits for its own request timeout,
    5 s + 2 election timeouts); a second attempt reaches the new leader."""
    deadline = time.monotonic() + timeout_s
    attempt_s = max(timeout_s / 2, 0.5)
    delay = 0.05
    last = "no attempt"
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise StoreUnavailable(f"etcd: {what}: no answer within {timeout_s:g}s ({last})")
        try:
            return await call(min(left, attempt_s))
        except grpc.aio.AioRpcError as e:
            if e.code() not in _RETRYABLE:
                raise StoreUnavailable(f"etcd: {what}: {e.code().name}: {e.details()}") from e
            last = f"{e.code().name}: {e.details()}"
        await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 0.5)


def prefix_end(prefix: bytes) -> bytes:
    """The range end that covers every key starting with ``prefix``."""
    b = bytearray(prefix)
    while b:
        if b[-1] < 0xFF:
            b[-1] += 1
            return bytes(b)
        b.pop()
    return b"\0"


@dataclass(frozen=True, slots=True)
class Fence:
    """Proof of leadership: the election key and the etcd revision that created it. A transaction
    that compares it fails once the key is gone (lease expired, resigned) or belongs to a newer term."""

    key: bytes
    create_revision: int

    def compare(self) -> rpc.Compare:
        return rpc.Compare(
            result=rpc.Compare.EQUAL, target=rpc.Compare.CREATE, key=self.key, create_revision=self.create_revision
        )


@dataclass(slots=True, frozen=True)
class BadRow:
    """A stored value that does not decode (written by another version, or damaged)."""

    kind: Kind
    id: str
    error: str


@dataclass(slots=True)
class Snapshot:
    """Everything under the prefix at one etcd revision."""

    revision: int  # store revision (meta key), 0 for an empty store
    etcd_revision: int  # header revision of the read: watch from etcd_revision + 1
    objects: dict[Kind, list[Any]]
    bad: list[BadRow] = field(default_factory=list)
    max_index: int = 0  # highest Version.Index seen; above ``revision`` means a torn last batch


@dataclass(slots=True)
class RemoteBatch:
    """The objects one etcd revision (one persist chunk) wrote, as a watcher sees them."""

    revision: int | None  # store revision when the meta key moved here (last chunk of a batch)
    etcd_revision: int
    puts: list[tuple[Kind, Any]] = field(default_factory=list)
    deletes: list[tuple[Kind, str]] = field(default_factory=list)
    bad: list[BadRow] = field(default_factory=list)


class EtcdBackend:
    """Durable store in etcd: paginated load, chunked fenced persist, revision-grouped watch."""

    def __init__(
        self,
        client: aetcd.Client,
        prefix: str = DEFAULT_PREFIX,
        *,
        max_ops: int = ETCD_MAX_TXN_OPS,
        max_bytes: int = ETCD_MAX_REQUEST_BYTES,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        page_size: int = 5000,  # etcd 3.4 scans the index past each page: few big pages
        owns_client: bool = False,
    ) -> None:
        if max_ops < 2 or max_bytes <= _TXN_SLACK + 1024:
            raise ValueError("etcd limits too small for a transaction")
        self.client = client
        self.prefix = prefix.rstrip("/")
        self.max_ops = max_ops
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.page_size = page_size
        self._owns_client = owns_client
        self._p = self.prefix.encode()
        self._kind_prefix = {k: self._p + b"/" + k.encode() + b"/" for k in KINDS}
        self._by_prefix = {v: k for k, v in self._kind_prefix.items()}
        self.meta_key = self._p + b"/meta/revision"
        self._encoder = msgspec.msgpack.Encoder()
        self._decoders = {k: msgspec.msgpack.Decoder(t) for k, t in KINDS.items()}
        self._write_lock = asyncio.Lock()

    @classmethod
    def from_endpoints(cls, endpoints: Sequence[str], prefix: str = DEFAULT_PREFIX, **kw: Any) -> EtcdBackend:
        """A backend with its own client, closed by :meth:`close`."""
        return cls(etcd_client(endpoints), prefix, owns_client=True, **kw)

    def key(self, kind: Kind, oid: str) -> bytes:
        return self._kind_prefix[kind] + oid.encode()

    async def _stubs(self) -> aetcd.Client:
        await self.client.connect()  # aetcd connects lazily; a no-op once connected
        return self.client

    # ------------------------------------------------------------------ load

    async def load(self) -> Snapshot:
        """Every object, read page by page at one etcd revision so the pages agree with each other.
        If compaction removes that revision mid-read, start over at the current one."""
        # Decoding 100,000 objects that all stay alive makes the cyclic GC rescan the growing heap
        # again and again: with it paused, load takes less than half the time.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            for _ in range(5):
                try:
                    return await self._load_at_one_revision()
                except grpc.aio.AioRpcError as e:
                    if e.code() != grpc.StatusCode.OUT_OF_RANGE:  # "required revision has been compacted"
                        raise StoreUnavailable(f"etcd: load: {e.code().name}: {e.details()}") from e
            raise StoreUnavailable("etcd: load kept losing its revision to compaction")
        finally:
            if gc_was_enabled:
                gc.enable()

    async def _load_at_one_revision(self) -> Snapshot:
        c = await self._stubs()
        meta = await self._range(c, rpc.RangeRequest(key=self.meta_key), "load meta")
        rev = meta.header.revision
        snap = Snapshot(revision=int(meta.kvs[0].value) if meta.kvs else 0, etcd_revision=rev, objects={})
        for kind, kp in self._kind_prefix.items():
            out: list[Any] = []
            snap.objects[kind] = out
            decode = self._decoders[kind].decode
            start, end, limit = kp, prefix_end(kp), self.page_size
            while True:
                req = rpc.RangeRequest(key=start, range_end=end, limit=limit, revision=rev)
                try:
                    resp = await self._range(c, req, f"load {kind}")
                except StoreUnavailable as e:
                    cause = e.__cause__
                    if (isinstance(cause, grpc.aio.AioRpcError) and cause.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                            and limit > 1):
                        limit //= 2  # a page of large objects is over the message limit: smaller pages
                        continue
                    raise
                for kv in resp.kvs:
                    oid = kv.key[len(kp):].decode(errors="replace")
                    try:
                        obj = decode(kv.value)
                    except msgspec.DecodeError as err:  # ValidationError is a DecodeError too
                        snap.bad.append(BadRow(kind, oid, str(err)))
                        continue
                    out.append(obj)
                    idx = obj.Version.Index
                    if idx > snap.max_index:
                        snap.max_index = idx
                if not resp.more or not resp.kvs:
                    break
                start = resp.kvs[-1].key + b"\0"
        return snap

    async def _range(self, c: aetcd.Client, req: rpc.RangeRequest, what: str) -> rpc.RangeResponse:
        async def call(left: float) -> rpc.RangeResponse:
            try:
                return await c.kvstub.Range(req, timeout=left)
            except grpc.aio.AioRpcError as e:
                if e.code() == grpc.StatusCode.OUT_OF_RANGE:
                    raise _Compacted(e) from e
                raise

        try:
            return await retrying(what, call, self.timeout_s)
        except _Compacted as e:
            raise e.error from None

    # ------------------------------------------------------------------ persist

    def _ops(self, revision: int, puts: Iterable[tuple[Kind, Any]], deletes: Iterable[tuple[Kind, str]]
             ) -> list[tuple[rpc.RequestOp, int]]:
        """One request op per key (the last write of a key wins: etcd refuses a transaction that puts
        one key twice), with its size; the meta revision last, so it lands in the last chunk."""
        enc = self._encoder.encode
        by_key: dict[bytes, tuple[rpc.RequestOp, int]] = {}
        for kind, oid in deletes:
            k = self.key(kind, oid)
            by_key[k] = (rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=k)), len(k) + _OP_OVERHEAD)
        for kind, obj in puts:
            k = self.key(kind, obj.ID)
            v = enc(obj)
            size = len(k) + len(v) + _OP_OVERHEAD
            if size > self.max_bytes - _TXN_SLACK:
                raise InvalidArgument(
                    f"{kind} {obj.ID} is {len(v)} bytes encoded; one etcd request takes at most "
                    f"{self.max_bytes - _TXN_SLACK - _OP_OVERHEAD - len(k)}"
                )
            by_key[k] = (rpc.RequestOp(request_put=rpc.PutRequest(key=k, value=v)), size)
        by_key.pop(self.meta_key, None)
        meta = str(revision).encode()
        ops = list(by_key.values())
        ops.append((rpc.RequestOp(request_put=rpc.PutRequest(key=self.meta_key, value=meta)),
                    len(self.meta_key) + len(meta) + _OP_OVERHEAD))
        return ops

    def _chunks(self, ops: list[tuple[rpc.RequestOp, int]]) -> list[list[rpc.RequestOp]]:
        budget = self.max_bytes - _TXN_SLACK
        chunks: list[list[rpc.RequestOp]] = [[]]
        size = 0
        for op, n in ops:
            if chunks[-1] and (len(chunks[-1]) >= self.max_ops or size + n > budget):
                chunks.append([])
                size = 0
            chunks[-1].append(op)
            size += n
        return chunks

    async def persist(
        self,
        revision: int,
        puts: Iterable[tuple[Kind, Any]],
        deletes: Iterable[tuple[Kind, str]],
        fence: Fence | None = None,
    ) -> None:
        """Write one store batch; durable (on a quorum) when this returns.

        Raises :class:`FencedOut` if ``fence`` no longer holds (that chunk and all later ones are not
        written), :class:`StoreUnavailable` if a chunk gets no answer within ``timeout_s``.
        """
        c = await self._stubs()
        compare = [fence.compare()] if fence is not None else []
        chunks = self._chunks(self._ops(revision, puts, deletes))
        async with self._write_lock:  # FIFO: overlapping calls still land in call order, unmixed
            await self._write_chunks(c, revision, compare, chunks)

    async def _write_chunks(self, c: aetcd.Client, revision: int, compare: list[rpc.Compare],
                            chunks: list[list[rpc.RequestOp]]) -> None:
        for n, chunk in enumerate(chunks, 1):
            req = rpc.TxnRequest(compare=compare, success=chunk)

            async def call(left: float, req: rpc.TxnRequest = req) -> rpc.TxnResponse:
                return await c.kvstub.Txn(req, timeout=left)

            # A retried chunk may have been applied already; applying it again is harmless: the same
            # values, the same deletes, the same meta revision, the same fence.
            resp = await retrying(f"persist revision {revision} (chunk {n}/{len(chunks)})", call, self.timeout_s)
            if not resp.succeeded:
                raise FencedOut(
                    f"etcd refused revision {revision} (chunk {n}/{len(chunks)}): "
                    "this manager is no longer the leader"
                )

    async def import_snapshot(self, revision: int, objects: dict[Kind, list[Any]],
                              fence: Fence | None = None) -> int:
        """Copy a whole store (e.g. a single manager's sqlite file) into an empty prefix; chunked like
        any batch, the meta revision last. Returns the number of objects written."""
        c = await self._stubs()
        meta = await self._range(c, rpc.RangeRequest(key=self.meta_key), "import check")
        used = bool(meta.kvs and int(meta.kvs[0].value))
        for kp in self._kind_prefix.values():
            if used:
                break
            resp = await self._range(c, rpc.RangeRequest(key=kp, range_end=prefix_end(kp), count_only=True),
                                     "import check")
            used = resp.count > 0
        if used:
            raise Conflict(f"etcd already holds a Shoal store under {self.prefix}; wipe it first")
        puts = [(kind, obj) for kind, objs in objects.items() for obj in objs]
        await self.persist(revision, puts, [], fence)
        return len(puts)

    async def wipe(self, fence: Fence | None = None) -> None:
        """Delete every object in one transaction (one range delete per kind) and set the meta
        revision to 0, so a watcher sees one whole batch of deletes with ``revision == 0``. Election
        keys stay."""
        c = await self._stubs()
        ops = [rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=kp, range_end=prefix_end(kp)))
               for kp in self._kind_prefix.values()]
        ops.append(rpc.RequestOp(request_put=rpc.PutRequest(key=self.meta_key, value=b"0")))
        req = rpc.TxnRequest(compare=[fence.compare()] if fence else [], success=ops)
        async with self._write_lock:
            resp = await retrying("wipe", lambda left: c.kvstub.Txn(req, timeout=left), self.timeout_s)
        if not resp.succeeded:
            raise FencedOut("etcd refused the wipe: this manager is no longer the leader")

    async def close(self) -> None:
        if self._owns_client:
            await self.client.close()

    # ------------------------------------------------------------------ watch

    async def watch(self, from_etcd_revision: int, *, whole_batches: bool = False) -> AsyncIterator[RemoteBatch]:
        """Batches written at ``from_etcd_revision`` and later, one per etcd revision (= one persist
        chunk), in order. With ``whole_batches`` the chunks of one store batch are merged and handed
        out when its last chunk (the one with the meta revision) arrives.

        A lost stream is reopened from the next revision (on another member if need be); if no member
        answers within ``timeout_s``, :class:`StoreUnavailable`. A compacted start revision raises
        :class:`RevisionCompacted`: the caller reloads.
        """
        next_rev = from_etcd_revision
        pending: RemoteBatch | None = None
        failing_since: float | None = None  # when the current run of stream failures began
        delay = 0.05

        def established() -> None:
            nonlocal failing_since, delay
            failing_since, delay = None, 0.05

        while True:
            try:
                async with contextlib.aclosing(self._watch_stream(next_rev, established)) as stream:
                    async for batch in stream:
                        next_rev = batch.etcd_revision + 1
                        if whole_batches:
                            if pending is None:
                                pending = batch
                            else:
                                pending.puts.extend(batch.puts)
                                pending.deletes.extend(batch.deletes)
                                pending.bad.extend(batch.bad)
                                pending.revision, pending.etcd_revision = batch.revision, batch.etcd_revision
                            if pending.revision is None:
                                continue
                            batch, pending = pending, None
                        yield batch
            except grpc.aio.AioRpcError as e:
                # A broken stream shows up as UNAVAILABLE, CANCELLED, even INTERNAL ("Internal error
                # from Core"): retry all but the errors that another try cannot fix.
                if e.code() in _PERMANENT:
                    raise StoreUnavailable(f"etcd: watch: {e.code().name}: {e.details()}") from e
                why = f"{e.code().name}: {e.details()}"
            except _StreamEnded as e:  # e.g. the member lost its raft leader and cancelled us
                why = str(e)
            now = time.monotonic()
            if failing_since is None:
                failing_since = now
            elif now - failing_since > self.timeout_s:
                raise StoreUnavailable(f"etcd: watch: no member answered within {self.timeout_s:g}s ({why})")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    async def _watch_stream(self, start: int, established: Callable[[], None]) -> AsyncIterator[RemoteBatch]:
        c = await self._stubs()
        stop = asyncio.Event()
        create = rpc.WatchRequest(create_request=rpc.WatchCreateRequest(
            key=self._p + b"/", range_end=prefix_end(self._p + b"/"), start_revision=start))

        async def requests() -> AsyncIterator[rpc.WatchRequest]:
            yield create
            await stop.wait()  # ending the request stream could end the watch: keep it open

        call = rpc.WatchStub(c.channel).Watch(requests(), metadata=_REQUIRE_LEADER)
        try:
            async for resp in call:
                if resp.compact_revision:
                    raise RevisionCompacted(start, resp.compact_revision)
                if resp.canceled:
                    raise _StreamEnded(f"cancelled by etcd: {resp.cancel_reason or 'no reason given'}")
                if resp.created:
                    established()
                batch: RemoteBatch | None = None
                for ev in resp.events:
                    kv = ev.kv
                    if batch is None or kv.mod_revision != batch.etcd_revision:
                        if batch is not None:
                            yield batch
                        batch = RemoteBatch(revision=None, etcd_revision=kv.mod_revision)
                    self._apply_event(batch, ev)
                if batch is not None:
                    yield batch
            raise _StreamEnded("stream closed by etcd")
        finally:
            stop.set()
            call.cancel()

    def _apply_event(self, batch: RemoteBatch, ev: Any) -> None:
        key = ev.kv.key
        if key == self.meta_key:
            if ev.type == rpc.Event.PUT:
                batch.revision = int(ev.kv.value)
            return
        head, _, rest = key[len(self._p) + 1:].partition(b"/")
        kind = self._by_prefix.get(self._p + b"/" + head + b"/")
        if kind is None:
            return  # election keys and anything else under the prefix that is not an object
        oid = rest.decode(errors="replace")
        if ev.type == rpc.Event.DELETE:
            batch.deletes.append((kind, oid))
            return
        try:
            batch.puts.append((kind, self._decoders[kind].decode(ev.kv.value)))
        except msgspec.DecodeError as err:
            batch.bad.append(BadRow(kind, oid, str(err)))


class _Compacted(Exception):
    """Carries an OUT_OF_RANGE error past :func:`retrying` (which would turn it into StoreUnavailable)."""

    def __init__(self, error: grpc.aio.AioRpcError) -> None:
        super().__init__(str(error))
        self.error = error


class _StreamEnded(Exception):
    pass
