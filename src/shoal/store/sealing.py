"""Sealing at rest: what the store persists for secrets, configs and the cluster is encrypted.

Those kinds carry secret data, config data and both join tokens. The in-memory view keeps them
plain (every reader would otherwise decrypt); what a backend writes (a sqlite row, an etcd value,
and so every etcd snapshot or backup) is AES-256-GCM under the swarm's *data key*:

    0xC1 "SL1" | key ID (8 bytes) | nonce (12 bytes) | ciphertext + tag

0xC1 is the one byte msgpack never uses, so a sealed value cannot be mistaken for a plain one: rows
written before sealing (or of other kinds) still load, and are sealed on their next write. The
associated data is ``kind/id``, so a sealed value copied onto another row does not open. Every
other kind (tasks, services, nodes...) is written as before, with no cost on that path.

The data key comes from a :class:`KeySource`: the keyring file ``<data-root>/store.key`` (0600,
made at ``swarm init``, handed to joining managers over mutual TLS). A keyring holds the current key
and, during a rotation, the keys still sealing some rows; values name their key, so a rotation
that stops half-way leaves every row readable and is finished at the next start. With autolock
the file itself is wrapped under the swarm's unlock key (store/autolock.py, through ``vault``).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shoal.ca.certs import write_private
from shoal.errors import Unavailable
from shoal.store.autolock import KeyVault, is_wrapped

log = logging.getLogger(__name__)

SEALED_KINDS = frozenset({"secret", "config", "cluster", "logsink"})  # a sink URL may carry credentials
MAGIC = b"\xc1SL1"
KEY_ID_BYTES = 8
NONCE_BYTES = 12
KEY_FILE = "store.key"
_HEAD = len(MAGIC) + KEY_ID_BYTES + NONCE_BYTES


class StoreKeyError(Unavailable):
    """The store's data key is missing or cannot open what is stored. Never decode around it and
    never write over what it could not open: the manager does not start until it is fixed."""


@dataclass
class Keyring:
    """The current data key (new values are sealed with it) and older keys still sealing rows."""

    current: str  # hex key ID
    keys: dict[str, bytes] = field(default_factory=dict)

    @classmethod
    def new(cls) -> Keyring:
        kid = secrets.token_hex(KEY_ID_BYTES)
        return cls(kid, {kid: AESGCM.generate_key(256)})

    def rotated(self) -> Keyring:
        """A new current key; the old ones stay until every row is sealed with the new one."""
        fresh = Keyring.new()
        return Keyring(fresh.current, {**self.keys, **fresh.keys})

    def pruned(self) -> Keyring:
        return Keyring(self.current, {self.current: self.keys[self.current]})

    def to_json(self) -> str:
        return json.dumps({"version": 1, "current": self.current,
                           "keys": {k: base64.b64encode(v).decode() for k, v in self.keys.items()}})

    @classmethod
    def from_json(cls, text: str, where: str = "the data key") -> Keyring:
        try:
            data = json.loads(text)
            ring = cls(str(data["current"]), {str(k): base64.b64decode(v, validate=True)
                                              for k, v in data["keys"].items()})
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise StoreKeyError(f"{where} is not a Shoal data keyring ({type(e).__name__})") from None
        if ring.current not in ring.keys or any(len(v) != 32 or len(bytes.fromhex(k)) != KEY_ID_BYTES
                                                for k, v in ring.keys.items()):
            raise StoreKeyError(f"{where} is not a Shoal data keyring (bad key or key ID)")
        return ring


class KeySource(Protocol):
    """Where the data keyring comes from: a file, wrapped under the unlock key with autolock."""

    where: str  # for messages: "/var/lib/shoal/store.key"

    def load(self) -> Keyring | None:
        """The keyring, or None when there is none yet (a store that never sealed anything)."""
        ...

    def save(self, ring: Keyring) -> None: ...

    def create(self) -> Keyring:
        """The keyring, made if there is none yet."""
        ...


class FileKeySource:
    """``<data-root>/store.key``: the keyring as JSON, mode 0600, replaced atomically; through
    ``vault`` (a running manager's) it is wrapped while autolock is on."""

    def __init__(self, path: str | Path, vault: KeyVault | None = None) -> None:
        self.path = Path(path)
        self.where = str(self.path)
        self.vault = vault

    def load(self) -> Keyring | None:
        try:
            text = self.vault.read(self.path) if self.vault is not None else self.path.read_text()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StoreKeyError(f"cannot read the data key {self.path}: {e.strerror}") from None
        if is_wrapped(text):  # an offline command (rotate-key, migrate) on an autolocked manager
            raise StoreKeyError(f"{self.path} is locked under the swarm's unlock key (autolock); turn autolock "
                                "off (`docker swarm update --autolock=false`) before this command")
        return Keyring.from_json(text, str(self.path))

    def save(self, ring: Keyring) -> None:
        if self.vault is not None:
            self.vault.write(self.path, ring.to_json())
        else:
            write_private(self.path, ring.to_json())

    def create(self) -> Keyring:
        """The keyring, made (and saved) if there is none: ``swarm init``."""
        ring = self.load()
        if ring is None:
            ring = Keyring.new()
            self.save(ring)
        return ring

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


class Sealer:
    """Seals and opens persisted values of :data:`SEALED_KINDS` with the keyring of ``source``.

    Without a source it seals nothing (NullBackend, tests of other parts) but still refuses to
    open a sealed value. The keyring is read once and cached (:meth:`reload` after a change)."""

    def __init__(self, source: KeySource | None = None, *, create: bool = False,
                 plain_without_key: bool = False) -> None:
        self.source = source
        # Make the keyring on the first seal if there is none: a single manager's store written
        # before sealing existed. Never on etcd, where every manager must hold the same key.
        self.create = create
        # On etcd, a swarm made before sealing (no manager has a key) goes on writing plain, and
        # says so, until `shoal store rotate-key` gives it one; a sealed store still needs its key.
        self.plain_without_key = plain_without_key
        self._warned = False
        self._ring: Keyring | None = None
        self._aead: dict[str, AESGCM] = {}

    @property
    def ring(self) -> Keyring | None:
        if self._ring is None and self.source is not None:
            self._ring = self.source.load()
        return self._ring

    def reload(self) -> None:
        self._ring = None
        self._aead.clear()

    def use(self, ring: Keyring) -> None:
        """Seal with ``ring`` from now on (a rotation's steps)."""
        self._ring = ring
        self._aead.clear()

    @property
    def where(self) -> str:
        return self.source.where if self.source is not None else "no data key"

    def _key(self, kid: str) -> AESGCM:
        aead = self._aead.get(kid)
        if aead is None:
            ring = self.ring
            if ring is None or kid not in ring.keys:
                raise StoreKeyError(
                    f"the store is sealed with data key {kid}, which {self.where} does not hold "
                    f"({'no such file' if ring is None else 'a different key'}); restore the swarm's "
                    "store.key (or re-join this manager) and start again")
            aead = self._aead[kid] = AESGCM(ring.keys[kid])
        return aead

    def seal(self, kind: str, oid: str, data: bytes) -> bytes:
        if kind not in SEALED_KINDS or self.source is None:
            return data
        ring = self.ring
        if ring is None and self.create:
            ring = self._ring = self.source.create()
            log.info("store: made the data key %s", self.where)
        if ring is None and self.plain_without_key:
            if not self._warned:
                log.warning("store: %s is missing: secrets, configs and join tokens are stored in plain text "
                            "(a swarm made before sealing); run `shoal store rotate-key` to seal them", self.where)
                self._warned = True
            return data
        if ring is None:
            raise StoreKeyError(f"no data key to seal {kind} {oid} with: {self.where} is missing")
        nonce = os.urandom(NONCE_BYTES)
        kid = ring.current
        return MAGIC + bytes.fromhex(kid) + nonce + self._key(kid).encrypt(nonce, data, _aad(kind, oid))

    def open(self, kind: str, oid: str, data: bytes) -> bytes:
        """The plain value. A value sealed with a key the ring lacks, or that does not open (a wrong
        key under the same ID, or a value altered or moved to another row): :class:`StoreKeyError`."""
        if not data.startswith(MAGIC):
            return data
        if len(data) < _HEAD + 16:
            raise StoreKeyError(f"{kind} {oid}: its sealed value is truncated")
        kid = data[len(MAGIC):len(MAGIC) + KEY_ID_BYTES].hex()
        nonce = data[len(MAGIC) + KEY_ID_BYTES:_HEAD]
        try:
            return self._key(kid).decrypt(nonce, data[_HEAD:], _aad(kind, oid))
        except InvalidTag:
            raise StoreKeyError(f"{kind} {oid} does not open with data key {kid} from {self.where} "
                                "(a wrong key, or the stored value was altered)") from None

    def stale(self, kind: str, data: bytes) -> bool:
        """Whether a stored value should be sealed again: plain (written before sealing) or sealed
        with an older key (a rotation to finish)."""
        if kind not in SEALED_KINDS or self.source is None:
            return False
        ring = self.ring
        if ring is None:
            return self.create and not data.startswith(MAGIC)
        return not data.startswith(MAGIC) or data[len(MAGIC):len(MAGIC) + KEY_ID_BYTES].hex() != ring.current


def _aad(kind: str, oid: str) -> bytes:
    return f"{kind}/{oid}".encode()


def key_id(data: bytes) -> str | None:
    """The key ID a stored value is sealed with; None for a plain value."""
    return data[len(MAGIC):len(MAGIC) + KEY_ID_BYTES].hex() if data.startswith(MAGIC) else None
