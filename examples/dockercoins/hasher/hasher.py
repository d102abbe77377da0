"""hasher: SHA-256 over HTTP.

POST / with any body returns the body's SHA-256 as hex (text/plain). Like rng, each answer waits
DELAY seconds (default 0.1) to stand in for real work. GET / says what this is; GET /healthz
answers at once.
"""

import hashlib
import os
import signal
import socket
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DELAY = float(os.environ.get("DELAY", "0.1"))
MAX_BODY = 1 << 20


class HasherHandler(BaseHTTPRequestHandler):
    """POST body -> hex digest."""

    server_version = "hasher/1"

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self.reply(413, b"body too large\n")
            return
        body = self.rfile.read(length)
        time.sleep(DELAY)
        self.reply(200, hashlib.sha256(body).hexdigest().encode())

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self.reply(200, b"ok\n")
        else:
            self.reply(200, f"HASHER running on {socket.gethostname()}\n".encode())

    def log_message(self, format: str, *args: object) -> None:
        pass

    def reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = ThreadingHTTPServer(("", int(os.environ.get("PORT", "80"))), HasherHandler)
    print(f"hasher listening on {server.server_address}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
