"""TLS for the API's TCP listeners, with dockerd's flags (``--tls``, ``--tlsverify``, ``--tlscacert``,
``--tlscert``, ``--tlskey``).

Who may connect, and as whom (see docs/security.md):

- ``--tlscert``/``--tlskey``: the server's certificate. When neither is given the daemon makes its
  own once, under ``<data-root>/tls/`` (a local "API CA" and a server certificate for localhost,
  this host's name and the addresses it listens and advertises on), so ``--tlsverify`` works
  without an openssl session first. ``shoal user cert`` hands clients that CA, so they can verify
  the server.
- ``--tlscacert``: the operator's CA for *client* certificates. As with dockerd, whoever holds a
  certificate from it has full access (the operator issued it); it is admin in Shoal's roles.
- The cluster's root CA also signs *user* certificates (``shoal user cert NAME --role ...``): those
  are trusted for who they name (CN = user, OU = ``shoal-user``, O = cluster ID) and get that
  user's role from the store. Node certificates from the same root are refused by the API.

``--tlsverify`` requires a client certificate from one of those; ``--tls`` alone encrypts but asks
for none (callers are then anonymous unless they send an API token).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shoal.ca.certs import write_private
from shoal.ca.rootca import key_to_pem, self_signed_ca
from shoal.transport.rpc import split_addr

log = logging.getLogger(__name__)

API_CA_FILE, API_CA_KEY_FILE = "ca.pem", "ca-key.pem"
SERVER_CERT_FILE, SERVER_KEY_FILE = "server-cert.pem", "server-key.pem"
GENERATED_VALIDITY = dt.timedelta(days=825)  # the longest server certificate lifetime browsers accept


class TLSConfigError(ValueError):
    """A TLS flag combination or file the daemon cannot start with (one line, for the CLI)."""


@dataclass(frozen=True)
class TLSOptions:
    """The daemon's TLS flags, as dockerd names them."""

    tls: bool = False
    verify: bool = False
    cacert: str | None = None
    cert: str | None = None
    key: str | None = None

    @property
    def enabled(self) -> bool:
        return self.tls or self.verify

    def check(self) -> None:
        if bool(self.cert) != bool(self.key):
            raise TLSConfigError("--tlscert and --tlskey go together: give both, or neither (the daemon then "
                                 "makes its own server certificate)")
        if (self.cacert or self.cert) and not self.enabled:
            raise TLSConfigError("--tlscacert/--tlscert/--tlskey need --tls or --tlsverify")
        for flag, path in (("--tlscacert", self.cacert), ("--tlscert", self.cert), ("--tlskey", self.key)):
            if path and not Path(path).is_file():
                raise TLSConfigError(f"{flag} {path}: no such file")


def tcp_hosts_need_tls(hosts: list[str], opts: TLSOptions, insecure_tcp: bool) -> None:
    """Refuse plain-text TCP unless the operator said ``--insecure-tcp`` (then warn, loudly)."""
    plain = [h for h in hosts if h.startswith("tcp://")] if not opts.enabled else []
    if plain and not insecure_tcp:
        raise TLSConfigError(
            f"refusing to listen on {', '.join(plain)} without TLS: anyone who reaches the port would control "
            "every node of the swarm. Use --tlsverify (with --tlscacert, or certificates from 'shoal user cert'), "
            "or --insecure-tcp if you really mean it")
    if plain:
        log.warning("listening on %s WITHOUT TLS (--insecure-tcp): anyone who reaches it has full control of the "
                    "swarm and root on every node", ", ".join(plain))


# ---------------------------------------------------------------------------- generated certificates


def _subject(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "shoal-api")])


def _server_names(hosts: list[str], advertise_addr: str | None) -> list[x509.GeneralName]:
    names: dict[str, x509.GeneralName] = {}

    def add(value: str) -> None:
        value = value.strip("[]")
        if not value or value in names:
            return
        try:
            names[value] = x509.IPAddress(ipaddress.ip_address(value))
        except ValueError:
            names[value] = x509.DNSName(value)

    for fixed in ("localhost", "127.0.0.1", "::1", socket.gethostname(), socket.getfqdn()):
        add(fixed)
    def host_of(addr: str) -> str:
        try:
            return split_addr(addr)[0]
        except ValueError:  # a bad port: serve() says so
            return ""

    for h in hosts:
        if h.startswith("tcp://"):
            host = host_of(h.removeprefix("tcp://"))
            if host not in ("", "0.0.0.0", "::"):  # a wildcard names no address a client dials
                add(host)
    if advertise_addr:
        add(host_of(advertise_addr))
    return list(names.values())


