"""Per-cluster TLS: an ECDSA P-256 keypair and self-signed cert per cluster.

The dask-gateway client trusts the cluster cert as its CA, does not check host
names, and presents the same cert+key as its client cert; schedulers and
workers use the same pair. The scheduler's control API (``/api/comm``) serves it
too, and the API trusts that one cert and nothing else there
(``gatewayha.control``). The key is stored encrypted (AES-GCM under a key
derived from the server secret) and only decrypted to hand it to the owner or
to a launcher.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import hmac
import os
from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509.oid import NameOID

from gatewayha.auth import secrets as sec

# The one name in every cluster cert (what Dask's TLS expects; clients do not check it).
CLUSTER_SAN = "dask-internal"


def new_keypair(cluster_name: str, days: int = 3650) -> tuple[str, str]:
    """Return (cert_pem, key_pem) for one cluster, SAN ``dask-internal``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cluster_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(CLUSTER_SAN)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return cert_pem, key_pem


@functools.lru_cache(maxsize=4)
def _aead(secret: str) -> AESGCM:
    # Derived once per secret: every GET of a RUNNING cluster decrypts its key (profiled: deriving
    # the AEAD key was about 5 % of the API's CPU in that GET).
    return AESGCM(hmac.new(secret.encode(), b"gatewayha tls-key encryption v1", hashlib.sha256).digest())


def encrypt_key(secret: str, key_pem: str, cluster_name: str) -> bytes:
    """Encrypt a key PEM; the cluster name is bound as associated data."""
    nonce = os.urandom(12)
    return nonce + _aead(secret).encrypt(nonce, key_pem.encode(), cluster_name.encode())


def decrypt_key(secrets: str | Sequence[str], blob: bytes, cluster_name: str) -> str:
    """Decrypt with the current secret, else a previous one (AES-GCM tells which key fits:
    a wrong one fails authentication, InvalidTag from the last). ``gatewayha-admin reencrypt``
    moves every stored key to the current secret, so previous ones can then be dropped."""
    blob = bytes(blob)
    *earlier, last = sec.ring(secrets)
    for secret in earlier:
        try:
            return _aead(secret).decrypt(blob[:12], blob[12:], cluster_name.encode()).decode()
        except InvalidTag:
            pass
    return _aead(last).decrypt(blob[:12], blob[12:], cluster_name.encode()).decode()


def needs_reencryption(secret: str, blob: bytes, cluster_name: str) -> bool:
    """Whether ``blob`` was encrypted under another secret than ``secret`` (the current one)."""
    blob = bytes(blob)
    try:
        _aead(secret).decrypt(blob[:12], blob[12:], cluster_name.encode())
    except InvalidTag:
        return True
    return False


def encrypt_token(secret: str, token: str, cluster_name: str) -> bytes:
    """A cluster token encrypted like its key, bound to the cluster and to its purpose."""
    return encrypt_key(secret, token, f"{cluster_name}:token")


def decrypt_token(secret: str | Sequence[str], blob: bytes, cluster_name: str) -> str:
    return decrypt_key(secret, blob, f"{cluster_name}:token")
