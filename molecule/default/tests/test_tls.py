"""TLS inside the appliance: the CA the playbook creates (roles/pki) and Postgres over TLS.

The CA lives on the controller next to the molecule inventory (gatewayha_pki_dir's default);
every node has its certificate in /etc/gatewayha/tls and the system trust store. The database
checks act as a client that tries to do without TLS or with the wrong name.
"""

import base64
import socket
import ssl
import sys
import urllib.error
import urllib.request
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


# --------------------------------------------------------------------------- the public port


@pytest.mark.parametrize("vip", [gwtest.VIP_A, gwtest.VIP_B])
def test_the_public_port_serves_https_with_the_public_certificate(vip):
    served = gwtest.served_certificate(vip)
    bundle = gwtest.node("gw1").run(f"openssl x509 -outform DER -in {TLS}/public.pem | base64 -w0").stdout
    assert served == base64.b64decode(bundle), "the VIP serves another certificate than public.pem"
    # Without the CA, a client refuses it (nothing trusts a self-made CA by accident).
    with pytest.raises(ssl.SSLCertVerificationError):
        ctx = ssl.create_default_context(cafile=ssl.get_default_verify_paths().openssl_cafile)
        with socket.create_connection((vip, gwtest.PORT), timeout=10) as raw:
            ctx.wrap_socket(raw, server_hostname=vip)


def _plain(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    try:
        request = urllib.request.Request(url, headers=headers or {})
        with urllib.request.build_opener(gwtest._NoRedirect).open(request, timeout=10) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}


@pytest.mark.parametrize("vip", [gwtest.VIP_A, gwtest.VIP_B])
def test_plain_http_is_redirected_but_the_health_check_and_https_sends_hsts(vip):
    basic = "Basic " + base64.b64encode(b"demo:demo-password").decode()
    status, headers = _plain(f"http://{vip}:{gwtest.PORT}/api/v1/clusters/?x=1", {"Authorization": basic})
    assert status == 308, (status, headers)
    assert headers["location"] == f"https://{vip}:{gwtest.PORT}/api/v1/clusters/?x=1", headers
    assert gwtest.http_get(f"http://{vip}:{gwtest.PORT}/api/health")[0] == 200, "load balancers' health check"
    status, headers = _plain(f"https://{vip}:{gwtest.PORT}/api/v1/clusters/", {"Authorization": basic})
    assert status == 200, status
    assert headers["strict-transport-security"] == "max-age=31536000"
    cookie = headers["set-cookie"]
    assert cookie.startswith("gatewayha-session=") and "; Secure" in cookie and "HttpOnly" in cookie, cookie


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


# --------------------------------------------------------------------------- HAProxy -> API instances


def _relay_get(gw: str, target: str, *curl_args: str) -> str:
    """curl (from gateway node ``gw``) the health check of ``target``'s first API instance through
    its TLS relay, verifying the server against the CA under the target's name; the HTTP status
    (000: no answer)."""
    url = f"https://{target}:{gwtest.API_PORTS[0] + gwtest.RELAY_OFFSET}/api/health"
    resolve = f"{target}:{gwtest.API_PORTS[0] + gwtest.RELAY_OFFSET}:{gwtest.NODE_IP[target]}"
    out = gwtest.node(gw).run(
        f"curl -s -m 10 -o /dev/null -w '%{{http_code}}' --cacert {TLS}/ca.crt --resolve {resolve} "
        f"{' '.join(curl_args)} {url}"
    )
    return out.stdout.strip()


def test_relays_answer_only_with_a_client_certificate_of_the_ca():
    """gw2 (past the firewall) reaches gw1's instance through the relay only with its node
    certificate; without one the TLS handshake is refused; the instance's own port is not on
    the node's address at all."""
    assert _relay_get("gw2", "gw1", f"--cert {TLS}/node.crt --key {TLS}/node.key") == "200"
    assert _relay_get("gw2", "gw1") == "000"
    # A certificate of another CA: refused as well.
    gw2 = gwtest.node("gw2")
    made = gw2.run(
        "cd /tmp && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 "
        "-subj /CN=gw2 -keyout /tmp/other.key -out /tmp/other.crt 2>&1"
    )
    assert made.rc == 0, made.stdout
    assert _relay_get("gw2", "gw1", "--cert /tmp/other.crt --key /tmp/other.key") == "000"
    # The instances' own ports: dropped from gw2 (firewall), and not even on gw1's address (gw1
    # itself, past the firewall, is refused).
    instances = [(gwtest.NODE_IP["gw1"], port) for port in gwtest.API_PORTS]
    assert set(gwtest.tcp_probe("gw2", instances).values()) == {"timeout"}
    assert set(gwtest.tcp_probe("gw1", instances).values()) == {"refused"}


@pytest.mark.parametrize("gw", gwtest.GATEWAYS)
def test_haproxy_reaches_other_nodes_instances_over_verified_tls(gw):
    cfg = gwtest.node(gw).run("cat /etc/haproxy/haproxy.cfg").stdout
    other = next(g for g in gwtest.GATEWAYS if g != gw)
    for port in gwtest.API_PORTS:
        assert f"server {gw}-{port} 127.0.0.1:{port}\n" in cfg, cfg
        remote = f"server {other}-{port} {gwtest.NODE_IP[other]}:{port + gwtest.RELAY_OFFSET} ssl verify required "
        assert remote in cfg and f"verifyhost {other}" in cfg, cfg
    # No scheduler may claim a relay's port (a route to it would hand the relay tenants' traffic).
    toml = gwtest.node(gw).file("/etc/gatewayha/gatewayha.toml").content_string
    relays = ",".join(str(p + gwtest.RELAY_OFFSET) for p in gwtest.API_PORTS)
    assert f'reserved_ports = "8101,8102,{relays}"' in toml, toml
    states = gwtest.haproxy_servers(gwtest.node(gw))
    assert all(state.startswith("UP") for state in states.values()) and len(states) == 4, states
