"""Classic Swarm's image API over the engines of every node.

An image is the cluster's if any ready node's engine has it. ``docker images`` lists every
engine's images merged by ID (tags and digests unioned) with an extra ``Nodes`` field naming where
each is; inspect adds the same field. Calls about one image go to the engines that have it (tag and
remove on each of them; history, save and push from one). ``docker pull`` and ``docker load`` (and
``import``) go to every ready node, or to those named by the ``node`` (names or IDs, repeatable or
comma-separated) or ``constraint`` (placement syntax, ``node.labels.zone==a``) query parameters:
each engine's progress comes back as it comes, its messages prefixed with the node's name (classic
Swarm did the same), and a node that failed is named in one error message at the end, which the
docker CLI prints before it exits non-zero. ``X-Registry-Auth`` travels to every engine asked.
``GET /images/search``, ``/distribution/{name}/json`` and ``POST /auth`` (docker login) are the
first ready node's engine's answer (the engine asks the registry); ``POST /commit`` goes to the container's node.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator, Iterable
from typing import Any
from urllib.parse import quote, urlencode

from aiohttp import web
from multidict import MultiDict

from shoal.api import engines
from shoal.api.common import json_response
from shoal.api.engineproxy import PASS_REQUEST, EngineResponse, EngineStream, open_stream, relay
from shoal.api.engines import (
    CALL_TIMEOUT_S,
    EngineError,
    EngineManager,
    engine_call,
    fan_out,
    locate,
    node_by_ref,
    node_name,
)
from shoal.errors import Conflict, InvalidArgument, NotFound, ShoalError, Unavailable
from shoal.models import Node, NodeState
from shoal.scheduler.constraints import node_matches, parse_constraints
from shoal.transport.tunnel import CHUNK

log = logging.getLogger(__name__)

NODES_FIELD = "Nodes"  # Shoal's extra field in image list/inspect answers: the names of the nodes that have it
IMAGE_FILTERS = ("before", "dangling", "label", "reference", "since")  # and engines.NODE_FILTER
NONE_TAG, NONE_DIGEST = "<none>:<none>", "<none>@<none>"
OUT_DEPTH = 1024  # merged progress lines waiting for a slow client (then the engines wait)
TEE_DEPTH = 16  # chunks of a request body buffered per engine while it is sent to several
_HEX_REF = re.compile(r"^(sha256:)?[0-9a-f]{1,64}$")


# --------------------------------------------------------------------------- merging (pure)


def _union(lists: Iterable[list[str] | None], none: str) -> list[str] | None:
    """Tags (or digests) of one image on several nodes: each once, in first-seen order; the
    ``<none>`` placeholder only when no node has a real one."""
    out: list[str] = []
    for values in lists:
        for v in values or ():
            if v not in out:
                out.append(v)
    real = [v for v in out if v != none]
    if real:
        return real
    return out or None


def merge_image_lists(answers: list[tuple[str, list[dict[str, Any]]]]) -> list[dict[str, Any]]:
    """Every engine's ``GET /images/json`` (by node name) → one entry per image ID, newest first.

    Tags and digests are unioned, containers summed (-1 when an engine did not count them), and
    ``Nodes`` names the nodes that have the image."""
    merged: dict[str, dict[str, Any]] = {}
    for node, images in answers:
        for img in images:
            key = str(img.get("Id", ""))
            have = merged.get(key)
            if have is None:
                img = dict(img)
                img[NODES_FIELD] = [node]
                merged[key] = img
                continue
            have[NODES_FIELD].append(node)
            have["RepoTags"] = _union([have.get("RepoTags"), img.get("RepoTags")], NONE_TAG)
            have["RepoDigests"] = _union([have.get("RepoDigests"), img.get("RepoDigests")], NONE_DIGEST)
            counts = [have.get("Containers", -1), img.get("Containers", -1)]
            have["Containers"] = -1 if -1 in counts else sum(counts)
    out = list(merged.values())
    for img in out:
        img[NODES_FIELD] = sorted(img[NODES_FIELD])
    out.sort(key=lambda i: (-int(i.get("Created") or 0), str(i.get("Id"))))
    return out


def pick_inspect(ref: str, hits: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """Inspect answers for ``ref`` from the nodes that have it → the one to show, with ``Nodes``.

    A name may stand for different images on different nodes (pulled at different times): the one
    on the most nodes wins (then the newest), as the one ``docker run`` most likely gets. An ID
    prefix that means different images on different nodes is ambiguous."""
    groups: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for node, doc in hits:
        groups.setdefault(str(doc.get("Id", "")), []).append((node, doc))
    if len(groups) > 1 and _HEX_REF.match(ref):
        where = "; ".join(f"{i[:19]} on {', '.join(sorted(n for n, _ in g))}" for i, g in sorted(groups.items()))
        raise Conflict(f"image reference {ref!r} is ambiguous: it means different images on different nodes ({where})")
    best = max(groups.values(), key=lambda g: (len(g), str(g[0][1].get("Created", "")), g[0][1].get("Id", "")))
    doc = dict(sorted(best, key=lambda h: h[0])[0][1])
    doc["RepoTags"] = _union([d.get("RepoTags") for _, d in best], NONE_TAG) or []
    doc["RepoDigests"] = _union([d.get("RepoDigests") for _, d in best], NONE_DIGEST) or []
    doc[NODES_FIELD] = sorted(n for n, _ in best)
    return doc


def merge_removals(answers: list[tuple[str, list[dict[str, str]]]]) -> list[dict[str, str]]:
    """Every node's ``DELETE /images/{name}`` answer → each ``Untagged``/``Deleted`` entry once."""
    out: list[dict[str, str]] = []
    for _node, entries in answers:
        for e in entries or ():
            if e not in out:
                out.append(e)
    return out


