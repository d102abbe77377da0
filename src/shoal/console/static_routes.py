"""``GET /console/`` and ``GET /console/static/{path}``: the console's files, from ``static/``.

The files hold no cluster data (everything the UI shows comes from the API, authenticated per
request), so they are served to anyone who reached the listener: a browser without a session gets
the page, whose script then says how to log in (``shoal console --url``). Files are read once and
kept in memory with a content hash: the UI is a few tens of KiB, and an ETag lets a browser
revalidate with a 304 instead of downloading it again.
"""

from __future__ import annotations

import hashlib
import mimetypes
from pathlib import Path
from typing import Any

from aiohttp import web

STATIC = Path(__file__).resolve().parent / "static"

_TYPES = {
    ".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css",
    ".svg": "image/svg+xml", ".png": "image/png", ".ico": "image/x-icon", ".json": "application/json",
    ".txt": "text/plain",
}
_TEXT = ("text/", "application/json", "image/svg+xml")
# The page may load only its own files and talk only to its own origin (no CDN, no inline script),
# so a string that escaped the UI's textContent discipline still could not run.
_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


class _File:
    __slots__ = ("body", "etag", "type")

    def __init__(self, body: bytes, content_type: str) -> None:
        self.body = body
        self.type = content_type
        self.etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


_cache: dict[Path, tuple[float, _File]] = {}


def _resolve(rel: str) -> Path:
    """The file ``rel`` names inside STATIC, or 404: no ``..``, no absolute path, no symlink out."""
    if not rel or "\\" in rel or "\0" in rel or rel.startswith("/"):
        raise web.HTTPNotFound()
    parts = rel.split("/")
    if any(p in ("", ".", "..") or p.startswith(".") for p in parts):
        raise web.HTTPNotFound()
    path = (STATIC / rel).resolve()
    if not path.is_relative_to(STATIC) or not path.is_file():
        raise web.HTTPNotFound()
    return path


def _load(path: Path) -> _File:
    mtime = path.stat().st_mtime
    hit = _cache.get(path)
    if hit is not None and hit[0] == mtime:
        return hit[1]
    ctype = _TYPES.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    f = _File(path.read_bytes(), ctype)
    _cache[path] = (mtime, f)
    return f


def _serve(request: web.Request, f: _File, cache: str) -> web.Response:
    headers = {"ETag": f.etag, "Cache-Control": cache, "X-Content-Type-Options": "nosniff",
               "Content-Security-Policy": _CSP, "Referrer-Policy": "no-referrer"}
    if f.etag in [t.strip() for t in request.headers.get("If-None-Match", "").split(",")]:
        return web.Response(status=304, headers=headers)
    charset = "utf-8" if f.type.startswith(_TEXT) else None
    return web.Response(body=f.body, content_type=f.type, charset=charset, headers=headers)


async def index(request: web.Request) -> web.Response:
    """The page: always revalidated, so a daemon upgrade reaches the browser at once."""
    return _serve(request, _load(_resolve("index.html")), "no-cache")


async def static(request: web.Request) -> web.Response:
    """A file of the UI. Revalidated too (``no-cache`` + ETag): module URLs carry no hash, and a
    304 costs one round trip on loopback or a LAN."""
    return _serve(request, _load(_resolve(request.match_info["path"])), "no-cache")


async def redirect(request: web.Request) -> web.Response:
    return web.Response(status=302, headers={"Location": "/console/"})  # not raised: the API's error
    # middleware turns raised HTTP exceptions into JSON


ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "/console", redirect),
    ("GET", "/console/", index),
    ("GET", "/console/static/{path:.+}", static),
]


def install(app: web.Application) -> web.Application:
    """Add the console's page and files to the API's ``app`` (a browser's paths: no version prefix).
    The console sits above the API, so the daemon installs it; api/auth.py's RULES name the routes."""
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)
    return app
