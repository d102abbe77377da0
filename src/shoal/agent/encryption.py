"""Whether this node's kernel could encrypt overlay (VXLAN) traffic: probed once at agent start.

Docker encrypts an ``--opt encrypted`` overlay with IPsec ESP in transport mode, AES-GCM
(``rfc4106(gcm(aes))``); WireGuard would be the other way. Neither works without the kernel's
help (CONFIG_INET_ESP + CONFIG_CRYPTO_GCM, or CONFIG_WIREGUARD), and Shoal must never accept the
option and quietly send clear text. So each agent tries, in a throwaway network namespace
(``unshare --net``: the namespace dies with the command, nothing to clean up even on a crash), to
create an ESP state with AES-GCM, an ESP state with CBC/HMAC (to tell "no ESP" from "no GCM"), and
a WireGuard link, and reads ``/proc/crypto`` (which lists GCM once anything instantiated it).

The result rides in the node description as engine labels (Docker's description has no field for
it): ``shoal.encryption=ipsec|wireguard|none`` and, when none, ``shoal.encryption.reason``. The
manager reads them when a network asks for ``encrypted`` (:mod:`shoal.controlapi.encryption`).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

from shoal.netmode import ENCRYPTION_LABEL as LABEL
from shoal.netmode import ENCRYPTION_REASON_LABEL as REASON_LABEL

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 10.0

# Docker's overlay encryption: ESP, transport mode, rfc4106(gcm(aes)) with a 160-bit key (128 + salt).
_STATE = ["xfrm", "state", "add", "src", "192.0.2.1", "dst", "192.0.2.2", "proto", "esp", "spi", "0x5e01",
          "reqid", "1", "mode", "transport"]
_AEAD = [*_STATE, "aead", "rfc4106(gcm(aes))", "0x" + "11" * 20, "128"]
_CBC = [*_STATE, "enc", "cbc(aes)", "0x" + "22" * 16, "auth", "hmac(sha256)", "0x" + "33" * 32]
_WIREGUARD = ["link", "add", "shoalprobe0", "type", "wireguard"]


@dataclass(frozen=True)
class EncryptionSupport:
    mode: str  # "ipsec", "wireguard" or "none"
    reason: str = ""  # why none: what the kernel lacks, or why the probe could not run

    def labels(self) -> dict[str, str]:
        out = {LABEL: self.mode}
        if self.mode == "none" and self.reason:
            out[REASON_LABEL] = self.reason
        return out


def crypto_algorithms(text: str) -> set[str]:
    """The ``name`` fields of ``/proc/crypto``."""
    out = set()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "name":
            out.add(value.strip())
    return out


def classify(aead_err: str | None, cbc_err: str | None, wg_err: str | None, crypto: str) -> EncryptionSupport:
    """The verdict from the three probes (None: it worked; else the tool's error) and /proc/crypto."""
    if aead_err is None:
        return EncryptionSupport("ipsec")
    if wg_err is None:
        return EncryptionSupport("wireguard")
    algos = crypto_algorithms(crypto)
    has_gcm = bool({"gcm(aes)", "rfc4106(gcm(aes))"} & algos)
    missing = []
    if cbc_err is not None and "type not found" in cbc_err.lower():
        missing.append("ESP")  # the xfrm layer has no ESP protocol (CONFIG_INET_ESP)
    if not has_gcm:
        missing.append("GCM")
    missing.append("WireGuard")
    if len(missing) == 1:  # ESP and GCM look present, yet the state failed: say what the kernel said
        return EncryptionSupport("none", f"ESP with AES-GCM failed ({aead_err.strip()}) and kernel lacks WireGuard")
    return EncryptionSupport("none", "kernel lacks " + ", ".join(missing[:-1]) + " and " + missing[-1])


async def _in_throwaway_netns(args: list[str]) -> str | None:
    """Run ``ip ARGS`` in a fresh network namespace; None if it worked, else its error text."""
    proc = await asyncio.create_subprocess_exec(
        "unshare", "--net", "--", "ip", *args,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, err = await asyncio.wait_for(proc.communicate(), PROBE_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return "timed out"
    return None if proc.returncode == 0 else (err.decode(errors="replace").strip() or f"exit {proc.returncode}")


class ProbeFailed(Exception):
    pass


async def probe(crypto_path: Path = Path("/proc/crypto")) -> EncryptionSupport:
    """Probe this kernel (see the module docstring). Never raises: a probe that cannot run is a
    node that cannot be trusted to encrypt, and says why."""
    try:
        aead = await _in_throwaway_netns(_AEAD)
        if aead is not None and ("operation not permitted" in aead.lower() or "unshare" in aead.lower()):
            raise ProbeFailed(aead)
        cbc = None if aead is None else await _in_throwaway_netns(_CBC)
        wg = None if aead is None else await _in_throwaway_netns(_WIREGUARD)
        crypto = await asyncio.to_thread(crypto_path.read_text) if aead is not None else ""
    except (OSError, ProbeFailed) as e:
        support = EncryptionSupport("none", f"could not probe the kernel: {e}")
    else:
        support = classify(aead, cbc, wg, crypto)
    log.info("overlay encryption on this node: %s%s", support.mode, f" ({support.reason})" if support.reason else "")
    return support
