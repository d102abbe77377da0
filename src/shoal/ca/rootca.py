"""The cluster's root certificate authority (made at ``swarm init``), with the cryptography package.

The root signs every node certificate (see :mod:`shoal.ca.authority`). Roots carry a Subject Key
Identifier and node certificates the matching Authority Key Identifier, so that while a rotation
keeps two roots trusted, a verifier always picks the right issuer.
"""

from __future__ import annotations

import base64
import datetime as dt
import secrets

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shoal.models import TLSInfo

ROOT_VALIDITY = dt.timedelta(days=20 * 365)  # swarmkit's default root lifetime
CLOCK_SKEW = dt.timedelta(minutes=5)  # certificates start a little in the past: hosts' clocks differ

_ROOT_USAGE = x509.KeyUsage(
    digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
    key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
    decipher_only=False,
)


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def key_to_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _root_name(cluster_id: str, unique: bool) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, "swarm-ca"),
             x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster_id)]
    if unique:
        # A rotated root gets a subject of its own: old and new roots are trusted side by side
        # for a while, and a name shared by both would leave verifiers guessing which one is meant.
        attrs.append(x509.NameAttribute(NameOID.SERIAL_NUMBER, secrets.token_hex(8)))
    return x509.Name(attrs)


def self_signed_ca(name: x509.Name, validity: dt.timedelta = ROOT_VALIDITY,
                   path_length: int = 1) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A new self-signed P-256 CA: the cluster's root, and the API's and etcd's own CAs."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(_ROOT_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def create_root(cluster_id: str, unique: bool = False) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A new self-signed P-256 root. ``unique``: give it a subject no earlier root had."""
    return self_signed_ca(_root_name(cluster_id, unique))


def create_root_ca(cluster_id: str) -> tuple[str, str]:
    """A new self-signed P-256 root, returned as (certificate PEM, private key PEM)."""
    cert, key = create_root(cluster_id)
    return _pem(cert), key_to_pem(key)


def cross_sign(new_root: x509.Certificate, old_root: x509.Certificate,
               old_key: ec.EllipticCurvePrivateKey) -> str:
    """The new root's name and key, certified by the old root (PEM).

    During a rotation the manager sends it after its own certificate, so a node that still trusts
    only the old root can verify a server certificate issued by the new one.
    """
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(new_root.subject)
        .issuer_name(old_root.subject)
        .public_key(new_root.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(min(new_root.not_valid_after_utc, old_root.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ROOT_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(new_root.public_key()), critical=False)  # type: ignore[arg-type]
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(old_key.public_key()), critical=False)
        .sign(old_key, hashes.SHA256())
    )
    return _pem(cert)


def tls_info(root_pem: str) -> TLSInfo:
    """Docker's TLSInfo for a root: the PEM, and the issuer's subject and public key (base64 DER)."""
    cert = x509.load_pem_x509_certificate(root_pem.encode())
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return TLSInfo(
        TrustRoot=root_pem,
        CertIssuerSubject=base64.b64encode(cert.subject.public_bytes()).decode(),
        CertIssuerPublicKey=base64.b64encode(spki).decode(),
    )


def check_supplied_root(cert_pem: str, key_pem: str) -> None:
    """A root CA the user brings (``--ca-cert``/``--ca-key``): it must be a CA certificate with an
    EC key that matches it (the node certificates are ECDSA). Raises InvalidArgument otherwise."""
    from shoal.ca.certs import public_key_matches
    from shoal.errors import InvalidArgument

    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
        key = serialization.load_pem_private_key(key_pem.encode(), None)
    except ValueError as e:
        raise InvalidArgument(f"invalid CA certificate or key: {e}") from None
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise InvalidArgument("the supplied certificate is not a CA certificate")
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise InvalidArgument("the supplied CA key must be an EC (ECDSA) key")
    if not public_key_matches(cert_pem, key_pem):
        raise InvalidArgument("the supplied CA key does not match the CA certificate")
