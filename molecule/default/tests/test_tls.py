"""TLS inside the appliance: the CA the playbook creates (roles/pki) and Postgres over TLS.

The CA lives on the controller next to the molecule inventory (gatewayha_pki_dir's default);
every node has its certificate in /etc/gatewayha/tls and the system trust store. The database
checks act as a client that tries to do without TLS or with the wrong name.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared"))
import gwtest  # noqa: E402

NODES = ("gw1", "gw2", "db1")
TLS = "/etc/gatewayha/tls"


def _pki_dir() -> Path:
    return Path(gwtest.inventory()) / "pki"


def _mode(path: Path) -> str:
    return oct(path.stat().st_mode & 0o777)


def test_the_ca_is_kept_on_the_controller_with_a_private_key():
    pki = _pki_dir()
    assert _mode(pki) == "0o700"
    assert _mode(pki / "ca.key") == "0o600"
    assert "BEGIN CERTIFICATE" in (pki / "ca.crt").read_text()


@pytest.mark.parametrize("name", NODES)
def test_every_node_has_the_ca_its_certificate_and_trusts_the_ca(name):
    host = gwtest.node(name)
    ca = (_pki_dir() / "ca.crt").read_text().strip()
    assert host.file(f"{TLS}/ca.crt").content_string.strip() == ca
    key = host.file(f"{TLS}/node.key")
    assert (key.user, key.group, key.mode) == ("root", "ssl-cert", 0o640)
    # Signed by the CA, names: the node's address and inventory hostname.
    out = host.run(f"openssl verify -CAfile {TLS}/ca.crt {TLS}/node.crt")
    assert out.rc == 0, out.stdout + out.stderr
    san = host.run(f"openssl x509 -noout -ext subjectAltName -in {TLS}/node.crt").stdout
    assert f"IP Address:{gwtest.NODE_IP[name]}" in san and f"DNS:{name}" in san, san
    # The system trust store has it: openssl (and curl, Python) verify without being told the CA.
    out = host.run(f"openssl verify {TLS}/node.crt")
    assert out.rc == 0, "the CA is not in the system trust store: " + out.stdout + out.stderr


@pytest.mark.parametrize("gw", gwtest.GATEWAYS)
def test_public_certificate_bundle_on_gateway_nodes(gw):
    host = gwtest.node(gw)
    bundle = host.file(f"{TLS}/public.pem")
    assert (bundle.user, bundle.group, bundle.mode) == ("root", "root", 0o600)
    text = bundle.content_string
    assert "BEGIN CERTIFICATE" in text and "PRIVATE KEY" in text
    san = host.run(f"openssl x509 -noout -ext subjectAltName -in {TLS}/public.pem").stdout
    assert f"IP Address:{gwtest.VIP_A}" in san and f"IP Address:{gwtest.VIP_B}" in san, san
    # The key is the certificate's.
    cert_key = host.run(f"openssl x509 -noout -pubkey -in {TLS}/public.pem").stdout
    key = host.run(f"openssl pkey -pubout -in {TLS}/public.pem").stdout
    assert cert_key and cert_key == key, "the bundle's key does not match its certificate"
    assert host.run(f"openssl verify {TLS}/public.pem").rc == 0


def test_db_node_has_no_public_bundle():
    assert not gwtest.node("db1").file(f"{TLS}/public.pem").exists


# --------------------------------------------------------------------------- Postgres


def test_pg_hba_refuses_a_connection_without_tls():
    """The right password from a gateway node, but sslmode=disable: no pg_hba.conf line admits it."""
    result = gwtest.pgconnect_on("gw1", gwtest.NODE_IP["db1"], "sslmode=disable")
    assert result["connected"] is False
    assert 'no pg_hba.conf entry for host "172.30.0.11"' in result["error"], result
    assert "no encryption" in result["error"], result


def test_pg_hba_has_no_plain_host_line_for_remote_addresses():
    lines = gwtest.node("db1").file("/etc/postgresql/15/main/pg_hba.conf").content_string.splitlines()
    rules = [line.split() for line in lines if line.strip() and not line.startswith("#")]
    remote = [r for r in rules if r[0] != "local" and r[3] not in ("127.0.0.1/32", "::1/128")]
    assert remote and all(r[0] == "hostssl" for r in remote), rules


def test_the_gateways_connections_are_tls():
    rows = gwtest.sql(
        "SELECT s.ssl, s.version, a.client_addr FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
        "WHERE a.usename = 'gatewayha'"
    )
    gwtest.log(f"gatewayha's connections (ssl, version, client): {sorted({tuple(r) for r in rows})}")
    assert rows, "no connection of the gatewayha role"
    assert all(r[0] == "t" for r in rows), rows
    assert {r[2] for r in rows} == {gwtest.NODE_IP[gw] for gw in gwtest.GATEWAYS}


@pytest.mark.parametrize("gw", gwtest.GATEWAYS)
def test_the_gateway_dsn_verifies_the_server(gw):
    config = gwtest.node(gw).file("/etc/gatewayha/gatewayha.toml").content_string
    dsn = next(line for line in config.splitlines() if line.startswith("dsn ="))
    assert "sslmode=verify-full" in dsn and "sslrootcert=" in dsn and f"@{gwtest.NODE_IP['db1']}:" in dsn
    # What the gateway does: verify-full against the CA, by the address in the DSN.
    ok = gwtest.pgconnect_on(gw, gwtest.NODE_IP["db1"], "sslmode=verify-full", f"sslrootcert={TLS}/ca.crt")
    assert ok == {"connected": True, "select": 1, "ssl": True}


def test_verify_full_refuses_a_server_under_another_name():
    """The same server at the same address, but asked for by a name its certificate does not
    carry: verify-full refuses it (the name check is really made)."""
    result = gwtest.pgconnect_on(
        "gw1", "wrong.example", f"hostaddr={gwtest.NODE_IP['db1']}", "sslmode=verify-full", f"sslrootcert={TLS}/ca.crt"
    )
    assert result["connected"] is False
    assert 'does not match host name "wrong.example"' in result["error"], result
