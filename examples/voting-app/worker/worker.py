"""Worker: moves votes from redis into postgres.

It blocks on the redis list `votes` (BLPOP), and stores each vote in the table `votes`, one row
per voter, so a voter who votes again changes their row rather than adding one. Both redis and
postgres may start after the worker or restart under it: it reconnects, with a short pause, for
as long as it runs, and a vote taken off the list while the database is away is pushed back.

Settings (environment): REDIS_HOST (default "redis"), DB_HOST (default "db"), DB_USER, DB_PASSWORD,
DB_NAME (default "postgres").
"""

import json
import os
import signal
import sys
import time

import psycopg2
import redis

REDIS_HOST = os.environ.get("REDIS_HOST", "redis")
DB = {
    "host": os.environ.get("DB_HOST", "db"),
    "user": os.environ.get("DB_USER", "postgres"),
    "password": os.environ.get("DB_PASSWORD", "postgres"),
    "dbname": os.environ.get("DB_NAME", "postgres"),
    "connect_timeout": 5,
}
SCHEMA = "CREATE TABLE IF NOT EXISTS votes (id VARCHAR(255) PRIMARY KEY, vote VARCHAR(255) NOT NULL)"
UPSERT = "INSERT INTO votes (id, vote) VALUES (%s, %s) ON CONFLICT (id) DO UPDATE SET vote = EXCLUDED.vote"


def connect_db() -> "psycopg2.extensions.connection":
    """A connection with the schema in place, retried until the database answers."""
    while True:
        try:
            conn = psycopg2.connect(**DB)
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(SCHEMA)
            print(f"connected to db at {DB['host']}", flush=True)
            return conn
        except psycopg2.Error as err:
            print(f"waiting for db at {DB['host']}: {str(err).strip()}", flush=True)
            time.sleep(1)


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    queue = redis.Redis(host=REDIS_HOST, socket_timeout=10, socket_connect_timeout=5)
    conn = connect_db()
    print(f"watching redis at {REDIS_HOST} for votes", flush=True)
    while True:
        try:
            item = queue.blpop(["votes"], timeout=5)
        except redis.RedisError as err:
            print(f"waiting for redis at {REDIS_HOST}: {err}", flush=True)
            time.sleep(1)
            continue
        if item is None:
            continue
        raw = item[1]
        try:
            vote = json.loads(raw)
            voter, choice = str(vote["voter_id"]), str(vote["vote"])
        except (ValueError, KeyError, TypeError):
            print(f"dropping malformed vote {raw!r}", flush=True)
            continue
        try:
            with conn.cursor() as cur:
                cur.execute(UPSERT, (voter, choice))
            print(f"processed vote for {choice!r} by {voter}", flush=True)
        except psycopg2.Error as err:
            # Keep the vote: back on the front of the list, to be taken again once we reconnect.
            print(f"db error, vote kept: {str(err).strip()}", flush=True)
            queue.lpush("votes", raw)
            conn.close()
            conn = connect_db()


if __name__ == "__main__":
    main()
