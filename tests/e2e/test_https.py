"""HTTPS on the public port (issue 13) with the stock dask-gateway client: `make up TLS=1`
(the tls_stack fixture, started as stack.sh does for it) against the plain `make up`.

The client is run in a fresh process that only sources the stack's local.env: what that file
sets (SSL_CERT_FILE) is all it needs to trust the stack's own CA.
"""

from __future__ import annotations

import base64
import datetime as dt
import http.client
import json
import socket
import ssl
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from helpers import children, wait_until

CLIENT_SCRIPT = textwrap.dedent(
    """
    import json, os, ssl, urllib.request
    from dask_gateway import Gateway

    out = {"address": os.environ["DASK_GATEWAY__ADDRESS"]}
    with Gateway() as gateway:
        cluster = gateway.new_cluster()
        try:
            cluster.scale(1)
            client = cluster.get_client()
            out["result"] = client.submit(lambda x: x + 1, 41).result(timeout=120)
            out["scheduler_address"] = cluster.scheduler_address
            out["dashboard_link"] = cluster.dashboard_link
            client.close()
        finally:
            cluster.shutdown()
    # The system's CAs plus the stack's (SSL_CERT_FILE): the dashboard link verifies too.
    try:
        urllib.request.urlopen(out["dashboard_link"], timeout=10)
    except urllib.error.HTTPError as exc:
        out["dashboard_status"] = exc.code  # not logged in: the API's 401, over verified TLS
    print(json.dumps(out))
    """
)


