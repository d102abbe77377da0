"""A throwaway sshd on a free loopback port, exporting a tmp dir over sftp (the shared-volume tests).

Its own host key, authorized key and config; run as root (``sshd -D -f <cfg>``), so sshfs logs in
as root with the test's key. Stopped by PID.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class NasSshd:
    addr: str
    port: int
    export: Path
    identity: Path
    known_hosts: Path
    proc: subprocess.Popen[bytes]

    @property
    def server(self) -> str:
        return f"{self.addr}:{self.port}"

    def ssh_options(self) -> tuple[str, ...]:
        """What sshfs needs to trust this server without the node's known_hosts."""
        return (f"UserKnownHostsFile={self.known_hosts}", "StrictHostKeyChecking=yes")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def sshd_available() -> str:
    for tool in ("sshd", "ssh-keygen", "sshfs"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            return f"{tool} not installed (scripts/install-deps.sh)"
    return ""


def _free_port(addr: str) -> int:
    with socket.socket() as s:
        s.bind((addr, 0))
        return int(s.getsockname()[1])


def start_sshd(d: Path, addr: str = "127.0.0.1") -> NasSshd:
    """On ``addr`` (loopback; the lab's bridge address for the lab's hosts)."""
    d.mkdir(parents=True, exist_ok=True)
    d.chmod(0o755)  # sshd's StrictModes checks the authorized_keys' directories
    export = d / "export"
    export.mkdir()
    for key in ("host", "user"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)], check=True)
    (d / "authorized_keys").write_text((d / "user.pub").read_text())
    port = _free_port(addr)
    (d / "known_hosts").write_text(f"[{addr}]:{port} {(d / 'host.pub').read_text()}")
    sftp = next(p for p in ("/usr/lib/openssh/sftp-server", "/usr/libexec/sftp-server") if Path(p).exists())
    cfg = d / "sshd_config"
    cfg.write_text(f"""ListenAddress {addr}:{port}
HostKey {d / 'host'}
AuthorizedKeysFile {d / 'authorized_keys'}
PidFile {d / 'sshd.pid'}
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
Subsystem sftp {sftp}
""")
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    # sshd wants its privilege-separation directory even when told to use another config
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(cfg)], stderr=(d / "sshd.log").open("wb"))
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection((addr, port), 0.5).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"test sshd did not start: {(d / 'sshd.log').read_text()}") from None
            time.sleep(0.05)
    return NasSshd(addr=addr, port=port, export=export, identity=d / "user", known_hosts=d / "known_hosts", proc=proc)
