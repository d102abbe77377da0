"""rng: random bytes over HTTP.

GET /<n> returns n random bytes (from os.urandom, at most 1 MiB). Each answer is held back by
DELAY seconds (default 0.1) to stand in for a costly service, which is what makes the demo worth
scaling. GET / says what this is; GET /healthz answers at once.
"""

import os
import signal
import socket
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DELAY = float(os.environ.get("DELAY", "0.1"))
MAX_BYTES = 1 << 20


class RngHandler(BaseHTTPRequestHandler):
    """GET /<n> -> n random bytes."""

    server_version = "rng/1"

    def do_GET(self) -> None:
        path = self.path.strip("/")
        if path == "healthz":
            self.reply(200, b"ok\n", "text/plain")
        elif path == "":
            self.reply(200, f"RNG running on {socket.gethostname()}\n".encode(), "text/plain")
        elif path.isdigit() and int(path) <= MAX_BYTES:
            time.sleep(DELAY)
            self.reply(200, os.urandom(int(path)), "application/octet-stream")
        else:
            self.reply(400, f"ask for /<n> with n <= {MAX_BYTES}\n".encode(), "text/plain")

    def log_message(self, format: str, *args: object) -> None:
        # One line per request would be most of the cluster's logs; errors still go to stderr.
        pass

    def reply(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = ThreadingHTTPServer(("", int(os.environ.get("PORT", "80"))), RngHandler)
    print(f"rng listening on {server.server_address}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