def ensure_generated(tls_dir: Path, hosts: list[str], advertise_addr: str | None) -> tuple[Path, Path, Path]:
    """The daemon's own API CA and server certificate under ``tls_dir`` (made once, kept after):
    (CA cert, server cert, server key) paths. A server certificate that no longer names every
    address the daemon listens on is made again from the same CA."""
    tls_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(tls_dir, 0o700)
    ca_path, ca_key_path = tls_dir / API_CA_FILE, tls_dir / API_CA_KEY_FILE
    cert_path, key_path = tls_dir / SERVER_CERT_FILE, tls_dir / SERVER_KEY_FILE
    now = dt.datetime.now(dt.UTC)
    if ca_path.exists() and ca_key_path.exists():
        ca = x509.load_pem_x509_certificate(ca_path.read_bytes())
        ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), None)
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    else:
        ca, ca_key = self_signed_ca(_subject("Shoal API CA"), dt.timedelta(days=3650), path_length=0)
        write_private(ca_key_path, key_to_pem(ca_key))
        write_private(ca_path, ca.public_bytes(serialization.Encoding.PEM).decode())
        cert_path.unlink(missing_ok=True)
    wanted = _server_names(hosts, advertise_addr)
    if cert_path.exists() and key_path.exists():
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        try:
            have = set(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
        except x509.ExtensionNotFound:
            have = set()
        fresh = cert.not_valid_after_utc - now > dt.timedelta(days=30)
        if set(wanted) <= have and fresh and cert.issuer == ca.subject:
            return ca_path, cert_path, key_path
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_subject(socket.gethostname())).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + GENERATED_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(wanted), critical=False)
            .sign(ca_key, hashes.SHA256()))
    write_private(key_path, key_to_pem(key))
    write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM).decode())
    log.info("made the API's server certificate %s (CA %s)", cert_path, ca_path)
    return ca_path, cert_path, key_path


# ---------------------------------------------------------------------------- the server's context


class ServerTLS:
    """The API's SSL context, plus what the authorization layer needs to know about it: which CA
    verifies the server (handed to clients), which CA's client certificates are admins."""

    def __init__(self, opts: TLSOptions, data_root: Path, hosts: list[str], advertise_addr: str | None) -> None:
        opts.check()
        self.opts = opts
        if opts.cert and opts.key:
            cert, key = Path(opts.cert), Path(opts.key)
            # The CA that verifies a server certificate the operator brought is the operator's CA
            # (dockerd's TLS guide signs both with one CA); clients of 'shoal user cert' get it.
            self.server_ca_pem = Path(opts.cacert).read_text() if opts.cacert else ""
        else:
            ca, cert, key = ensure_generated(data_root / "tls", hosts, advertise_addr)
            self.server_ca_pem = ca.read_text()
        self.operator_ca_pem = Path(opts.cacert).read_text() if opts.cacert else ""
        self._trusted: set[str] = set()
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(str(cert), str(key))
        except (ssl.SSLError, OSError) as e:
            raise TLSConfigError(f"cannot use the server certificate {cert} with key {key}: {e}") from None
        if opts.verify:
            ctx.verify_mode = ssl.CERT_REQUIRED
        else:
            # --tls: a client may still present a certificate (and is then known by it).
            ctx.verify_mode = ssl.CERT_OPTIONAL
        self.context = ctx
        if self.operator_ca_pem:
            self.trust(self.operator_ca_pem)

    def trust(self, pem: str) -> None:
        """Accept client certificates issued by ``pem`` from the next handshake on (the cluster's root
        once the swarm exists, and each new root after a rotation; authorization then decides)."""
        if not pem or pem in self._trusted:
            return
        try:
            self.context.load_verify_locations(cadata=pem)
        except ssl.SSLError as e:
            raise TLSConfigError(f"cannot trust that CA certificate: {e}") from None
        self._trusted.add(pem)
