"""One haproxy, run in master-worker mode and reloaded in place.

Why master-worker (``-W``): a reload is a SIGUSR2 to the master, which starts a worker on the new
config and tells the old one to finish its connections (soft stop, bounded by ``hard-stop-after``);
with ``expose-fd listeners`` on the stats socket the new worker takes the listening sockets over
from the old one, so no connection is refused while reloading and none in flight is cut.
A config is checked (``haproxy -c``) before it replaces the running one: a bad one is logged and
the old config keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
from pathlib import Path

log = logging.getLogger(__name__)

STOP_GRACE_S = 5.0


class HaproxyMissing(RuntimeError):
    pass


def find_binary() -> str:
    path = os.environ.get("SHOAL_HAPROXY") or shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if os.access("/usr/sbin/haproxy", os.X_OK) else "")
    if not path:
        raise HaproxyMissing("haproxy is not installed (Debian: apt-get install haproxy; scripts/install-deps.sh)")
    return path


class Haproxy:
    """The process and its files under ``workdir`` (haproxy.cfg, admin.sock, haproxy.log)."""

    def __init__(self, workdir: Path, binary: str | None = None) -> None:
        self.workdir = workdir
        self.binary = binary
        self.cfg = workdir / "haproxy.cfg"
        self.admin_socket = workdir / "admin.sock"
        self.pidfile = workdir / "haproxy.pid"
        self.proc: asyncio.subprocess.Process | None = None
        self.reloads = 0

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def check(self, path: Path) -> str | None:
        """haproxy's own verdict on a config file: None if valid, else its message."""
        proc = await asyncio.create_subprocess_exec(
            self._bin(), "-c", "-q", "-f", str(path),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        return None if proc.returncode == 0 else out.decode(errors="replace").strip()

    async def apply(self, text: str) -> bool:
        """Make haproxy run ``text``: start it, or reload it. False (logged) if haproxy refused it."""
        self.workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
        new = self.cfg.with_suffix(".new")
        new.write_text(text)
        why = await self.check(new)
        if why is not None:
            log.error("haproxy refused the load balancers' config, keeping the running one: %s", why)
            return False
        os.replace(new, self.cfg)
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGUSR2)
            self.reloads += 1
            log.info("load balancers: haproxy reloaded (pid %d)", self.proc.pid)
        else:
            await self._start()
        return True

    async def _start(self) -> None:
        await self._stop_leftover()
        err = await asyncio.to_thread(open, self.workdir / "haproxy.log", "ab")
        with err:
            # -W master-worker, -db: stay in the foreground (our child, so we see it exit); -p: the
            # master's PID, so a daemon killed without stopping it finds it at its next start.
            self.proc = await asyncio.create_subprocess_exec(
                self._bin(), "-W", "-db", "-p", str(self.pidfile), "-f", str(self.cfg),
                stdin=asyncio.subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True)
        log.info("load balancers: haproxy started (pid %d, config %s)", self.proc.pid, self.cfg)

    async def stop(self) -> None:
        """Stop the master and its workers (only the process we started)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), STOP_GRACE_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        log.info("load balancers: haproxy stopped")

    async def _stop_leftover(self) -> None:
        """Stop the haproxy a previous run of this daemon started and could not stop (it was killed):
        Linux lets both bind the same ports (SO_REUSEPORT) and would split connections between an
        old config and the new. Only a process whose command line names our own config file."""
        pid = leftover_pid(self.pidfile, self.cfg)
        if pid is None:
            return
        log.warning("load balancers: stopping haproxy pid %d left by a previous run", pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        for _ in range(int(STOP_GRACE_S / 0.05)):
            if _gone(pid):
                return
            await asyncio.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    def _bin(self) -> str:
        if self.binary is None:
            self.binary = find_binary()
        return self.binary


def leftover_pid(pidfile: Path, cfg: Path) -> int | None:
    """The PID in ``pidfile`` if it is a live haproxy running ``cfg`` (reads of /proc: no blocking)."""
    try:
        pid = int(pidfile.read_text().split()[0])
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError, IndexError):
        return None
    if not argv[0].endswith(b"haproxy") or str(cfg).encode() not in argv or _gone(pid):
        return None
    return pid


def _gone(pid: int) -> bool:
    try:
        return b") Z" in Path(f"/proc/{pid}/stat").read_bytes()  # a zombie is gone too
    except OSError:
        return True