def node_message(node: str, msg: dict[str, Any], seen_streams: set[str]) -> dict[str, Any] | None:
    """One progress message of ``node``'s engine as the client gets it: prefixed with the node
    (``id`` when it has one, so each node's layers keep lines of their own on a terminal, else
    ``status``). ``stream`` text (``Loaded image: ...``) goes once, unprefixed: the SDK parses it.
    Errors are the caller's (told once at the end), ``None`` here."""
    if msg.get("error") or msg.get("errorDetail"):
        return None
    msg = dict(msg)
    if "stream" in msg:
        text = str(msg["stream"])
        if text in seen_streams:
            return None
        seen_streams.add(text)
        return msg
    if msg.get("id"):
        msg["id"] = f"{node}: {msg['id']}"
    elif "status" in msg:
        msg["status"] = f"{node}: {msg['status']}"
    return msg


def final_error(failures: list[tuple[str, str]]) -> str:
    return "; ".join(f"{node}: {why}" for node, why in sorted(failures))


def _error_line(message: str) -> bytes:
    return json.dumps({"errorDetail": {"message": message}, "error": message}).encode() + b"\r\n"


def split_messages(buf: bytes) -> tuple[list[dict[str, Any]], bytes]:
    """The whole JSON messages at the start of ``buf`` and what is left (a message cut between
    two chunks waits for the next)."""
    out: list[dict[str, Any]] = []
    text = buf.decode(errors="replace")
    dec = json.JSONDecoder()
    pos = 0
    while True:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        if pos >= len(text):
            return out, b""
        try:
            doc, end = dec.raw_decode(text, pos)
        except ValueError:
            return out, text[pos:].encode()
        if isinstance(doc, dict):
            out.append(doc)
        pos = end


# --------------------------------------------------------------------------- which nodes


def chosen_nodes(m: EngineManager, query: MultiDict[str]) -> list[Node]:
    """The nodes a pull/load/import goes to: those named by ``node`` and matching ``constraint``
    query parameters; every ready node when neither is given."""
    names = [n.strip() for v in query.getall("node", []) for n in v.split(",") if n.strip()]
    constraints = parse_constraints(query.getall("constraint", []))
    if names:
        nodes = []
        for ref in names:
            node = node_by_ref(m, ref)
            if node.Status.State != NodeState.READY:
                raise Unavailable(f"node {node_name(node)} is not ready ({node.Status.State})")
            if node not in nodes:
                nodes.append(node)
    else:
        nodes = engines.engine_nodes(m)
    nodes = [n for n in nodes if node_matches(constraints, n)]
    if not nodes:
        raise Unavailable("no ready node matches " + (", ".join(query.getall("constraint", [])) or "(no ready node)"))
    return sorted(nodes, key=node_name)


def _auth_headers(request: web.Request) -> dict[str, str]:
    return {h: request.headers[h] for h in PASS_REQUEST if h in request.headers and h != "Content-Type"}


