"""Reading the engine's container log stream: demultiplexing and splitting into timestamped lines.

Without a TTY the engine multiplexes stdout and stderr into frames (8-byte header: stream, 3 zero
bytes, big-endian length). With a TTY there is one raw stream. We always ask for timestamps, so every
line starts with an RFC 3339 timestamp and a space; that is how ``since`` is honoured and how each
:class:`LogMessage` gets its time.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator

import aiohttp

_HEADER = struct.Struct(">BxxxL")


async def _frames(content: aiohttp.StreamReader) -> AsyncIterator[tuple[int, bytes]]:
    while True:
        try:
            header = await content.readexactly(_HEADER.size)
        except asyncio.IncompleteReadError:
            return
        stream, length = _HEADER.unpack(header)
        if length:
            yield stream, await content.readexactly(length)


def _split_ts(message: bytes) -> tuple[str, bytes]:
    ts, _, rest = message.partition(b" ")
    return ts.decode("ascii", "replace"), rest


async def log_lines(content: aiohttp.StreamReader, tty: bool) -> AsyncIterator[tuple[int, str, bytes]]:
    """``(stream, timestamp, line)``; a line keeps its newline.

    Multiplexed: one frame is one log message with its own timestamp; a line longer than the log
    driver's buffer (16 KiB) comes as several messages, joined here under the first one's timestamp.
    TTY: a raw byte stream, so it is cut at newlines first, then each line loses its timestamp.
    """
    if tty:
        rest = b""
        async for chunk in content.iter_any():
            *lines, rest = (rest + chunk).split(b"\n")
            for line in lines:
                ts, data = _split_ts(line)
                yield 1, ts, data + b"\n"
        if rest:
            yield (1, *_split_ts(rest))
        return
    partial: dict[int, tuple[str, bytes]] = {}
    async for stream, frame in _frames(content):
        ts, data = _split_ts(frame)
        if stream in partial:
            first_ts, head = partial.pop(stream)
            ts, data = first_ts, head + data
        if data.endswith(b"\n"):
            yield stream, ts, data
        else:
            partial[stream] = (ts, data)
    for stream, (ts, data) in partial.items():
        yield stream, ts, data
