"""Mutual TLS for the etcd members Shoal runs: only the swarm's managers may talk to them.

Before, a managed member listened in plain HTTP on the manager's advertise address: whoever
reached its client port could read the store and write anything into it (a service that mounts
``/`` on every node), bypassing the API's authorization entirely. Now every managed member serves
TLS and requires a client certificate on both its client and its peer port, from an *etcd CA*
that only managers hold:

- made at the first manager's first start (``<data-root>/etcd-tls/``, 0700; keys 0600) and handed
  to every manager that joins, in ManagerJoin, over the cluster port's mutual TLS;
- separate from the cluster's root CA on purpose: workers hold certificates from that root, and
  it rotates (etcd reads its trusted CA once, at start);
- each manager issues its own member certificate from it at every start (CN = its member name,
  SANs = ``shoal-etcd``, its address and loopback), used as server and as client.

A manager that is demoted or leaves deletes the etcd CA with its other keys. A former manager
that kept a copy holds the cluster's CA key too, so it could mint any certificate anyway: rotate
the root CA and move to a new swarm's keys as docs/security.md describes.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shoal.ca.certs import write_private
from shoal.ca.rootca import key_to_pem, self_signed_ca

TLS_DIR = "etcd-tls"
CA_CERT, CA_KEY, MEMBER_CERT, MEMBER_KEY = "ca.crt", "ca.key", "member.crt", "member.key"
SERVER_NAME = "shoal-etcd"  # every member certificate carries it; clients check it
CA_VALIDITY = dt.timedelta(days=3650)
MEMBER_VALIDITY = dt.timedelta(days=365)  # issued again at every start


@dataclass(frozen=True)
class EtcdTLS:
    """What a client of the managed members presents and trusts (PEM bytes)."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes


@dataclass(frozen=True)
class MemberFiles:
    """Paths etcd's flags name."""

    ca: Path
    cert: Path
    key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "shoal-etcd")])


def create_ca(data_root: Path) -> None:
    """The swarm's etcd CA, made once by its first manager."""
    d = data_root / TLS_DIR
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    cert, key = self_signed_ca(_name("Shoal etcd CA"), CA_VALIDITY, path_length=0)
    write_private(d / CA_KEY, key_to_pem(key))
    write_private(d / CA_CERT, cert.public_bytes(serialization.Encoding.PEM).decode())


def has_ca(data_root: Path) -> bool:
    d = data_root / TLS_DIR
    return (d / CA_CERT).exists() and (d / CA_KEY).exists()


def ca_pems(data_root: Path) -> tuple[str, str]:
    """(certificate, key) of the etcd CA, for a joining manager."""
    d = data_root / TLS_DIR
    return (d / CA_CERT).read_text(), (d / CA_KEY).read_text()


def install_ca(data_root: Path, cert_pem: str, key_pem: str) -> None:
    """A joining manager keeps the CA it was handed."""
    d = data_root / TLS_DIR
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    write_private(d / CA_KEY, key_pem)
    write_private(d / CA_CERT, cert_pem)


def remove(data_root: Path) -> None:
    d = data_root / TLS_DIR
    for name in (CA_CERT, CA_KEY, MEMBER_CERT, MEMBER_KEY):
        (d / name).unlink(missing_ok=True)


def issue_member(data_root: Path, member: str, addr: str) -> MemberFiles:
    """This manager's member certificate, made anew (a changed address is then always in it)."""
    d = data_root / TLS_DIR
    ca = x509.load_pem_x509_certificate((d / CA_CERT).read_bytes())
    ca_key = serialization.load_pem_private_key((d / CA_KEY).read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    names: list[x509.GeneralName] = [x509.DNSName(SERVER_NAME), x509.DNSName("localhost"),
                                     x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    try:
        ip = ipaddress.ip_address(addr)
        if x509.IPAddress(ip) not in names:
            names.append(x509.IPAddress(ip))
    except ValueError:
        names.append(x509.DNSName(addr))
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(member)).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + MEMBER_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .sign(ca_key, hashes.SHA256()))
    write_private(d / MEMBER_KEY, key_to_pem(key))
    write_private(d / MEMBER_CERT, cert.public_bytes(serialization.Encoding.PEM).decode())
    return MemberFiles(ca=d / CA_CERT, cert=d / MEMBER_CERT, key=d / MEMBER_KEY)


def prepare(data_root: Path, member: str, client_url: str, *, may_create: bool) -> MemberFiles | None:
    """Files for a member at ``client_url`` (None for a plain-http member: a swarm made before
    members ran with TLS). ``may_create``: this is the swarm's first member, which makes the CA;
    any other must have been handed it (ValueError otherwise)."""
    parts = urlsplit(client_url)
    if parts.scheme != "https":
        return None
    if not has_ca(data_root):
        if not may_create:
            raise ValueError(f"no etcd CA under {data_root / TLS_DIR}: this manager cannot reach the swarm's etcd; "
                             "demote it and promote it again (or make it join again)")
        create_ca(data_root)
    return issue_member(data_root, member, parts.hostname or "127.0.0.1")


def client_tls(data_root: Path) -> EtcdTLS:
    d = data_root / TLS_DIR
    return EtcdTLS((d / CA_CERT).read_bytes(), (d / MEMBER_CERT).read_bytes(), (d / MEMBER_KEY).read_bytes())