async def _holders(m: EngineManager, ref: str) -> list[tuple[Node, dict[str, Any]]]:
    """The nodes whose engines have image ``ref``, with their inspect answers; 404 when none has it
    (the engine's own message), 503 when none has it and some did not answer."""
    hits: list[tuple[Node, dict[str, Any]]] = []
    missing: list[str] = []
    errors: list[str] = []
    for node, ans in await fan_out(m, "GET", f"/images/{quote(ref, safe='/:@')}/json"):
        if isinstance(ans, ShoalError):
            errors.append(f"{node_name(node)}: {ans.message}")
        elif ans.status == 200:
            hits.append((node, ans.json()))
        elif ans.status == 404:
            missing.append(ans.message)
        else:
            raise EngineError(ans.status, ans.message)
    if hits:
        return hits
    if missing:
        raise NotFound(missing[0])
    if errors:
        raise Unavailable(errors[0])
    raise NotFound(f"No such image: {ref}")


_INSPECT_404 = re.compile(r"^no such image: .*?: (No such image: .+)$")


async def _holder_nodes(m: EngineManager, ref: str) -> list[Node]:
    """The nodes that have the image ``ref`` (the same image, for an ID prefix). None: the 404
    that tag, rmi and history say on an engine (inspect's text has a prefix of its own)."""
    try:
        hits = await _holders(m, ref)
    except NotFound as e:
        plain = _INSPECT_404.match(e.message)
        raise NotFound(plain.group(1)) if plain else e from None
    chosen = pick_inspect(ref, [(node_name(n), d) for n, d in hits]) if _HEX_REF.match(ref) else None
    return [n for n, d in hits if chosen is None or d.get("Id") == chosen.get("Id")]


def _first_ready(m: EngineManager) -> Node:
    nodes = engines.engine_nodes(m)
    if not nodes:
        raise Unavailable("no ready node's engine to ask")
    return nodes[0]


async def _relay_to(request: web.Request, node: Node, target: str) -> web.StreamResponse:
    m = engines.manager(request)
    async with asyncio.timeout(CALL_TIMEOUT_S):
        pipe = await m.open_engine(node.ID)
    return await relay(request, pipe, target)


def _qs(request: web.Request) -> str:
    return f"?{request.query_string}" if request.query_string else ""


# --------------------------------------------------------------------------- list, inspect, history


async def list_images(request: web.Request) -> web.Response:
    """``GET /images/json``: every engine's answer to the same query, merged by image ID."""
    m = engines.manager(request)
    nodes, target = engines.list_query(request, "/images/json", IMAGE_FILTERS, ("all", "digests", "shared-size"))
    answers: list[tuple[str, list[dict[str, Any]]]] = []
    for node, ans in await fan_out(m, "GET", target, nodes=nodes):
        if isinstance(ans, ShoalError):
            continue  # a node that does not answer is left out, as classic Swarm left out unhealthy engines
        if ans.status != 200:
            raise EngineError(ans.status, ans.message)  # a bad filter value: every engine says the same
        answers.append((node_name(node), ans.json() or []))
    return json_response(merge_image_lists(answers))


async def inspect(request: web.Request) -> web.Response:
    """``GET /images/{name}/json``: a node's answer, with the nodes that have the same image."""
    m = engines.manager(request)
    ref = request.match_info["name"]
    hits = await _holders(m, ref)
    return json_response(pick_inspect(ref, [(node_name(n), d) for n, d in hits]))


async def history(request: web.Request) -> web.StreamResponse:
    """``GET /images/{name}/history``: from a node that has it (the layers are the image's own)."""
    m = engines.manager(request)
    ref = request.match_info["name"]
    node = (await _holder_nodes(m, ref))[0]
    return await _relay_to(request, node, f"/images/{quote(ref, safe='/:@')}/history{_qs(request)}")


# --------------------------------------------------------------------------- tag, remove, prune


async def tag(request: web.Request) -> web.Response:
    """``POST /images/{name}/tag``: on every node that has the image, so the new name means the
    same everywhere it can be run."""
    m = engines.manager(request)
    ref = request.match_info["name"]
    nodes = await _holder_nodes(m, ref)
    target = f"/images/{quote(ref, safe='/:@')}/tag{_qs(request)}"
    failures: list[tuple[str, EngineResponse | ShoalError]] = []
    done = 0
    for node, ans in await fan_out(m, "POST", target, nodes=nodes):
        if isinstance(ans, ShoalError) or ans.status != 201:
            failures.append((node_name(node), ans))
        else:
            done += 1
    if failures:
        raise _merged_failure(failures, done, "tagged")
    return web.Response(status=201)


