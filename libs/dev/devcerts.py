"""A development CA and one certificate per identity, for ``make run`` and the tests (never for a cluster: the Helm
chart gets cert-manager's or its own).

``ensure(folder, identities)`` makes ``ca.pem`` (and its key, mode 0600) on first use and then, for every identity
that has none yet, ``<identity>.pem`` and ``<identity>-key.pem``: ECDSA P-256, common name the identity, and for
every certificate the names a local server is reached at (``<identity>``, ``localhost``, ``127.0.0.1``). Kept across
runs, like the other files under ``data/``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALID_DAYS = 3650


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "chatplane development"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _ca(folder: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path, key_path = folder / "ca.pem", folder / "ca-key.pem"
    if cert_path.exists() and key_path.exists():
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return cert, key
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("chatplane development CA"))
        .issuer_name(_name("chatplane development CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    _write_key(key_path, key)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def issue(folder: Path, identity: str, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    names = [x509.DNSName(identity), x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(identity))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_key(folder / f"{identity}-key.pem", key)
    (folder / f"{identity}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def ensure(folder: Path, identities: Iterable[str]) -> Path:
    """The CA and a certificate for each identity in ``folder`` (made when missing). Returns ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    ca, ca_key = _ca(folder)
    for identity in identities:
        if not (folder / f"{identity}.pem").exists() or not (folder / f"{identity}-key.pem").exists():
            issue(folder, identity, ca, ca_key)
    return folder


def env(folder: Path, identity: str) -> dict[str, str]:
    """The CHATPLANE_TLS_* variables of a process with this identity."""
    return {
        "CHATPLANE_TLS_CERT_FILE": str(folder / f"{identity}.pem"),
        "CHATPLANE_TLS_KEY_FILE": str(folder / f"{identity}-key.pem"),
        "CHATPLANE_TLS_CA_FILE": str(folder / "ca.pem"),
    }
