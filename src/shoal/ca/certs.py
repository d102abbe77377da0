"""Node certificates: keys and CSRs on the node's side, signing and reading them on the CA's side.

A node certificate says who a node is and what it may do, in swarmkit's layout: CN = node ID,
OU = ``swarm-manager`` | ``swarm-worker``, O = cluster ID, SANs = the role name and the IP address
the CA saw the request come from. Clients dial the manager with the server name ``swarm-manager``,
so a manager certificate is valid whatever address a node used to reach it — and, since only the CA
chooses SANs and only manager certificates carry that name, checking it checks the server's role.
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shoal.ca.rootca import CLOCK_SKEW, key_to_pem
from shoal.errors import InvalidArgument
from shoal.models import NodeRole

log = logging.getLogger(__name__)

MANAGER_OU = "swarm-manager"
WORKER_OU = "swarm-worker"
USER_OU = "shoal-user"  # an API user's client certificate: never a node's (OU_ROLE has no entry for it)
MANAGER_SERVER_NAME = MANAGER_OU  # the TLS server name every client checks on a manager's certificate
ROLE_OU = {NodeRole.MANAGER: MANAGER_OU, NodeRole.WORKER: WORKER_OU}
OU_ROLE = {v: k for k, v in ROLE_OU.items()}

_LEAF_USAGE = x509.KeyUsage(
    digital_signature=True, key_encipherment=True, content_commitment=False, data_encipherment=False,
    key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
)
_PEM_END = "-----END CERTIFICATE-----"


@dataclass(frozen=True)
class CertIdentity:
    """What a node certificate says about its holder."""

    node_id: str
    role: NodeRole | None  # None: an OU that names no role (not one of ours)
    cluster_id: str
    not_after: dt.datetime


# ---------------------------------------------------------------------------- node side


def generate_key_and_csr() -> tuple[str, str]:
    """A new P-256 key and a CSR for it, as (key PEM, CSR PEM). The CA decides the subject."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "shoal-node")]))
        .sign(key, hashes.SHA256())
    )
    return key_to_pem(key), csr.public_bytes(serialization.Encoding.PEM).decode()


# ---------------------------------------------------------------------------- CA side


def load_csr(csr_pem: str) -> x509.CertificateSigningRequest:
    """A CSR whose signature proves its key's possession; InvalidArgument otherwise."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
    except ValueError:
        raise InvalidArgument("invalid certificate signing request") from None
    try:
        valid = csr.is_signature_valid
    except (InvalidSignature, ValueError):  # an unsupported key type raises on the check itself
        valid = False
    key = csr.public_key()
    strong = isinstance(key, ec.EllipticCurvePublicKey) or (isinstance(key, rsa.RSAPublicKey) and key.key_size >= 2048)
    if not valid or not strong:
        raise InvalidArgument("invalid certificate signing request: bad signature or unsupported key")
    return csr


def verified_ip(addr: str) -> str:
    """``addr`` as an IP literal ("10.0.0.5", "10.0.0.5:2377", "[::1]:2377" → the IP), or "" when it
    is not one. Only IPs go into certificates: a name would be the node's own choice."""
    if addr.startswith("["):  # [v6]:port
        host = addr[1:].split("]", 1)[0]
    else:
        host = addr.rsplit(":", 1)[0] if addr.count(":") == 1 else addr  # ip:port → ip; bare IPv6 as is
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return ""


def _san(role: NodeRole, addr: str) -> x509.SubjectAlternativeName:
    """The role's name (``swarm-manager`` / ``swarm-worker``: the name every client checks, so only
    a manager's certificate can serve as one) and the address the CA verified, if it is an IP.
    Never a DNS name from the node: a worker that joined as "swarm-manager" got exactly that SAN,
    and with it a certificate other agents accepted as the manager's."""
    names: list[x509.GeneralName] = [x509.DNSName(ROLE_OU[role])]
    ip = verified_ip(addr)
    if ip:
        names.append(x509.IPAddress(ipaddress.ip_address(ip)))
    return x509.SubjectAlternativeName(names)