def _merged_failure(failures: list[tuple[str, EngineResponse | ShoalError]], done: int, what: str) -> ShoalError:
    """One error for the nodes that failed (the engine's status; 503 for a node that did not
    answer), saying on how many others the call worked."""
    status = next((a.status for _, a in failures if isinstance(a, EngineResponse)), 503)
    if len(failures) == 1 and not done:
        ans = failures[0][1]
        return EngineError(status, ans.message)
    text = final_error([(n, a.message) for n, a in failures])
    if done:
        text += f" ({what} on {done} other node{'s' if done != 1 else ''})"
    return EngineError(status, text)


async def remove(request: web.Request) -> web.Response:
    """``DELETE /images/{name}``: on every node that has it; the untagged/deleted entries merged.
    A node's conflict (a container uses it; one ID with several tags) is passed on, 409, naming
    the node — after the nodes that could remove it did."""
    m = engines.manager(request)
    ref = request.match_info["name"]
    nodes = await _holder_nodes(m, ref)
    target = f"/images/{quote(ref, safe='/:@')}{_qs(request)}"
    removed: list[tuple[str, list[dict[str, str]]]] = []
    failures: list[tuple[str, EngineResponse | ShoalError]] = []
    for node, ans in await fan_out(m, "DELETE", target, nodes=nodes):
        if isinstance(ans, ShoalError) or ans.status != 200:
            failures.append((node_name(node), ans))
        else:
            removed.append((node_name(node), ans.json() or []))
    if failures:
        raise _merged_failure(failures, len(removed), "removed")
    return json_response(merge_removals(removed))


async def prune(request: web.Request) -> web.Response:
    """``POST /images/prune`` on every engine: what each removed (once) and the space, summed."""
    return await engines.prune(request, "/images", "ImagesDeleted")


# --------------------------------------------------------------------------- one node's answer


async def search(request: web.Request) -> web.StreamResponse:
    """``GET /images/search``: the first ready node's engine asks the registry (any engine's
    answer is the registry's)."""
    m = engines.manager(request)
    return await _relay_to(request, _first_ready(m), f"/images/search{_qs(request)}")


async def distribution(request: web.Request) -> web.Response:
    """``GET /distribution/{name}/json``: a ready node's engine asks the registry (with the
    client's ``X-Registry-Auth``); ``docker service create`` pins the digest from it. Bounded by
    the fan-out call's timeout: the CLI waits for it, and without it only warns and carries on."""
    m = engines.manager(request)
    name = request.match_info["name"]
    target = f"/distribution/{quote(name, safe='/:@')}/json{_qs(request)}"
    try:
        ans = await engine_call(m, _first_ready(m), "GET", target, headers=_auth_headers(request))
    except TimeoutError:
        raise Unavailable(f"the registry of {name} did not answer within {CALL_TIMEOUT_S:g}s") from None
    return web.Response(status=ans.status, body=ans.body, content_type="application/json")


async def registry_login(request: web.Request) -> web.StreamResponse:
    """``POST /auth`` (docker login): a ready node's engine checks the credentials with the
    registry; nothing is kept (the CLI keeps them and sends ``X-Registry-Auth`` with each call)."""
    m = engines.manager(request)
    return await _relay_to(request, _first_ready(m), "/auth")


async def push(request: web.Request) -> web.StreamResponse:
    """``POST /images/{name}/push``: from a node that has it (the registry gets it once)."""
    m = engines.manager(request)
    name = request.match_info["name"]
    tag = request.query.get("tag", "")
    if tag:  # the CLI sends the tag apart; no tag pushes every tag of the repository
        node = (await _holder_nodes(m, f"{name}@{tag}" if tag.startswith("sha256:") else f"{name}:{tag}"))[0]
    else:
        node = await _node_with_repository(m, name)
    return await _relay_to(request, node, f"/images/{quote(name, safe='/:@')}/push{_qs(request)}")


