"""The gateway's own HTTPS when nobody hands it a certificate: a private CA kept in a
directory, and a server certificate it signs for the names the public port answers to.

``ensure(dir, sans)`` is idempotent: the CA is made once and kept (its certificate is what
users trust); the server certificate is issued again only when it is missing, expires
within ``RENEW_DAYS`` or no longer covers the names asked for. The local stack calls it
through ``gatewayha-admin pki`` (``make up TLS=1``).

Files (the keys 0600, the rest 0644):
    ca.crt         the CA certificate: trust this
    ca.key         the CA key
    server.pem     server certificate, then its key: HAProxy's ``crt``
    ca-bundle.pem  the system's trusted CAs plus ca.crt: for SSL_CERT_FILE, so the stock
                   dask-gateway client (aiohttp, ssl.create_default_context) trusts both
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gatewayha.files import write_atomic

CA_DAYS = 3650
SERVER_DAYS = 397  # what browsers accept for a server certificate
RENEW_DAYS = 30


@dataclass(frozen=True)
class Result:
    ca_created: bool
    server_issued: bool
    ca_crt: Path
    server_pem: Path
    bundle: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "gatewayha"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _general_name(san: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(san))
    except ValueError:
        return x509.DNSName(san)


def _pem_key(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def new_ca(common_name: str, days: int = CA_DAYS) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) of a new CA that signs server certificates only."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )  # keyCertSign, cRLSign
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def new_server_cert(ca_crt: bytes, ca_key: bytes, sans: list[str], days: int = SERVER_DAYS) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) for a TLS server answering to ``sans`` (names or IPs)."""
    if not sans:
        raise ValueError("a server certificate needs at least one name or address")
    ca = x509.load_pem_x509_certificate(ca_crt)
    signer = serialization.load_pem_private_key(ca_key, password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(sans[0]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([_general_name(s) for s in sans]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.public_key()), critical=False)
        .sign(signer, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def _needs_new_server_cert(pem: Path, ca_crt: bytes, sans: list[str]) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(pem.read_bytes())
    except (FileNotFoundError, ValueError):
        return True
    try:
        cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_crt))
    except (ValueError, TypeError, InvalidSignature):
        return True  # signed by another CA (one made before this one, say)
    if cert.not_valid_after_utc < dt.datetime.now(dt.UTC) + dt.timedelta(days=RENEW_DAYS):
        return True
    try:
        have = set(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        return True
    return have != {_general_name(s) for s in sans}


def system_ca_file() -> Path | None:
    """The system's trusted CA bundle (Debian: /etc/ssl/certs/ca-certificates.crt)."""
    for candidate in (ssl.get_default_verify_paths().cafile, "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def ensure(directory: str | os.PathLike[str], sans: list[str], ca_name: str = "gatewayha local CA") -> Result:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    ca_crt_path, ca_key_path = d / "ca.crt", d / "ca.key"
    ca_created = not (ca_crt_path.is_file() and ca_key_path.is_file())
    if ca_created:
        ca_crt, ca_key = new_ca(ca_name)
        write_atomic(ca_key_path, ca_key.decode(), mode=0o600)
        write_atomic(ca_crt_path, ca_crt.decode(), mode=0o644)
    ca_crt, ca_key = ca_crt_path.read_bytes(), ca_key_path.read_bytes()
    server_pem = d / "server.pem"
    issued = ca_created or _needs_new_server_cert(server_pem, ca_crt, sans)
    if issued:
        crt, key = new_server_cert(ca_crt, ca_key, sans)
        write_atomic(server_pem, (crt + key).decode(), mode=0o600)
    system = system_ca_file()
    bundle = d / "ca-bundle.pem"
    write_atomic(bundle, ((system.read_bytes() if system else b"") + b"\n" + ca_crt).decode(), mode=0o644)
    return Result(ca_created, issued, ca_crt_path, server_pem, bundle)
