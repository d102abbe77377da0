"""The HA backend: every stored object is one etcd key, encoded exactly as SqliteBackend encodes it.

Layout under a prefix (``/shoal`` by default)::

    <prefix>/<kind>/<id>        msgspec msgpack of the object (same KINDS, same decoders as sqlite);
                                secrets, configs and the cluster sealed (store/sealing.py)
    <prefix>/meta/revision      the store revision (decimal ASCII) of the last batch persisted whole
    <prefix>/election/...       leader election keys (shoal.store.election), never objects

``Version.Index`` of an object is the *store* revision, not etcd's: etcd's revision also moves for
election keys and for every chunk of a batch, and the store must keep its own numbering when it is
copied between backends.

etcd refuses a transaction with more than ``--max-txn-ops`` operations or bigger than
``--max-request-bytes``, so :meth:`EtcdBackend.persist` cuts a batch into chunks. Each chunk is one
etcd transaction (one etcd revision, so a watcher sees it as one group), each carries the leader's
fence, and the meta revision rides in the last one: a store revision in etcd means "every chunk of
this batch and of all earlier ones landed". A leader that dies between chunks leaves a torn batch.
etcd's MVCC keeps it out of sight: :meth:`EtcdBackend.load` reads every object at the etcd revision
where the meta key was last written, i.e. exactly the last whole batch, and the next leader calls
:meth:`EtcdBackend.repair` to write that state back over the torn chunks before its first batch.
So the durable state is always the state of some store revision, as with sqlite.

We use aetcd for the channel and etcd's generated v3 API, and call the stubs directly: aetcd's
convenience methods have no paginated range, one timeout for every call, and a watch that hands out
single events without the revision boundaries that keep a chunk together.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from aetcd import watcher as aetcd_watcher

from shoal.errors import Conflict, FencedOut, StoreUnavailable
from shoal.store.base import KINDS, Kind, Problem, Snapshot, gc_paused
from shoal.store.etcdtls import SERVER_NAME as ETCD_SERVER_NAME
from shoal.store.etcdtls import EtcdTLS
from shoal.store.sealing import SEALED_KINDS, Sealer

DEFAULT_PREFIX = "/shoal"
DEFAULT_TIMEOUT_S = 5.0
ETCD_MAX_TXN_OPS = 128  # etcd's defaults; a ManagedEtcd member runs with higher limits
ETCD_MAX_REQUEST_BYTES = 1536 * 1024
PARALLEL_CHUNKS = 4  # transactions of one batch in flight at once (see _write_chunks)
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


_client_tls: EtcdTLS | None = None


def use_client_tls(tls: EtcdTLS | None) -> None:
    """The certificate this process presents to ``https://`` etcd endpoints, and the CA it trusts
    for them: the managed members' (store/etcdtls.py), set by the manager when it opens its store.
    One per process, as a daemon is one manager of one swarm."""
    global _client_tls
    _client_tls = tls


class _TLSClient(aetcd.Client):  # type: ignore[misc]
    """aetcd's client over a TLS channel (aetcd itself only dials insecure channels): the same
    connect, with channel credentials and the server name every member certificate carries."""

    def __init__(self, *args: Any, tls: EtcdTLS, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._credentials = grpc.ssl_channel_credentials(tls.ca_pem, tls.key_pem, tls.cert_pem)
        self._options = {**self._options, "grpc.ssl_target_name_override": ETCD_SERVER_NAME}

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        if self._is_connecting:
            await asyncio.wait_for(self._connected.wait(), self._connect_wait_timeout)
            return
        try:
            self._is_connecting = True
            self.channel = grpc.aio.secure_channel(f"{self._host}:{self._port}", self._credentials,
                                                   options=list(self._options.items()))
            self.kvstub = rpc.KVStub(self.channel)
            self.clusterstub = rpc.ClusterStub(self.channel)
            self.leasestub = rpc.LeaseStub(self.channel)
            self.maintenancestub = rpc.MaintenanceStub(self.channel)
            self._watcher = aetcd_watcher.Watcher(rpc.WatchStub(self.channel), timeout=self._timeout,
                                                  metadata=self.metadata)
            self._connected.set()
        finally:
            self._is_connecting = False


def etcd_client(endpoints: Sequence[str]) -> aetcd.Client:
    """An aetcd client over every member in ``endpoints`` ("http://127.0.0.1:2379", "host:port", or
    "https://..." for the members Shoal runs, with the process's :func:`use_client_tls`).

    aetcd builds its gRPC target as ``f"{host}:{port}"``; several members become gRPC's ``ipv4:``
    address-list target by handing it all but the last port inside ``host``.
    """
    if not endpoints:
        raise ValueError("no etcd endpoints")
    hostports = []
    schemes = set()
    for ep in endpoints:
        parts = urlsplit(ep if "//" in ep else f"//{ep}")
        if parts.scheme not in ("", "http", "https"):
            raise ValueError(f"etcd endpoint {ep!r}: use http:// or https://")
        if not parts.hostname or not parts.port:
            raise ValueError(f"etcd endpoint {ep!r}: want host:port")
        schemes.add(parts.scheme == "https")
        hostports.append((parts.hostname, parts.port))
    if len(schemes) > 1:
        raise ValueError("etcd endpoints mix http and https")
    tls = schemes == {True}
    if tls and _client_tls is None:
        raise ValueError("https etcd endpoints need a client certificate, which Shoal has only for the etcd "
                         "members it runs itself; for an etcd you run, give http:// endpoints")
    options = dict(CHANNEL_OPTIONS)

    def client(host: str, port: int) -> aetcd.Client:
        if tls:
            assert _client_tls is not None
            return _TLSClient(host=host, port=port, options=options, tls=_client_tls)
        return aetcd.Client(host=host, port=port, options=options)

    if len(hostports) == 1:
        return client(*hostports[0])
    for host, _ in hostports:
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"etcd endpoint {host!r}: several endpoints must be IPv4 addresses") from None
    head = ",".join(f"{h}:{p}" for h, p in hostports[:-1])
    return client(f"ipv4:{head},{hostports[-1][0]}", hostports[-1][1])


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


BadRow = Problem  # a stored value that does not decode (written by another version, or damaged)


@dataclass(slots=True)
class EtcdSnapshot(Snapshot):
    """Everything under the prefix as of the last batch persisted whole.

    The objects are read at ``etcd_revision``, the etcd revision of the last chunk of that batch
    (the meta key's mod revision), so chunks of a torn batch written after it stay invisible.
    Watch from ``etcd_revision + 1``: a torn batch's chunks then arrive first (merged into the next
    whole batch with ``whole_batches``). If etcd's history no longer reaches back that far (a long
    idle store and auto-compaction), the read is at the current revision instead and
    ``max_index > revision`` tells that a torn batch shows.
    """

    etcd_revision: int = 0
    head_revision: int = 0  # etcd's revision when the load began
    max_index: int = 0  # highest Version.Index read
    stale: list[tuple[Kind, Any]] = field(default_factory=list)  # plain, or sealed with an older key


@dataclass(slots=True)
class RemoteBatch:
    """The objects one etcd revision (one persist chunk) wrote, as a watcher sees them."""

    revision: int | None  # store revision when the meta key moved here (last chunk of a batch)
    etcd_revision: int
    puts: list[tuple[Kind, Any]] = field(default_factory=list)
    deletes: list[tuple[Kind, str]] = field(default_factory=list)
    bad: list[Problem] = field(default_factory=list)


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
        sealer: Sealer | None = None,  # None: nothing is sealed (a sealed value still refuses to load)
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
        self.sealer = sealer or Sealer()

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

    async def load(self) -> EtcdSnapshot:
        """Every object as of the last whole batch, read page by page at one etcd revision (so the
        pages agree with each other). A leader calls :meth:`repair` with the result before writing."""
        with gc_paused():
            for _ in range(5):
                try:
                    return await self._load_once()
                except grpc.aio.AioRpcError as e:
                    if e.code() != grpc.StatusCode.OUT_OF_RANGE:
                        raise StoreUnavailable(f"etcd: load: {e.code().name}: {e.details()}") from e
                    # Compaction overtook a read at the current revision: read again.
            raise StoreUnavailable("etcd: load kept losing its revision to compaction")

    async def _load_once(self) -> EtcdSnapshot:
        c = await self._stubs()
        meta = await self._range(c, rpc.RangeRequest(key=self.meta_key), "load meta")
        head = meta.header.revision
        at = meta.kvs[0].mod_revision if meta.kvs else head
        snap = EtcdSnapshot(revision=int(meta.kvs[0].value) if meta.kvs else 0, objects={},
                            etcd_revision=at, head_revision=head)
        try:
            await self._read_objects(c, snap)
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.OUT_OF_RANGE or at == head:
                raise
            snap = EtcdSnapshot(revision=snap.revision, objects={}, etcd_revision=head, head_revision=head)
            await self._read_objects(c, snap)
        return snap

    async def _read_objects(self, c: aetcd.Client, snap: EtcdSnapshot) -> None:
        for kind, kp in self._kind_prefix.items():
            out: list[Any] = []
            snap.objects[kind] = out
            decode = self._decoders[kind].decode
            sealed = kind in SEALED_KINDS
            async for resp in self._pages(c, kp, snap.etcd_revision, f"load {kind}"):
                for kv in resp.kvs:
                    value = kv.value
                    if sealed:  # a key that cannot open it raises StoreKeyError: no load at all
                        value = self.sealer.open(kind, kv.key[len(kp):].decode(errors="replace"), value)
                    try:
                        obj = decode(value)
                    except msgspec.DecodeError as err:  # ValidationError is a DecodeError too
                        snap.bad.append(Problem(kind, kv.key[len(kp):].decode(errors="replace"),
                                                f"cannot be decoded: {err}"))
                        continue
                    out.append(obj)
                    if sealed and self.sealer.stale(kind, kv.value):
                        snap.stale.append((kind, obj))
                    idx = obj.Version.Index
                    if idx > snap.max_index:
                        snap.max_index = idx

    async def _pages(self, c: aetcd.Client, kp: bytes, revision: int, what: str, keys_only: bool = False
                     ) -> AsyncIterator[rpc.RangeResponse]:
        """The keys under ``kp`` at ``revision`` (0: now), ``page_size`` at a time."""
        start, end, limit = kp, prefix_end(kp), self.page_size
        while True:
            req = rpc.RangeRequest(key=start, range_end=end, limit=limit, revision=revision, keys_only=keys_only)
            try:
                resp = await self._range(c, req, what)
            except StoreUnavailable as e:
                cause = e.__cause__
                if (isinstance(cause, grpc.aio.AioRpcError) and cause.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                        and limit > 1):
                    limit //= 2  # a page of large objects is over the message limit: smaller pages
                    continue
                raise
            yield resp
            if not resp.more or not resp.kvs:
                return
            start = resp.kvs[-1].key + b"\0"

    async def repair(self, snap: EtcdSnapshot, fence: Fence | None = None) -> int:
        """Make etcd hold exactly ``snap`` again: undo the chunks of a torn batch (a leader that died
        between chunks) by writing back the snapshot's version of every object changed after
        ``snap.etcd_revision`` and deleting objects created since. A new leader calls this once,
        with its fence, right after :meth:`load` and before its first batch; otherwise the torn
        objects would show in a later load. Returns how many objects it rewrote or deleted."""
        c = await self._stubs()
        want = {self.key(k, o.ID): (k, o) for k, objs in snap.objects.items() for o in objs}
        keep = {self.key(p.kind, p.id) for p in snap.bad}  # undecodable rows: left as they are
        puts: list[tuple[Kind, Any]] = []
        deletes: list[tuple[Kind, str]] = []
        seen: set[bytes] = set()
        for kind, kp in self._kind_prefix.items():
            async for resp in self._pages(c, kp, 0, f"repair {kind}", keys_only=True):
                for kv in resp.kvs:
                    seen.add(kv.key)
                    if kv.mod_revision <= snap.etcd_revision or kv.key in keep:
                        continue
                    if kv.key in want:
                        puts.append(want[kv.key])
                    else:
                        deletes.append((kind, kv.key[len(kp):].decode()))
        puts.extend(obj for key, obj in want.items() if key not in seen)
        if puts or deletes:
            await self.persist(snap.revision, puts, deletes, fence)
        return len(puts) + len(deletes)

    async def check_key(self) -> None:
        """Raise :class:`~shoal.store.sealing.StoreKeyError` if this backend's data key cannot open
        the stored cluster object (a manager whose store.key is missing or another swarm's): it
        must not campaign, lead, and write."""
        c = await self._stubs()
        kp = self._kind_prefix["cluster"]
        resp = await self._range(c, rpc.RangeRequest(key=kp, range_end=prefix_end(kp), limit=1), "check key")
        for kv in resp.kvs:
            self.sealer.open("cluster", kv.key[len(kp):].decode(errors="replace"), kv.value)

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
             ) -> tuple[list[tuple[rpc.RequestOp, int]], list[Problem]]:
        """One request op per key (the last write of a key wins: etcd refuses a transaction that puts
        one key twice), with its size; the meta revision last, so it lands in the last chunk. Objects
        that cannot be encoded, or are too big for one etcd request, are left out and returned."""
        enc = self._encoder.encode
        seal = self.sealer.seal  # StoreKeyError (no key) fails the whole batch: nothing goes plain
        room = self.max_bytes - _TXN_SLACK
        by_key: dict[bytes, tuple[rpc.RequestOp, int]] = {}
        rejected: list[Problem] = []
        for kind, oid in deletes:
            k = self.key(kind, oid)
            by_key[k] = (rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=k)), len(k) + _OP_OVERHEAD)
        for kind, obj in puts:
            k = self.key(kind, obj.ID)
            try:
                v = enc(obj)
            except (TypeError, ValueError, OverflowError) as e:
                rejected.append(Problem(kind, obj.ID, f"cannot be encoded: {e}"))
                continue
            if kind in SEALED_KINDS:
                v = seal(kind, obj.ID, v)
            size = len(k) + len(v) + _OP_OVERHEAD
            if size > room:
                rejected.append(Problem(kind, obj.ID, f"is {len(v)} bytes encoded, more than one etcd request "
                                                      f"takes ({room - _OP_OVERHEAD - len(k)})"))
                continue
            by_key[k] = (rpc.RequestOp(request_put=rpc.PutRequest(key=k, value=v)), size)
        by_key.pop(self.meta_key, None)
        meta = str(revision).encode()
        ops = list(by_key.values())
        ops.append((rpc.RequestOp(request_put=rpc.PutRequest(key=self.meta_key, value=meta)),
                    len(self.meta_key) + len(meta) + _OP_OVERHEAD))
        return ops, rejected

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
    ) -> list[Problem]:
        """Write one store batch; durable (on a quorum) when this returns. Returns the objects left
        out because they cannot be stored on their own (the rest of the batch is written).

        Raises :class:`FencedOut` if ``fence`` no longer holds (that chunk and all later ones are not
        written), :class:`StoreUnavailable` if a chunk gets no answer within ``timeout_s``.
        """
        c = await self._stubs()
        compare = [fence.compare()] if fence is not None else []
        ops, rejected = self._ops(revision, puts, deletes)
        async with self._write_lock:  # FIFO: overlapping calls still land in call order, unmixed
            await self._write_chunks(c, revision, compare, self._chunks(ops))
        return rejected

    async def _write_chunks(self, c: aetcd.Client, revision: int, compare: list[rpc.Compare],
                            chunks: list[list[rpc.RequestOp]]) -> None:
        """Every chunk but the last (which holds the meta revision) a few at a time, then the last.
        etcd commits concurrent transactions in one raft round and one fsync, so a 100,000-task batch
        no longer waits for hundreds of quorum round trips in a row. Order inside a batch does not
        matter: each key appears once, watchers wait for the meta key, and a torn batch (any subset
        of its chunks) is undone by :meth:`repair`."""
        total = len(chunks)

        async def write(n: int, chunk: list[rpc.RequestOp]) -> None:
            req = rpc.TxnRequest(compare=compare, success=chunk)

            async def call(left: float) -> rpc.TxnResponse:
                return await c.kvstub.Txn(req, timeout=left)

            # A retried chunk may have been applied already; applying it again is harmless: the same
            # values, the same deletes, the same meta revision, the same fence.
            resp = await retrying(f"persist revision {revision} (chunk {n}/{total})", call, self.timeout_s)
            if not resp.succeeded:
                raise FencedOut(
                    f"etcd refused revision {revision} (chunk {n}/{total}): this manager is no longer the leader"
                )

        slots = asyncio.Semaphore(PARALLEL_CHUNKS)

        async def bounded(n: int, chunk: list[rpc.RequestOp]) -> None:
            async with slots:
                await write(n, chunk)

        pending = {asyncio.create_task(bounded(n, chunk)) for n, chunk in enumerate(chunks[:-1], 1)}
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
                for t in done:
                    t.result()  # the first failure ends the batch (FencedOut, StoreUnavailable)
        finally:
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await write(total, chunks[-1])

    async def import_snapshot(self, revision: int, objects: dict[Kind, list[Any]],
                              fence: Fence | None = None) -> list[Problem]:
        """Copy a whole store (e.g. a single manager's sqlite file) into an empty prefix; chunked like
        any batch, the meta revision last. Returns the objects that could not be copied."""
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
        return await self.persist(revision, [(kind, obj) for kind, objs in objects.items() for obj in objs], [],
                                  fence)

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
        value = ev.kv.value
        if kind in SEALED_KINDS:  # StoreKeyError ends the watch: the follower reloads, and says why
            value = self.sealer.open(kind, oid, value)
        try:
            batch.puts.append((kind, self._decoders[kind].decode(value)))
        except msgspec.DecodeError as err:
            batch.bad.append(Problem(kind, oid, f"cannot be decoded: {err}"))


class _Compacted(Exception):
    """Carries an OUT_OF_RANGE error past :func:`retrying` (which would turn it into StoreUnavailable)."""

    def __init__(self, error: grpc.aio.AioRpcError) -> None:
        super().__init__(str(error))
        self.error = error


class _StreamEnded(Exception):
    pass
