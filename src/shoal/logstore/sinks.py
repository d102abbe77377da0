"""The sinks users add: Loki's push API, Elasticsearch's bulk API, files in a directory of their choice.

Encoders are pure functions (tested on their own); :class:`HttpSink` posts one batch at a time with
a short timeout and a few retries, then drops the batch (counted and logged): a receiver that is down
must cost the leader a bounded amount of memory, not all of it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import aiohttp
import msgspec

from shoal.dispatcher.protocol import LogRecord
from shoal.logstore.files import rfc3339
from shoal.models import LogSinkSpec

log = logging.getLogger(__name__)

LOKI_PATH = "/loki/api/v1/push"
BULK_PATH = "/_bulk"
DEFAULT_INDEX = "shoal-logs"
TIMEOUT_S = 10.0
RETRIES = 3
_json = msgspec.json.Encoder().encode


def loki_labels(r: LogRecord) -> dict[str, str]:
    """A Loki stream per (service, store, source, task, node): what ``{service="web"}`` selects on."""
    return {"job": "shoal", "service": r.service or r.service_id, "store": r.store, "source": r.source,
            "task": r.task_id, "node": r.node_id}


def loki_push(records: Sequence[LogRecord]) -> bytes:
    """Loki's JSON push body: streams with their labels, values as [ns timestamp string, line]."""
    streams: dict[tuple[tuple[str, str], ...], list[list[str]]] = {}
    for r in records:
        key = tuple(sorted(loki_labels(r).items()))
        # Microseconds, as the files keep them: a float of Unix seconds holds no more.
        streams.setdefault(key, []).append([str(round(r.time * 1e6) * 1000), r.line])
    return _json({"streams": [{"stream": dict(k), "values": v} for k, v in streams.items()]})


def es_bulk(records: Sequence[LogRecord], index: str = DEFAULT_INDEX) -> bytes:
    """Elasticsearch's bulk body (ndjson): an ``index`` action and an ECS-ish document per line."""
    action = _json({"index": {"_index": index}})
    out: list[bytes] = []
    for r in records:
        out.append(action)
        out.append(_json({"@timestamp": rfc3339(r.time), "message": r.line, "service": r.service,
                          "service_id": r.service_id, "task": r.task_id, "node": r.node_id,
                          "store": r.store, "source": r.source}))
    return b"\n".join(out) + b"\n"


def push_url(spec: LogSinkSpec) -> str:
    """Where a batch goes: the URL as given if it already names the API path, else base + path."""
    path = LOKI_PATH if spec.Type == "loki" else BULK_PATH
    base = spec.URL.rstrip("/")
    return base if base.endswith(path) else base + path


class HttpSink:
    """Posts batches to one Loki or Elasticsearch endpoint."""

    def __init__(self, spec: LogSinkSpec, session: aiohttp.ClientSession) -> None:
        self.spec = spec
        self.url = push_url(spec)
        self.session = session
        self.sent = 0
        self.dropped = 0

    def encode(self, records: Sequence[LogRecord]) -> tuple[bytes, str]:
        if self.spec.Type == "loki":
            return loki_push(records), "application/json"
        return es_bulk(records, self.spec.Index or DEFAULT_INDEX), "application/x-ndjson"

    async def send(self, records: Sequence[LogRecord]) -> bool:
        body, ctype = self.encode(records)
        delay = 0.5
        err = ""
        for attempt in range(RETRIES):
            try:
                async with self.session.post(self.url, data=body, headers={"Content-Type": ctype},
                                             timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)) as resp:
                    text = await resp.text()
                    if resp.status < 300 and not self._bulk_errors(text):
                        self.sent += len(records)
                        return True
                    err = f"{resp.status}: {text[:200]}"
                    if 400 <= resp.status < 500 and resp.status != 429:
                        break  # the receiver refuses this batch: sending it again changes nothing
            except (aiohttp.ClientError, TimeoutError) as e:
                err = str(e) or type(e).__name__
            if attempt + 1 < RETRIES:
                await asyncio.sleep(delay)
                delay *= 2
        self.dropped += len(records)
        log.warning("log sink %s: %d line(s) dropped: %s", self.spec.Name, len(records), err)
        return False

    def _bulk_errors(self, text: str) -> bool:
        """Elasticsearch answers 200 to a bulk request whose items failed: ``"errors": true``."""
        if self.spec.Type != "elasticsearch":
            return False
        try:
            body: Any = msgspec.json.decode(text)
        except msgspec.DecodeError:
            return False
        return isinstance(body, dict) and bool(body.get("errors"))
