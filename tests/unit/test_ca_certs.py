"""Certificate helpers and the node's saved credentials."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from shoal.ca.certs import (
    cert_identity,
    generate_key_and_csr,
    issue_node_cert,
    load_csr,
    public_key_matches,
    split_pem,
    write_private,
)
from shoal.ca.rootca import create_root, create_root_ca, tls_info
from shoal.ca.tokens import ca_digest
from shoal.errors import InvalidArgument
from shoal.models import NodeRole
from shoal.transport.bootstrap import CERT_FILE, KEY_FILE, NodeCredentials, load_credentials, save_credentials


def test_split_pem_keeps_each_certificate_exactly() -> None:
    a, b = create_root_ca("a")[0], create_root_ca("b")[0]
    assert split_pem(a + b) == [a, b]
    assert ca_digest(split_pem(a + b)[1]) == ca_digest(b)
    assert split_pem("") == []


def test_csr_round_trip_and_bad_csrs() -> None:
    key_pem, csr_pem = generate_key_and_csr()
    csr = load_csr(csr_pem)
    root, root_key = create_root("c1")
    cert_pem = issue_node_cert(csr.public_key(), root, root_key, "n1", NodeRole.WORKER, "c1", "10.0.0.5:2377",
                               dt.timedelta(hours=1))
    assert public_key_matches(cert_pem, key_pem)
    ident = cert_identity(cert_pem)
    assert (ident.node_id, ident.role, ident.cluster_id) == ("n1", NodeRole.WORKER, "c1")
    for bad in ("", "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"):
        with pytest.raises(InvalidArgument):
            load_csr(bad)


def test_roots_have_key_identifiers_and_tls_info() -> None:
    cert_pem, _ = create_root_ca("c1")
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    info = tls_info(cert_pem)
    assert info.TrustRoot == cert_pem and info.CertIssuerSubject and info.CertIssuerPublicKey


def test_write_private_is_0600(tmp_path: Path) -> None:
    p = tmp_path / "secret"
    p.write_text("old")
    p.chmod(0o644)
    write_private(p, "new")
    assert p.read_text() == "new" and stat.S_IMODE(p.stat().st_mode) == 0o600


def _creds() -> NodeCredentials:
    root, root_key = create_root("c1")
    key_pem, csr_pem = generate_key_and_csr()
    cert_pem = issue_node_cert(load_csr(csr_pem).public_key(), root, root_key, "n1", NodeRole.MANAGER, "c1",
                               "10.0.0.5", dt.timedelta(hours=1))
    root_pem = root.public_bytes(serialization.Encoding.PEM).decode()
    return NodeCredentials("n1", NodeRole.MANAGER, cert_pem, key_pem, root_pem, "10.0.0.1:2377")


def test_credentials_round_trip(tmp_path: Path) -> None:
    creds = _creds()
    assert load_credentials(tmp_path / "none") is None
    save_credentials(tmp_path / "certs", creds)
    assert load_credentials(tmp_path / "certs") == creds
    assert stat.S_IMODE((tmp_path / "certs" / KEY_FILE).stat().st_mode) == 0o600
    assert creds.root_digest == ca_digest(creds.root_pem)


def test_credentials_survive_a_save_interrupted_half_way(tmp_path: Path) -> None:
    old, new = _creds(), _creds()
    d = tmp_path / "certs"
    save_credentials(d, old)
    # The new key went in, the new certificate is still only written aside.
    write_private(d / (CERT_FILE + ".new"), new.cert_pem)
    write_private(d / KEY_FILE, new.key_pem)
    loaded = load_credentials(d)
    assert loaded is not None and loaded.cert_pem == new.cert_pem and loaded.key_pem == new.key_pem
