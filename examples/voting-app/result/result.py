"""Result: the counts of the voting app, read from postgres.

GET / is an HTML page with the votes for each option (it refreshes itself every few seconds);
GET /json is the same as {"a": n, "b": n, "total": n, "options": {...}}; GET /healthz answers
without touching the database. Each request opens a fresh connection, so a database that starts
late or restarts shows up as a 503 for a while, never as a stuck process.

Settings (environment): DB_HOST (default "db"), DB_USER, DB_PASSWORD, DB_NAME, OPTION_A /
OPTION_B (labels only), PORT (default 80).
"""

import html
import json
import os
import signal
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg2

OPTION_A = os.environ.get("OPTION_A", "Cats")
OPTION_B = os.environ.get("OPTION_B", "Dogs")
DB = {
    "host": os.environ.get("DB_HOST", "db"),
    "user": os.environ.get("DB_USER", "postgres"),
    "password": os.environ.get("DB_PASSWORD", "postgres"),
    "dbname": os.environ.get("DB_NAME", "postgres"),
    "connect_timeout": 5,
}

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="3"><title>Results</title></head>
<body style="font-family: sans-serif; text-align: center">
<h1>{a_name}: {a} &mdash; {b_name}: {b}</h1>
<p>{total} vote(s)</p>
<p><small>Served by {host}</small></p>
</body></html>
"""


def counts() -> dict[str, object]:
    """The tally from the votes table; no table yet (the worker creates it) means no votes."""
    tally = {"a": 0, "b": 0}
    conn = psycopg2.connect(**DB)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass('votes') IS NOT NULL")
            if cur.fetchone()[0]:
                cur.execute("SELECT vote, COUNT(id) FROM votes GROUP BY vote")
                for vote, n in cur.fetchall():
                    tally[vote] = int(n)
    finally:
        conn.close()
    return {"a": tally["a"], "b": tally["b"], "total": sum(tally.values()),
            "options": {"a": OPTION_A, "b": OPTION_B}}


class ResultHandler(BaseHTTPRequestHandler):
    """Serves the tally as a page and as JSON."""

    server_version = "result/1"

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self.reply(200, b"ok\n", "text/plain")
            return
        if self.path not in ("/", "/json"):
            self.reply(404, b"not found\n", "text/plain")
            return
        try:
            tally = counts()
        except psycopg2.Error as err:
            self.reply(503, f"database unavailable: {str(err).strip()}\n".encode(), "text/plain")
            return
        if self.path == "/json":
            self.reply(200, json.dumps(tally).encode() + b"\n", "application/json")
        else:
            body = PAGE.format(a_name=html.escape(OPTION_A), b_name=html.escape(OPTION_B),
                               a=tally["a"], b=tally["b"], total=tally["total"],
                               host=socket.gethostname())
            self.reply(200, body.encode(), "text/html; charset=utf-8")

    def log_message(self, format: str, *args: object) -> None:
        if not self.path.startswith("/healthz"):
            super().log_message(format, *args)

    def reply(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = ThreadingHTTPServer(("", int(os.environ.get("PORT", "80"))), ResultHandler)
    print(f"result listening on {server.server_address}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
