"""``shoal console``: the web console on 127.0.0.1, logged in as this CLI's user, as Jupyter does.

A browser cannot use the CLI's way in: the daemon's unix socket, or a TLS client certificate that
``--tlsverify`` asks for. So this command serves a local port that proxies every request to the
daemon the CLI is configured for (``-H``, ``$SHOAL_TOKEN``, the TLS flags), and guards that port with
its own one-time token (printed in the URL) swapped for a cookie of this port; other local users and
other sites' pages get nothing. The browser's own cookies and credentials never reach the daemon.
Responses are passed on as they arrive, so log follows, ``/events`` and the console's event stream
are live through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import signal
import ssl
import sys
import webbrowser
from typing import Annotated
from urllib.parse import urlsplit

import aiohttp
import typer
from aiohttp import web

from shoal.api.auth import CONSOLE_HEADER
from shoal.cli.client import Client, CLIError, TLSSettings, client_of
from shoal.console.sessions import Sessions
from shoal.controlapi.users import Identity

# Not forwarded either way: they describe one connection, or they are the browser's credentials
# for this local port (the daemon gets the CLI's).
_HOP = frozenset(h.lower() for h in ("Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE",
                                     "Trailer", "Transfer-Encoding", "Upgrade", "Host", "Content-Length", "Cookie",
                                     "Authorization", "Set-Cookie"))
_READS = frozenset({"GET", "HEAD", "OPTIONS"})
_UNAUTHORIZED_PAGE = (b"<!doctype html><meta charset=utf-8><title>Shoal console</title><p>Open the console with the "
                      b"URL <code>shoal console</code> printed (its login link works once).</p>")


class Upstream:
    """How to reach the daemon: a base URL and an aiohttp connector (unix socket or TCP/TLS)."""

    def __init__(self, client: Client) -> None:
        self.host = client.host
        self.token = client.token
        tls = client.tls
        parts = urlsplit(self.host)
        self.ssl: ssl.SSLContext | bool = False
        if parts.scheme == "unix":
            self.socket_path: str | None = parts.path
            self.base = "http://localhost"
        elif parts.scheme in ("tcp", "http", "https"):
            self.socket_path = None
            secure = parts.scheme == "https" or (tls is not None and tls.enabled)
            self.base = f"{'https' if secure else 'http'}://{parts.netloc}"
            if secure:
                self.ssl = _ssl_context(tls)
        else:
            raise CLIError(f"shoal console: cannot proxy to {self.host}: use a unix:// or tcp:// daemon address", 2)

    def session(self) -> aiohttp.ClientSession:
        connector: aiohttp.BaseConnector = (aiohttp.UnixConnector(path=self.socket_path) if self.socket_path
                                            else aiohttp.TCPConnector(ssl=self.ssl))
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        # No total timeout: a log follow or an event stream lasts as long as the browser keeps it.
        return aiohttp.ClientSession(connector=connector, headers=headers, auto_decompress=False,
                                     timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))


def _ssl_context(tls: TLSSettings | None) -> ssl.SSLContext:
    verify = tls is not None and tls.verify
    cacert, cert, key = (tls.cacert, tls.cert, tls.key) if tls is not None else (None, None, None)
    try:
        if verify:
            ctx = ssl.create_default_context(cafile=cacert) if cacert else ssl.create_default_context()
        else:  # --tls without --tlsverify: encrypted, the daemon not checked (the docker CLI's meaning)
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if cert and key:
            ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as e:
        raise CLIError(f"shoal console: invalid TLS settings: {e}", 2) from None
    return ctx


class LocalConsole:
    """The local server: its login, its cookie check, and the proxy."""

    def __init__(self, upstream: Upstream, port: int) -> None:
        self.upstream = upstream
        self.port = port
        self.sessions = Sessions()
        self.cookie_name = "shoal_console_local"  # named per port once the port is known (cookies ignore ports)
        self.http: aiohttp.ClientSession | None = None
        self.runner: web.AppRunner | None = None

    def login_url(self) -> str:
        token = self.sessions.mint(Identity(name="cli", role="admin", via="console"), None)
        return f"http://127.0.0.1:{self.port}/console/login?token={token}"

    async def login(self, request: web.Request) -> web.Response:
        cookie = self.sessions.redeem(request.query.get("token", ""))
        if cookie is None:
            return web.Response(status=401, body=_UNAUTHORIZED_PAGE, content_type="text/html")
        resp = web.Response(status=303, headers={"Location": "/console/", "Cache-Control": "no-store",
                                                 "Referrer-Policy": "no-referrer"})
        resp.set_cookie(self.cookie_name, cookie, path="/", httponly=True, samesite="Strict")
        return resp

    async def proxy(self, request: web.Request) -> web.StreamResponse:
        cookie = request.cookies.get(self.cookie_name, "")
        if not cookie or self.sessions.identity(cookie, None) is None:
            if request.path.startswith("/console"):
                return web.Response(status=401, body=_UNAUTHORIZED_PAGE, content_type="text/html")
            return web.json_response({"message": "not logged in to this console: open the URL 'shoal console' "
                                                 "printed"}, status=401)
        if request.method not in _READS and request.headers.get(CONSOLE_HEADER) != "1":
            return web.json_response({"message": f"a console write must carry the header '{CONSOLE_HEADER}: 1'"},
                                     status=403)
        assert self.http is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        body = await request.read() if request.body_exists else None
        try:
            upstream = await self.http.request(request.method, self.upstream.base + request.rel_url.path_qs,
                                               headers=headers, data=body, allow_redirects=False)
        except (aiohttp.ClientError, OSError) as e:
            return web.json_response({"message": f"cannot reach the Shoal daemon at {self.upstream.host}: {e}"},
                                     status=502)
        try:
            resp = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for k, v in upstream.headers.items():
                if k.lower() not in _HOP:
                    resp.headers.add(k, v)
            await resp.prepare(request)
            # As it arrives, chunk by chunk: streams (logs --follow, events, SSE) stay live.
            async for chunk in upstream.content.iter_any():
                await resp.write(chunk)
            await resp.write_eof()
            return resp
        except (ConnectionResetError, aiohttp.ClientError):
            return resp  # one side went away: the other is closed with it
        finally:
            upstream.release()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024**2)
        app.router.add_get("/console/login", self.login)
        app.router.add_route("*", "/{tail:.*}", self.proxy)
        return app

    async def start(self) -> None:
        self.http = self.upstream.session()
        try:
            async with self.http.get(self.upstream.base + "/_ping") as r:
                if r.status != 200:
                    raise CLIError(f"shoal console: the daemon at {self.upstream.host} answered {r.status} to a ping")
        except (aiohttp.ClientError, OSError):
            await self.http.close()
            raise CLIError(f"Cannot connect to the Shoal daemon at {self.upstream.host}. Is the daemon running?") \
                from None
        self.runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=1.0)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", self.port)
        try:
            await site.start()
        except OSError as e:
            await self.stop()
            if e.errno == errno.EADDRINUSE:
                raise CLIError(f"shoal console: port {self.port} on 127.0.0.1 is taken; pick another with --port") \
                    from None
            raise CLIError(f"shoal console: cannot listen on 127.0.0.1:{self.port}: {e.strerror}") from None
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = sockets[0].getsockname()[1]
        self.cookie_name = f"shoal_console_{self.port}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        if self.http is not None:
            await self.http.close()


async def _serve(c: Client, port: int, url_only: bool, browser: bool) -> None:
    local = LocalConsole(Upstream(c), port)
    await local.start()
    try:
        url = local.login_url()
        if url_only:
            print(url, flush=True)
        else:
            print(f"The Shoal console of {c.host}, on this machine only:\n\n    {url}\n\n"
                  "The link logs one browser in, once. Press Ctrl-C to stop.", flush=True)
            if browser:
                with contextlib.suppress(Exception):
                    webbrowser.open(url)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await local.stop()


def console(
    ctx: typer.Context,
    url: Annotated[bool, typer.Option("--url", help="Print only the URL (for scripts), and serve")] = False,
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Local port (default: any free one)")] = 0,
    no_browser: Annotated[bool, typer.Option("--no-browser", help="Do not open a browser")] = False,
) -> None:
    """Serve the web console on 127.0.0.1, logged in as this CLI's user (a one-time link)."""
    c = client_of(ctx)
    try:
        asyncio.run(_serve(c, port, url, browser=not (url or no_browser)))
    except KeyboardInterrupt:
        pass
    sys.stdout.flush()
