"""Vote: the front page of the voting app.

GET / shows a form with two options; POST / records the choice by pushing a JSON message onto
the redis list `votes`, where the worker picks it up. A voter is identified by a cookie, so voting
again changes that voter's vote instead of adding one. The page names the container that served
it, which makes a service's load balancing visible. GET /healthz answers without touching redis.

Settings (environment): REDIS_HOST (default "redis"), OPTION_A / OPTION_B, PORT (default 80),
VERSION (set at image build time; version 2 has a different title, for rolling-update demos).
"""

import html
import json
import os
import secrets
import signal
import socket
import sys
import urllib.parse
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import redis

OPTION_A = os.environ.get("OPTION_A", "Cats")
OPTION_B = os.environ.get("OPTION_B", "Dogs")
VERSION = os.environ.get("VERSION", "1")
TITLE = f"{OPTION_A} vs {OPTION_B}" if VERSION == "1" else f"{OPTION_A} or {OPTION_B}? (v{VERSION})"
HOSTNAME = socket.gethostname()

# One client per process: redis-py pools connections and reconnects by itself, so a redis that
# starts after us (or restarts) only fails the votes cast while it is away.
store = redis.Redis(host=os.environ.get("REDIS_HOST", "redis"), socket_timeout=5,
                    socket_connect_timeout=5)

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title></head>
<body style="font-family: sans-serif; text-align: center">
<h1>{title}</h1>
<form method="post" action="/">
  <button name="vote" value="a" style="font-size: 2em">{a}</button>
  <button name="vote" value="b" style="font-size: 2em">{b}</button>
</form>
<p>{message}</p>
<p><small>Processed by container ID {host} (version {version})</small></p>
</body></html>
"""


class VoteHandler(BaseHTTPRequestHandler):
    """Serves the form and turns each POST into one message on the `votes` list."""

    server_version = "vote/" + VERSION

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self.reply(200, b"ok\n", "text/plain")
        elif self.path == "/":
            self.page("", self.voter_id()[0])
        else:
            self.reply(404, b"not found\n", "text/plain")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        form = urllib.parse.parse_qs(self.rfile.read(length).decode("utf-8", "replace"))
        choice = (form.get("vote") or [""])[0]
        voter, _ = self.voter_id()
        if choice not in ("a", "b"):
            self.reply(400, b"vote must be a or b\n", "text/plain")
            return
        try:
            store.rpush("votes", json.dumps({"voter_id": voter, "vote": choice}))
        except redis.RedisError as err:
            self.reply(503, f"cannot record the vote: {err}\n".encode(), "text/plain")
            return
        name = OPTION_A if choice == "a" else OPTION_B
        self.page(f"You voted for {html.escape(name)}.", voter)

    def log_message(self, format: str, *args: object) -> None:
        # Health probes every few seconds would drown the votes in the log.
        if not self.path.startswith("/healthz"):
            super().log_message(format, *args)

    def voter_id(self) -> tuple[str, bool]:
        """The voter's cookie, or a fresh one (and True) for a first visit."""
        cookie = SimpleCookie(self.headers.get("Cookie") or "")
        if "voter_id" in cookie:
            return cookie["voter_id"].value, False
        return secrets.token_hex(8), True

    def page(self, message: str, voter: str) -> None:
        body = PAGE.format(title=html.escape(TITLE), a=html.escape(OPTION_A),
                           b=html.escape(OPTION_B), message=message, host=HOSTNAME,
                           version=VERSION).encode()
        self.reply(200, body, "text/html; charset=utf-8", {"Set-Cookie": f"voter_id={voter}"})

    def reply(self, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)


def main() -> None:
    # As PID 1 we get no default SIGTERM action: exit at once so `docker stop` is quick.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = ThreadingHTTPServer(("", int(os.environ.get("PORT", "80"))), VoteHandler)
    print(f"vote v{VERSION} listening on {server.server_address}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