async def _node_with_repository(m: EngineManager, name: str) -> Node:
    """A node that has some tag of repository ``name`` (``docker push --all-tags``)."""
    query = urlencode({"filters": json.dumps({"reference": [name]})})
    for node, ans in await fan_out(m, "GET", f"/images/json?{query}"):
        if not isinstance(ans, ShoalError) and ans.status == 200 and ans.json():
            return node
    raise NotFound(f"An image does not exist locally with the tag: {name}")


async def save(request: web.Request) -> web.StreamResponse:
    """``GET /images/get?names=..`` and ``/images/{name}/get`` (docker save): the tar from one node
    that has every image named."""
    m = engines.manager(request)
    names = [request.match_info["name"]] if "name" in request.match_info else request.query.getall("names", [])
    if not names:
        raise InvalidArgument("no images named (names=...)")
    found = await asyncio.gather(*(_holder_nodes(m, n) for n in names))
    common = set.intersection(*({n.ID for n in nodes} for nodes in found))
    if not common:
        where = "; ".join(f"{name} on {', '.join(node_name(n) for n in nodes)}" for name, nodes in zip(names, found,
                                                                                                        strict=True))
        raise Conflict(f"no node has all of the images to save ({where}): save them one node at a time")
    node = next(n for n in found[0] if n.ID in common)
    one = request.match_info.get("name")
    target = f"/images/{quote(one, safe='/:@')}/get" if one else "/images/get"
    return await _relay_to(request, node, target + _qs(request))


async def commit(request: web.Request) -> web.StreamResponse:
    """``POST /commit?container=..``: on the container's node (the new image is made there)."""
    m = engines.manager(request)
    ref = request.query.get("container", "")
    if not ref:
        raise InvalidArgument("container is required (container=...)")
    at = await locate(request, "container", ref)
    query = [(k, at.id if k == "container" else v) for k, v in request.query.items()]
    pipe = await m.open_engine(at.node.ID)
    return await relay(request, pipe, "/commit?" + urlencode(query))


# --------------------------------------------------------------------------- pull, import, load (to many nodes)


class _Tee:
    """A request body sent to several engines at once: each gets every chunk through a queue of
    its own (bounded, so the slowest sets the pace); an engine that stopped reading is dropped."""

    def __init__(self, request: web.Request, count: int) -> None:
        self.request = request
        self.queues: list[asyncio.Queue[bytes | None]] = [asyncio.Queue(TEE_DEPTH) for _ in range(count)]
        self.dropped: set[int] = set()

    async def feed(self) -> None:
        try:
            async for data in self.request.content.iter_chunked(CHUNK):
                for i, q in enumerate(self.queues):
                    if i not in self.dropped:
                        await q.put(data)
        finally:
            for i, q in enumerate(self.queues):
                if i not in self.dropped:
                    await q.put(None)

    def drop(self, i: int) -> None:
        """Engine ``i`` answered (or failed) before reading everything: never wait for it again."""
        self.dropped.add(i)
        q = self.queues[i]
        while not q.empty():
            q.get_nowait()

    async def chunks(self, i: int) -> AsyncIterator[bytes]:
        while (data := await self.queues[i].get()) is not None:
            yield data