def _listeners(port: int) -> set[str]:
    """Local addresses (hex, as /proc/net/tcp spells them) listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].split(":")
            if fields[3] == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


def _https(stack, source: str = "127.0.0.1") -> http.client.HTTPSConnection:
    context = ssl.create_default_context(cafile=str(stack.state / "tls" / "ca.crt"))
    return http.client.HTTPSConnection("127.0.0.1", stack.port, context=context, timeout=10, source_address=(source, 0))


def _basic(stack) -> dict[str, str]:
    user, password = stack.credentials()
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_both_stacks_listen_on_loopback_only_and_say_so(stack, tls_stack):
    for s in (stack, tls_stack):
        for port in (s.port, *s.api_ports):
            assert _listeners(port) == {"0100007F"}, (port, _listeners(port))  # 127.0.0.1 only
        assert f"Listening on 127.0.0.1:{s.port} only (loopback)" in s.up_output
    assert "HTTPS with this stack's own CA" in tls_stack.up_output


def test_the_tls_stack_runs_gunicorn_and_the_plain_stack_granian(stack, tls_stack):
    """make up WSGI=gunicorn (the TLS stack) really runs gunicorn: the stock client's tests over
    HTTPS exercise it, the other e2e tests granian."""
    assert "under granian" in stack.up_output and "under gunicorn" in tls_stack.up_output
    for s, wsgi in ((stack, "granian"), (tls_stack, "gunicorn")):
        for port in s.api_ports:
            main = s.pid(f"api-{port}")
            [worker] = children(main)  # one worker process, a child of the instance's main one
            assert s.served_by(port) == wsgi, (s.state.name, port)
            cmdline = Path(f"/proc/{main}/cmdline").read_bytes().split(b"\0")
            assert cmdline[cmdline.index(b"--wsgi") + 1] == wsgi.encode()
            # granian's Rust extension is loaded in both processes under granian, in none under gunicorn.
            loaded = ["_granian" in Path(f"/proc/{pid}/maps").read_text() for pid in (main, worker)]
            assert loaded == [wsgi == "granian"] * 2, (s.state.name, port, loaded)
            log = (s.state / "log" / f"api-{port}.log").read_text()
            if wsgi == "gunicorn":
                assert f"INFO gunicorn Booting worker with pid: {worker}" in log
                assert "gunicorn Using worker: gthread" in log


def test_the_stock_client_works_over_https_with_only_local_env(tls_stack):
    env_file = tls_stack.state / "local.env"
    assert "export SSL_CERT_FILE=" in env_file.read_text()
    out = subprocess.run(
        ["bash", "-c", f'. {env_file} && exec {sys.executable} -c "$SCRIPT"'],
        env={"PATH": "/usr/bin:/bin", "SCRIPT": CLIENT_SCRIPT, "HOME": str(tls_stack.state)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["address"] == f"https://127.0.0.1:{tls_stack.port}"
    assert report["result"] == 42
    # Scheduler TLS on the same port, passed through by SNI (gateway://...).
    assert report["scheduler_address"].startswith(f"gateway://127.0.0.1:{tls_stack.port}/")
    assert report["dashboard_link"].startswith(f"https://127.0.0.1:{tls_stack.port}/clusters/")
    assert report["dashboard_status"] == 401


def test_without_the_ca_the_client_refuses_the_server(tls_stack):
    context = ssl.create_default_context()  # the system's CAs only
    conn = http.client.HTTPSConnection("127.0.0.1", tls_stack.port, context=context, timeout=10)
    with pytest.raises(ssl.SSLCertVerificationError):
        conn.request("GET", "/api/health")
    conn.close()


def test_plain_http_is_redirected_the_session_cookie_is_secure_and_hsts_is_sent(tls_stack):
    for source in ("127.0.0.1", "127.0.0.2"):
        conn = http.client.HTTPConnection("127.0.0.1", tls_stack.port, timeout=10, source_address=(source, 0))
        conn.request("GET", "/api/v1/clusters/", headers=_basic(tls_stack))
        response = conn.getresponse()
        response.read()
        conn.close()
        assert response.status == 308, source
        assert response.getheader("Location") == f"https://127.0.0.1:{tls_stack.port}/api/v1/clusters/"
        assert response.getheader("Set-Cookie") is None  # the API never saw the password
    conn = _https(tls_stack)
    conn.request("GET", "/api/v1/clusters/", headers=_basic(tls_stack))
    response = conn.getresponse()
    assert response.status == 200, response.read()
    response.read()
    conn.close()
    cookie = response.getheader("Set-Cookie")
    assert cookie and "Secure" in cookie and "HttpOnly" in cookie, cookie
    assert response.getheader("Strict-Transport-Security") == "max-age=31536000"


def test_scheduler_tls_refuses_strangers_and_the_api_logs_no_error(tls_stack):
    """A daskgateway- SNI naming no cluster, and a client without the cluster's certificate or
    with another cluster's: refused at the TLS layer, and nothing reaches the API's error log."""
    logs = sorted((tls_stack.state / "log").glob("api-*.log"))
    before = {p: p.stat().st_size for p in logs}

    def api(method: str, path: str, body: dict | None = None) -> dict:
        conn = _https(tls_stack)
        try:
            conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=_basic(tls_stack))
            response = conn.getresponse()
            data = json.loads(response.read() or b"null")
        finally:
            conn.close()
        assert response.status < 300, (response.status, data)
        return data

    def running(name: str) -> dict:
        return wait_until(
            lambda: (r := api("GET", f"/api/v1/clusters/{name}"))["status"] == "RUNNING" and r, 120, f"{name} RUNNING"
        )

    a = api("POST", "/api/v1/clusters/", {"cluster_options": {}})["name"]
    b = api("POST", "/api/v1/clusters/", {"cluster_options": {}})["name"]
    try:
        running(a)
        theirs = running(b)
        tmp = tls_stack.state / "attacker"
        tmp.mkdir(exist_ok=True)
        (tmp / "b.crt").write_text(theirs["tls_cert"])
        (tmp / "b.key").write_text(theirs["tls_key"])

        # An expired certificate made with b's own key (b's certificate is its CA): what a
        # tenant holding its key could forge. The scheduler must refuse it all the same.
        key = serialization.load_pem_private_key(theirs["tls_key"].encode(), password=None)
        issuer = x509.load_pem_x509_certificate(theirs["tls_cert"].encode())
        long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
        expired = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "expired")]))
            .issuer_name(issuer.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(long_ago - dt.timedelta(days=1))
            .not_valid_after(long_ago)
            .sign(key, hashes.SHA256())
        )
        (tmp / "expired.crt").write_bytes(expired.public_bytes(serialization.Encoding.PEM))

        def outcome(sni: str, cert: str | None) -> str:
            """ "refused" (alert, reset or EOF from the server) or "accepted" (the scheduler
            waits for us to speak: a Dask comm is open)."""
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            if cert:
                ctx.load_cert_chain(tmp / cert, tmp / "b.key")
            try:
                with socket.create_connection(("127.0.0.1", tls_stack.port), timeout=10) as raw:
                    with ctx.wrap_socket(raw, server_hostname=sni) as tls:
                        tls.settimeout(2)
                        # TLS 1.3: a refused client certificate shows on the first read.
                        return "refused" if tls.recv(1) == b"" else "accepted"
            except TimeoutError:
                return "accepted"
            except (ssl.SSLError, ConnectionError):
                return "refused"

        assert outcome("daskgateway-" + "0" * 32, "b.crt") == "refused"  # names no cluster
        assert outcome(f"daskgateway-{a}", None) == "refused"  # no client certificate
        assert outcome(f"daskgateway-{a}", "b.crt") == "refused"  # b's certificate for a's scheduler
        assert outcome(f"daskgateway-{b}", "expired.crt") == "refused"  # b's key, but expired
        # The right certificate for the right scheduler is let in (the test tells them apart).
        assert outcome(f"daskgateway-{b}", "b.crt") == "accepted"
    finally:
        api("DELETE", f"/api/v1/clusters/{a}")
        api("DELETE", f"/api/v1/clusters/{b}")
    grown = "".join(p.read_text(errors="replace")[before.get(p, 0) :] for p in logs)
    assert "Traceback" not in grown and " ERROR " not in grown, grown[-3000:]


def test_a_heartbeat_from_loopback_keeps_a_cluster_running_over_plain_http(tls_stack):
    """The schedulers of a node report to http://127.0.0.1:<port>/api: not redirected."""
    with tls_stack.db() as db:
        running = wait_until(
            lambda: db.execute("SELECT count(*) AS n FROM warm_pool WHERE last_heartbeat IS NOT NULL").fetchone()["n"],
            60,
            "the pooled schedulers of the TLS stack to report",
        )
    assert running >= 1
