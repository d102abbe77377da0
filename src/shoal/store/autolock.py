"""Autolock: a manager's keys at rest, wrapped under the swarm's unlock key.

A manager keeps two keys in its data root that open everything else: the store's data keyring
(``store.key``, which seals secrets, configs and join tokens in the store) and the root CA key
(``ca.key``, with ``ca.key.next`` during a root rotation). With autolock on (``swarm init
--autolock``, ``swarm update --autolock=true``) both files hold their text wrapped under the
*unlock key*, a 32-byte key-encryption key shown as ``SWMKEY-1-<base64>`` like Docker's. A manager
that restarts finds them wrapped and stays locked (the API answers Docker's "Swarm is encrypted"
503) until ``POST /swarm/unlock`` hands it the key; it then holds the key in memory only.

Where the unlock key lives: in the cluster object (``Cluster.UnlockKey``), as swarmkit keeps it in
raft. The cluster row is sealed with the data key, so the unlock key is never on disk in clear, and
every manager (etcd) learns a new one from its copy of the store; each re-wraps its own files when
the cluster's key changes (:meth:`KeyVault.rekey`), and one that was down during a rotation is
unlocked with the key it went down with, then re-wraps on its own.

Wrapped file: ``SHOAL-WRAPPED-1`` line, then JSON ``{"wraps": [{"kid", "nonce", "ct"}...]}``;
AES-256-GCM, the file's role (``ca.key``/``store.key``) as associated data so that one file's
wrapping does not pass for the other's. During a change of key a file holds the text wrapped under
both the new and the old key; only once *every* file has both does any drop the old one. So a crash
at any point leaves all files openable with one key the user holds (the old one until the new
wrapping is on disk everywhere), never one file under each.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shoal.ca.certs import write_private
from shoal.errors import Conflict, InvalidArgument, Unauthorized, Unavailable

log = logging.getLogger(__name__)

KEY_PREFIX = "SWMKEY-1-"  # swarmkit's humanReadablePrefix
KEY_BYTES = 32
MAGIC = "SHOAL-WRAPPED-1\n"
NONCE_BYTES = 12
# The files a manager's autolock covers (relative to the data root).
WRAPPED_FILES = ("store.key", "ca.key", "ca.key.next")

# moby daemon/cluster/errors.go, word for word: the docker CLI shows them as they come.
SWARM_LOCKED = ('Swarm is encrypted and needs to be unlocked before it can be used. '
                'Please use "docker swarm unlock" to unlock it.')
LOCKED_LEAVE = "Swarm is encrypted and locked. Please unlock it first or use `--force` to ignore this message."
INVALID_UNLOCK_KEY = "swarm could not be unlocked: invalid key provided"
NOT_LOCKED = "swarm is not locked"


class SwarmLocked(Unavailable):
    def __init__(self, message: str = SWARM_LOCKED) -> None:
        super().__init__(message)


def new_unlock_key() -> bytes:
    return os.urandom(KEY_BYTES)


def human_key(key: bytes) -> str:
    """``SWMKEY-1-`` + unpadded standard base64, as swarmkit's HumanReadableKey."""
    return KEY_PREFIX + base64.b64encode(key).decode().rstrip("=")


def parse_human_key(text: str) -> bytes:
    """The key's bytes; swarmkit's "invalid key string" (400 from moby) for anything else."""
    text = text.strip()
    if not text.startswith(KEY_PREFIX):
        raise InvalidArgument("invalid key string")
    body = text[len(KEY_PREFIX):]
    try:
        return base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument("invalid key string") from None


def _kid(key: bytes) -> str:
    """Which key wrapped a value (so an error can say "another key" rather than guess)."""
    return hashlib.sha256(b"shoal-autolock-kid" + key).hexdigest()[:16]


def _role(path: Path) -> bytes:
    # ca.key.next becomes ca.key by a rename, and write_private goes through ".tmp": same role.
    return path.name.removesuffix(".tmp").removesuffix(".next").encode()


def is_wrapped(text: str) -> bool:
    return text.startswith(MAGIC)