def _issue_leaf(
    public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
    issuer: x509.Certificate,
    issuer_key: ec.EllipticCurvePrivateKey,
    subject: list[x509.NameAttribute],
    usages: list[x509.ObjectIdentifier],
    validity: dt.timedelta,
    san: x509.SubjectAlternativeName | None = None,
) -> str:
    """A leaf certificate (PEM) the cluster's CA signs: never a CA, never outliving its issuer."""
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(subject))
        .issuer_name(issuer.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - min(CLOCK_SKEW, validity / 10))
        .not_valid_after(min(now + validity, issuer.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_LEAF_USAGE, critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    )
    if san is not None:
        builder = builder.add_extension(san, critical=False)
    return builder.sign(issuer_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def issue_node_cert(
    public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
    issuer: x509.Certificate,
    issuer_key: ec.EllipticCurvePrivateKey,
    node_id: str,
    role: NodeRole,
    cluster_id: str,
    addr: str,
    validity: dt.timedelta,
) -> str:
    """A node certificate (PEM) for ``public_key``, usable for both TLS client and server.
    ``addr`` must be one the CA verified (the peer address of the call), never one a node chose."""
    subject = [x509.NameAttribute(NameOID.COMMON_NAME, node_id),
               x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ROLE_OU[role]),
               x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster_id)]
    return _issue_leaf(public_key, issuer, issuer_key, subject,
                       [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH], validity, _san(role, addr))


def issue_user_cert(
    public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
    issuer: x509.Certificate,
    issuer_key: ec.EllipticCurvePrivateKey,
    user: str,
    user_id: str,
    cluster_id: str,
    validity: dt.timedelta,
) -> str:
    """An API user's client certificate (PEM): CN = user name, UID = the user object's ID (so a
    user removed and made again under the same name does not bring old certificates back),
    OU = ``shoal-user``, O = cluster ID; client authentication only and no SANs, so it can never
    serve as a node or a manager."""
    subject = [x509.NameAttribute(NameOID.COMMON_NAME, user), x509.NameAttribute(NameOID.USER_ID, user_id),
               x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, USER_OU),
               x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster_id)]
    return _issue_leaf(public_key, issuer, issuer_key, subject, [ExtendedKeyUsageOID.CLIENT_AUTH], validity)


def subject_fields(cert: x509.Certificate) -> tuple[str, str, str, str]:
    """(CN, OU, O, UID) of a certificate's subject ("" for a missing one)."""
    def attr(oid: x509.ObjectIdentifier) -> str:
        values = cert.subject.get_attributes_for_oid(oid)
        return str(values[0].value) if values else ""

    return (attr(NameOID.COMMON_NAME), attr(NameOID.ORGANIZATIONAL_UNIT_NAME), attr(NameOID.ORGANIZATION_NAME),
            attr(NameOID.USER_ID))


# ---------------------------------------------------------------------------- reading


@functools.lru_cache(maxsize=4096)
def cert_identity(cert_pem: str) -> CertIdentity:
    """Parse a node certificate (the first of a PEM chain); cached, as every RPC asks."""
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    subject = cert.subject

    def attr(oid: x509.ObjectIdentifier) -> str:
        values = subject.get_attributes_for_oid(oid)
        return str(values[0].value) if values else ""

    return CertIdentity(
        node_id=attr(NameOID.COMMON_NAME),
        role=OU_ROLE.get(attr(NameOID.ORGANIZATIONAL_UNIT_NAME)),
        cluster_id=attr(NameOID.ORGANIZATION_NAME),
        not_after=cert.not_valid_after_utc,
    )


def split_pem(bundle: str) -> list[str]:
    """The certificates of a PEM bundle, each exactly as written (so digests of them still match)."""
    out: list[str] = []
    rest = bundle
    while _PEM_END in rest:
        head, rest = rest.split(_PEM_END, 1)
        start = head.find("-----BEGIN CERTIFICATE-----")
        if start >= 0:
            out.append(head[start:] + _PEM_END + "\n")
        rest = rest[1:] if rest.startswith("\n") else rest
    return out


def public_key_matches(cert_pem: str, key_pem: str) -> bool:
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    key = serialization.load_pem_private_key(key_pem.encode(), None)
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return cert.public_key().public_bytes(*fmt) == key.public_key().public_bytes(*fmt)


# ---------------------------------------------------------------------------- files


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600, atomically (a crash leaves the old file or the new)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an older tmp file may have had another mode
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def private_dir(path: Path) -> None:
    """Make ``path`` (and its parents) a directory only its owner can enter (0700): it holds the
    store, the CA key and the data key. One an older Shoal made looser is tightened, and said so."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)  # the mode is masked by the umask: chmod too
    mode = path.stat().st_mode & 0o777
    if mode != 0o700:
        os.chmod(path, 0o700)
        if mode & 0o077:
            log.warning("%s was open to other users (mode %o); now 0700", path, mode)

