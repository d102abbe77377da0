"""worker: mines DockerCoins.

Forever: GET 32 random bytes from rng, POST them to hasher, INCR the redis counter `hashes`, and
when the hash starts with "0", record a coin in the redis hash `wallet` (hash -> the random
bytes). Every REPORT seconds (default 5) it logs its own rate. Each request resolves the service
names again, so scaling rng or hasher spreads the load; any of the three may be away for a while:
the worker logs it, waits a second and goes on.

Settings (environment): RNG_URL (default http://rng), HASHER_URL (default http://hasher),
REDIS_HOST (default "redis"), REPORT, VERSION (set at image build time; shown in the log).
"""

import os
import signal
import socket
import sys
import time
import urllib.error
import urllib.request

import redis

RNG_URL = os.environ.get("RNG_URL", "http://rng")
HASHER_URL = os.environ.get("HASHER_URL", "http://hasher")
REDIS_HOST = os.environ.get("REDIS_HOST", "redis")
REPORT = float(os.environ.get("REPORT", "5"))
VERSION = os.environ.get("VERSION", "1")


def get_random_bytes() -> bytes:
    with urllib.request.urlopen(f"{RNG_URL}/32", timeout=10) as reply:
        return reply.read()


def hash_bytes(data: bytes) -> str:
    request = urllib.request.Request(HASHER_URL, data=data, method="POST",
                                     headers={"Content-Type": "application/octet-stream"})
    with urllib.request.urlopen(request, timeout=10) as reply:
        return reply.read().decode().strip()


def work_once(store: redis.Redis) -> bool:
    """One unit of work; True if it found a coin."""
    data = get_random_bytes()
    digest = hash_bytes(data)
    store.incr("hashes")
    if digest.startswith("0"):
        store.hset("wallet", digest, data.hex())
        return True
    return False


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    store = redis.Redis(host=REDIS_HOST, socket_timeout=10, socket_connect_timeout=5)
    print(f"worker v{VERSION} on {socket.gethostname()}: rng={RNG_URL} hasher={HASHER_URL} "
          f"redis={REDIS_HOST}", flush=True)
    done = coins = 0
    since = time.monotonic()
    while True:
        try:
            coins += work_once(store)
            done += 1
        except (OSError, urllib.error.URLError, redis.RedisError) as err:
            print(f"worker v{VERSION}: {type(err).__name__}: {err}; retrying", flush=True)
            time.sleep(1)
        elapsed = time.monotonic() - since
        if elapsed >= REPORT:
            print(f"worker v{VERSION}: {done} hashes in {elapsed:.1f}s "
                  f"({done / elapsed:.2f}/s), {coins} coin(s)", flush=True)
            done = coins = 0
            since = time.monotonic()


if __name__ == "__main__":
    main()
