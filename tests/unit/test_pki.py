"""gatewayha.pki: the local CA and the server certificate it signs (make up TLS=1)."""

from __future__ import annotations

import ssl
import stat

from cryptography import x509

from gatewayha import pki


def _sans(path) -> set[str]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(v) for v in ext.get_values_for_type(x509.DNSName)} | {
        str(v) for v in ext.get_values_for_type(x509.IPAddress)
    }


def test_ensure_makes_a_ca_once_and_reissues_the_server_cert_only_when_needed(tmp_path):
    first = pki.ensure(tmp_path, ["127.0.0.1", "localhost"])
    assert first.ca_created and first.server_issued
    ca = first.ca_crt.read_bytes()
    server = first.server_pem.read_bytes()

    again = pki.ensure(tmp_path, ["127.0.0.1", "localhost"])
    assert not again.ca_created and not again.server_issued
    assert first.ca_crt.read_bytes() == ca and first.server_pem.read_bytes() == server

    renamed = pki.ensure(tmp_path, ["127.0.0.1", "gw.example"])
    assert not renamed.ca_created and renamed.server_issued
    assert first.ca_crt.read_bytes() == ca  # users keep trusting the same CA
    assert _sans(renamed.server_pem) == {"127.0.0.1", "gw.example"}


def test_keys_are_private_and_the_bundle_holds_the_ca(tmp_path):
    result = pki.ensure(tmp_path / "tls", ["127.0.0.1"])
    assert stat.S_IMODE((tmp_path / "tls").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "tls" / "ca.key").stat().st_mode) == 0o600
    assert stat.S_IMODE(result.server_pem.stat().st_mode) == 0o600
    assert result.ca_crt.read_bytes().strip() in result.bundle.read_bytes()


def test_the_server_cert_verifies_against_the_ca_and_only_for_its_names(tmp_path):
    result = pki.ensure(tmp_path, ["127.0.0.1", "localhost"])
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(result.server_pem)  # certificate then key, as HAProxy reads it
    cert = x509.load_pem_x509_certificate(result.server_pem.read_bytes())
    ca = x509.load_pem_x509_certificate(result.ca_crt.read_bytes())
    cert.verify_directly_issued_by(ca)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert _sans(result.server_pem) == {"127.0.0.1", "localhost"}


def test_a_server_cert_signed_by_another_ca_is_replaced(tmp_path):
    pki.ensure(tmp_path / "a", ["127.0.0.1"])
    other = pki.ensure(tmp_path / "b", ["127.0.0.1"])
    (tmp_path / "a" / "server.pem").write_bytes(other.server_pem.read_bytes())
    assert pki.ensure(tmp_path / "a", ["127.0.0.1"]).server_issued