async def to_nodes(request: web.Request, nodes: list[Node], target: str, what: str) -> web.StreamResponse:
    """Send the request to every node in ``nodes`` at once and stream their JSON progress back,
    merged and prefixed with the node, then one error line naming the nodes that failed.

    When every node fails before its answer starts, the answer is an HTTP error (the engine's own
    status and text for one node), as one engine's would be."""
    m = engines.manager(request)
    headers = _auth_headers(request)
    if request.content_type:
        headers["Content-Type"] = request.content_type
    tee = _Tee(request, len(nodes)) if request.body_exists else None

    async def start(i: int, node: Node) -> EngineStream:
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                pipe = await m.open_engine(node.ID)
        except TimeoutError:
            raise Unavailable(f"node {node_name(node)}'s engine did not answer within {CALL_TIMEOUT_S:g}s") from None
        try:
            return await open_stream(pipe, "POST", target, headers=headers,
                                     body_chunks=tee.chunks(i) if tee is not None else None)
        finally:
            if tee is not None:
                tee.drop(i)

    feeder = asyncio.create_task(tee.feed()) if tee is not None else None
    try:
        heads = await asyncio.gather(*(start(i, n) for i, n in enumerate(nodes)), return_exceptions=True)
    finally:
        if feeder is not None:
            feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await feeder
    streams: list[tuple[str, EngineStream]] = []
    failures: list[tuple[str, str]] = []
    first_status = 0
    for node, head in zip(nodes, heads, strict=True):
        name = node_name(node)
        if isinstance(head, ShoalError):
            failures.append((name, head.message))
            first_status = first_status or head.status
        elif isinstance(head, BaseException):
            for other in heads:
                if isinstance(other, EngineStream):
                    other.close()
            raise head
        elif head.status != 200:
            body = await head.read()
            head.close()
            failures.append((name, EngineResponse(head.status, head.headers, body).message))
            first_status = first_status or head.status
        else:
            streams.append((name, head))
    if not streams:
        if len(failures) == 1:
            raise EngineError(first_status or 503, failures[0][1])
        raise EngineError(first_status or 503, final_error(failures))
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    await resp.prepare(request)
    out: asyncio.Queue[bytes | None] = asyncio.Queue(OUT_DEPTH)
    seen: set[str] = set()
    for name, why in failures:  # told now too, so a long pull elsewhere does not hide them
        await resp.write(json.dumps({"status": f"{name}: {what} failed: {why}"}).encode() + b"\r\n")

    async def pump(name: str, stream: EngineStream) -> None:
        buf = b""
        error = ""
        try:
            async for data in stream.chunks():
                msgs, buf = split_messages(buf + data)
                for msg in msgs:
                    if msg.get("error") or msg.get("errorDetail"):
                        error = error or str(msg.get("error") or (msg.get("errorDetail") or {}).get("message"))
                        continue
                    shown = node_message(name, msg, seen)
                    if shown is not None:
                        await out.put(json.dumps(shown).encode() + b"\r\n")
        except ShoalError as e:
            error = error or e.message
        finally:
            stream.close()
        if error:
            failures.append((name, error))
            await out.put(json.dumps({"status": f"{name}: {what} failed: {error}"}).encode() + b"\r\n")

    async def all_pumps() -> None:
        try:
            await asyncio.gather(*(pump(n, s) for n, s in streams))
        finally:
            await out.put(None)

    pumps = asyncio.create_task(all_pumps())
    try:
        while (line := await out.get()) is not None:
            await resp.write(line)
        await pumps
        if failures:
            await resp.write(_error_line(f"{what} failed on {len(failures)} of {len(nodes)} nodes: "
                                         + final_error(failures)))
    finally:
        if not pumps.done():
            pumps.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pumps
            for _, s in streams:
                s.close()
    await resp.write_eof()
    return resp


async def create(request: web.Request) -> web.StreamResponse:
    """``POST /images/create``: ``fromImage`` (docker pull) or ``fromSrc`` (docker import) on
    every ready node, or those named by ``node``/``constraint``."""
    m = engines.manager(request)
    q = request.query
    if not q.get("fromImage") and not q.get("fromSrc"):
        raise InvalidArgument("fromImage or fromSrc is required")
    nodes = chosen_nodes(m, q)
    query = [(k, v) for k, v in q.items() if k not in ("node", "constraint")]
    return await to_nodes(request, nodes, "/images/create?" + urlencode(query),
                          "pull" if q.get("fromImage") else "import")


async def load(request: web.Request) -> web.StreamResponse:
    """``POST /images/load`` (docker load): the tar to every ready node, or those named."""
    m = engines.manager(request)
    nodes = chosen_nodes(m, request.query)
    query = [(k, v) for k, v in request.query.items() if k not in ("node", "constraint")]
    return await to_nodes(request, nodes, "/images/load" + (f"?{urlencode(query)}" if query else ""), "load")


_NAME = "{name:.+}"
ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "/images/json", list_images),
    ("POST", "/images/create", create),
    ("POST", "/images/load", load),
    ("POST", "/images/prune", prune),
    ("GET", "/images/search", search),
    ("GET", "/images/get", save),
    ("GET", f"/images/{_NAME}/json", inspect),
    ("GET", f"/images/{_NAME}/history", history),
    ("GET", f"/images/{_NAME}/get", save),
    ("POST", f"/images/{_NAME}/tag", tag),
    ("POST", f"/images/{_NAME}/push", push),
    ("DELETE", f"/images/{_NAME}", remove),
    ("POST", "/commit", commit),
    ("POST", "/auth", registry_login),
    ("GET", f"/distribution/{_NAME}/json", distribution),
]