def wrap(text: str, keys: list[bytes], path: Path) -> str:
    wraps = []
    for key in keys:
        nonce = os.urandom(NONCE_BYTES)
        ct = AESGCM(key).encrypt(nonce, text.encode(), _role(path))
        wraps.append({"kid": _kid(key), "nonce": base64.b64encode(nonce).decode(),
                      "ct": base64.b64encode(ct).decode()})
    return MAGIC + json.dumps({"wraps": wraps})


def unwrap(text: str, key: bytes, path: Path) -> str | None:
    """The plain text, or None when ``key`` is not one the file is wrapped under."""
    try:
        wraps = json.loads(text[len(MAGIC):])["wraps"]
    except (ValueError, KeyError, TypeError):
        raise Unavailable(f"{path} is not a wrapped key file Shoal can read") from None
    kid = _kid(key)
    for w in wraps:
        if w.get("kid") != kid:
            continue
        try:
            return AESGCM(key).decrypt(base64.b64decode(w["nonce"]), base64.b64decode(w["ct"]),
                                       _role(path)).decode()
        except (InvalidTag, KeyError, ValueError, binascii.Error):
            return None
    return None


class KeyVault:
    """A manager's key files, plain or wrapped; the unlock key, once given, in memory only.

    Reads and writes of ``store.key`` and ``ca.key`` go through here (FileKeySource, ClusterCA),
    so that every writer wraps while autolock is on and no reader needs to know about it."""

    def __init__(self, data_root: str | Path) -> None:
        self.data_root = Path(data_root)
        self.kek: bytes | None = None  # the unlock key this manager holds (None: autolock off, or locked)

    def paths(self) -> list[Path]:
        return [self.data_root / name for name in WRAPPED_FILES]

    def wrapped_files(self) -> list[Path]:
        out = []
        for p in self.paths():
            try:
                if is_wrapped(p.read_text()):
                    out.append(p)
            except FileNotFoundError:
                continue
        return out

    @property
    def locked(self) -> bool:
        """Some key file is wrapped and this process has not been given the key."""
        return self.kek is None and bool(self.wrapped_files())

    def read(self, path: Path) -> str:
        text = path.read_text()
        if not is_wrapped(text):
            return text
        if self.kek is None:
            raise SwarmLocked()
        plain = unwrap(text, self.kek, path)
        if plain is None:
            raise Unavailable(f"{path} is wrapped under another unlock key than this manager holds")
        return plain

    def write(self, path: Path, text: str) -> None:
        write_private(path, wrap(text, [self.kek], path) if self.kek is not None else text)

    def unlock(self, key: bytes) -> None:
        """Take ``key`` if it opens every wrapped file; Docker's 401 otherwise. Writes nothing."""
        files = self.wrapped_files()
        if not files:
            raise Conflict(NOT_LOCKED)
        for p in files:
            if unwrap(p.read_text(), key, p) is None:
                raise Unauthorized(INVALID_UNLOCK_KEY)
        self.kek = key

    def rekey(self, new: bytes | None) -> bool:
        """Wrap every key file under ``new`` (None: leave them plain). Crash-safe in two passes:
        first each file under new *and* old key, then each under the new one only. Returns whether
        anything was rewritten."""
        plain: dict[Path, str] = {}
        for p in self.paths():
            try:
                plain[p] = self.read(p)
            except FileNotFoundError:
                continue
        if new == self.kek and all(self._wrapped_as(p, new) for p in plain):
            return False
        old = self.kek
        if new is not None and old is not None and old != new:
            for p, text in plain.items():
                write_private(p, wrap(text, [new, old], p))
        for p, text in plain.items():
            write_private(p, wrap(text, [new], p) if new is not None else text)
        self.kek = new
        return True

    def _wrapped_as(self, path: Path, key: bytes | None) -> bool:
        text = path.read_text()
        if key is None:
            return not is_wrapped(text)
        if not is_wrapped(text):
            return False
        try:
            wraps = json.loads(text[len(MAGIC):])["wraps"]
        except (ValueError, KeyError, TypeError):
            return False
        return [w.get("kid") for w in wraps] == [_kid(key)]

    def forget(self) -> None:
        """Left the swarm or demoted: the files are gone, and so is the key."""
        self.kek = None
