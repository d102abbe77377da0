"""One haproxy, run in master-worker mode and reloaded in place.

Why master-worker (``-W``): a reload is a SIGUSR2 to the master, which starts a worker on the new
config and tells the old one to finish its connections (soft stop, bounded by ``hard-stop-after``);
with ``expose-fd listeners`` on the stats socket the new worker takes the listening sockets over
from the old one, so no connection is refused while reloading and none in flight is cut.
A config is checked (``haproxy -c``) before it replaces the running one: a bad one is logged and
the old config keeps serving. A config that passes the check can still fail to load (a port that
another process holds): the master then keeps the old worker, and says so only in its log. So each
config carries its digest as haproxy's ``description``, and after a start or reload the worker's
``show info`` on the admin socket must show it; until it does, the load failed, and the reason is
haproxy's own alert from its log.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import signal
from pathlib import Path

log = logging.getLogger(__name__)

STOP_GRACE_S = 5.0
CONFIRM_S = 10.0  # how long a started or reloaded haproxy has to show that it runs the new config


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
        self.error: str | None = None  # why the last config did not load (None: it runs)
        self.refused = False  # ... and whether that was haproxy -c refusing it (no use trying again)
        self.log_file = workdir / "haproxy.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def check(self, path: Path) -> str | None:
        """haproxy's own verdict on a config file: None if valid, else its alerts."""
        proc = await asyncio.create_subprocess_exec(
            self._bin(), "-c", "-f", str(path),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        if proc.returncode == 0:
            return None
        said = out.decode(errors="replace").splitlines()
        return _alerts(said) or "\n".join(said).strip() or f"exit status {proc.returncode}"

    async def apply(self, text: str) -> bool:
        """Make haproxy run ``text``: start it, or reload it. False (logged, and the reason in
        :attr:`error`) if haproxy refused the config or could not load it."""
        self.workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        text = stamp(text, digest)
        new = self.cfg.with_suffix(".new")
        new.write_text(text)
        why = await self.check(new)
        self.refused = why is not None
        if why is not None:
            self._failed(f"haproxy refused the load balancers' config, keeping the running one: {why}")
            return False
        os.replace(new, self.cfg)
        log_at = self.log_file.stat().st_size if self.log_file.exists() else 0
        reload = self.running
        if reload:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGUSR2)
            self.reloads += 1
        else:
            await self._start()
        if str(self.admin_socket) in text:  # without its admin socket there is nothing to ask
            why = await self._confirm(digest, log_at)
            if why is not None:
                self._failed(f"haproxy could not load the load balancers' config ({why}); "
                             f"{'the previous one keeps serving' if self.running else 'none is served'}")
                return False
        assert self.proc is not None
        log.info("load balancers: haproxy %s (pid %d)", "reloaded" if reload else "started", self.proc.pid)
        if self.error is not None:
            log.info("load balancers: haproxy loaded the current config this time")
        self.error = None
        return True

    def _failed(self, why: str) -> None:
        """Said once as an error; the same reason again (a retry) only at debug level."""
        log.log(logging.DEBUG if why == self.error else logging.ERROR, "load balancers: %s", why)
        self.error = why

    async def _confirm(self, digest: str, log_at: int) -> str | None:
        """None once the worker runs the config of ``digest``; else haproxy's reason."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CONFIRM_S
        while True:
            if f"description: shoal-lb-{digest}" in await self._show_info():
                return None
            said = await asyncio.to_thread(self._alerts_since, log_at)
            if said is not None:
                return said
            if not self.running or loop.time() >= deadline:
                return (await asyncio.to_thread(self._alerts_since, log_at, True)) or (
                    "it exited" if not self.running else f"not running it after {CONFIRM_S:.0f} s")
            await asyncio.sleep(0.1)

    async def _show_info(self) -> str:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(self.admin_socket)), 1.0)
        except (OSError, TimeoutError):
            return ""  # not listening yet (a starting worker), or gone
        try:
            writer.write(b"show info\n")
            return (await asyncio.wait_for(reader.read(), 2.0)).decode(errors="replace")
        except (OSError, TimeoutError):
            return ""
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def _alerts_since(self, offset: int, ended: bool = False) -> str | None:
        """What our master process (not a leftover it replaced) wrote since ``offset`` as ALERTs,
        once it has said the load failed (or, with ``ended``, whatever it said); None if not yet."""
        if self.proc is None:
            return None
        try:
            with open(self.log_file, "rb") as f:
                f.seek(offset)
                said = f.read(65536).decode(errors="replace")
        except OSError:
            return None
        ours = [line for line in said.splitlines() if f"({self.proc.pid}) :" in line]
        if not ended and not any("Loading failure" in line or "Exiting" in line for line in ours):
            return None
        return _alerts(ours) or None

    async def _start(self) -> None:
        await self._stop_leftover()
        err = await asyncio.to_thread(open, self.log_file, "ab")
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


def _alerts(lines: list[str]) -> str:
    """haproxy's ALERT lines, without their "[ALERT] (pid) : " prefix, joined."""
    return "; ".join(line.split(" : ", 1)[-1].strip() for line in lines if line.startswith("[ALERT]"))


def stamp(text: str, digest: str) -> str:
    """``text`` with ``description shoal-lb-<digest>`` as the first line of its global section."""
    head, sep, rest = text.partition("\nglobal\n")
    if not sep:
        return f"global\n    description shoal-lb-{digest}\n{text}"
    return f"{head}{sep}    description shoal-lb-{digest}\n{rest}"


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
