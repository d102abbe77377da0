"""webui: the DockerCoins dashboard.

GET /json returns {"hashes": n, "coins": n, "rate": hashes per second, "now": unix time}; GET /
is a page that polls /json every second and shows the same. A sampler thread reads the `hashes`
counter from redis once a second and keeps the last ten readings, so the rate is the mining
speed of the whole cluster over ~10 s, whichever webui replica is asked.

Settings (environment): REDIS_HOST (default "redis"), PORT (default 80), VERSION (set at image
build time; shown in the page's title).
"""

import collections
import json
import os
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import redis

REDIS_HOST = os.environ.get("REDIS_HOST", "redis")
VERSION = os.environ.get("VERSION", "1")
store = redis.Redis(host=REDIS_HOST, socket_timeout=5, socket_connect_timeout=5)
samples: collections.deque[tuple[float, int]] = collections.deque(maxlen=10)

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>DockerCoin Miner WebUI (v{version})</title></head>
<body style="font-family: sans-serif; text-align: center">
<h1>DockerCoin Miner (v{version})</h1>
<p style="font-size: 2em"><span id="rate">?</span> hashes/second</p>
<p><span id="hashes">?</span> hashes, <span id="coins">?</span> DockerCoins mined</p>
<p><small>Served by {host}</small></p>
<script>
async function refresh() {{
  try {{
    const s = await (await fetch("json")).json();
    for (const k of ["hashes", "coins"]) document.getElementById(k).textContent = s[k];
    document.getElementById("rate").textContent = s.rate.toFixed(2);
  }} catch (e) {{ document.getElementById("rate").textContent = "?"; }}
}}
refresh(); setInterval(refresh, 1000);
</script>
</body></html>
"""


def sample_forever() -> None:
    """Read the counter once a second; a redis that is away just leaves a gap."""
    while True:
        try:
            samples.append((time.time(), int(store.get("hashes") or 0)))
        except redis.RedisError as err:
            print(f"webui: cannot read redis at {REDIS_HOST}: {err}", flush=True)
        time.sleep(1)


def status() -> dict[str, float | int]:
    hashes = int(store.get("hashes") or 0)
    coins = int(store.hlen("wallet"))
    window = list(samples)
    rate = 0.0
    if len(window) >= 2 and window[-1][0] > window[0][0]:
        rate = (window[-1][1] - window[0][1]) / (window[-1][0] - window[0][0])
    return {"hashes": hashes, "coins": coins, "rate": round(rate, 3), "now": time.time()}


class WebUIHandler(BaseHTTPRequestHandler):
    """Serves the page and its JSON."""

    server_version = "webui/" + VERSION

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self.reply(200, b"ok\n", "text/plain")
        elif self.path == "/json":
            try:
                body = json.dumps(status()).encode() + b"\n"
            except redis.RedisError as err:
                self.reply(503, f"redis unavailable: {err}\n".encode(), "text/plain")
                return
            self.reply(200, body, "application/json")
        elif self.path in ("/", "/index.html"):
            page = PAGE.format(version=VERSION, host=socket.gethostname())
            self.reply(200, page.encode(), "text/html; charset=utf-8")
        else:
            self.reply(404, b"not found\n", "text/plain")

    def log_message(self, format: str, *args: object) -> None:
        # The page polls every second: log only what is not the poll or a health probe.
        if self.path not in ("/json", "/healthz"):
            super().log_message(format, *args)

    def reply(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    threading.Thread(target=sample_forever, name="sampler", daemon=True).start()
    server = ThreadingHTTPServer(("", int(os.environ.get("PORT", "80"))), WebUIHandler)
    print(f"webui v{VERSION} listening on {server.server_address}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
