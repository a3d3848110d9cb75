"""The public port with HTTPS (issue 13) against a real HAProxy 2.6: TLS terminated for the API
and dashboards on the same port that passes scheduler TLS through by SNI, plain HTTP sent to
HTTPS, and the door's limits (connections, request rate, slow clients) per client address.

Clients that must count against the limits connect from 127.0.0.2: the template exempts
127.0.0.1, where every scheduler of a node sends its heartbeats from.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import threading
import time
import uuid
from pathlib import Path

import pytest
from haproxy_fixture import HAProxyProcess, NamedHTTPServer, TLSSchedulerStandIn, tls_connect

from gatewayha import pki
from gatewayha.routes import sync_maps
from helpers import wait_until

pytestmark = pytest.mark.skipif(not os.path.exists("/usr/sbin/haproxy"), reason="haproxy is not installed")

OUTSIDER = "127.0.0.2"  # a client the limits count (127.0.0.1 is exempt)


@pytest.fixture(scope="module")
def api():
    server = NamedHTTPServer("api-1")
    yield server
    server.close()


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return pki.ensure(tmp_path_factory.mktemp("pki"), ["127.0.0.1", "localhost"])


@pytest.fixture(scope="module")
def haproxy(tmp_path_factory, api, ca):
    proc = HAProxyProcess(
        tmp_path_factory.mktemp("haproxy-https"),
        [{"name": api.name, "address": api.address}],
        tls_crt=str(ca.server_pem),
        limit_conn_cur=6,
        limit_conn_rate=1000,
        limit_http_rate=30,
        timeout_http_request="2s",
    )
    try:
        yield proc.start()
    finally:
        proc.stop()


def https(port: int, ca: pki.Result, source: str = "127.0.0.1") -> http.client.HTTPSConnection:
    context = ssl.create_default_context(cafile=str(ca.ca_crt))
    return http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10, source_address=(source, 0))


def request(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None):
    conn.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
    response = conn.getresponse()
    raw = response.read()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, raw


def test_api_answers_over_https_verified_against_the_ca_with_hsts(haproxy, ca):
    conn = https(haproxy.port, ca)
    try:
        status, headers, raw = request(conn, "GET", "/api/v1/clusters/")
        # The same TLS session serves the next request (keep-alive).
        status2, _, _ = request(conn, "GET", "/api/health")
        peer = conn.sock.getpeercert()
    finally:
        conn.close()
    assert (status, status2) == (200, 200)
    assert json.loads(raw)["name"] == "api-1"
    assert headers["strict-transport-security"] == "max-age=31536000"
    assert ("IP Address", "127.0.0.1") in peer["subjectAltName"]


def test_a_client_that_does_not_trust_the_ca_refuses_the_server(haproxy):
    context = ssl.create_default_context()  # the system's CAs only
    conn = http.client.HTTPSConnection("127.0.0.1", haproxy.port, context=context, timeout=10)
    with pytest.raises(ssl.SSLCertVerificationError):
        conn.request("GET", "/api/health")
    conn.close()


def test_scheduler_tls_is_still_passed_through_on_the_same_port(haproxy, tmp_path: Path):
    scheduler = TLSSchedulerStandIn(tmp_path, "scheduler-https")
    name = uuid.uuid4().hex
    try:
        sync_maps(haproxy.runtime, haproxy.map_dir, {f"daskgateway-{name}": scheduler.address}, {})
        result = tls_connect(haproxy.port, f"daskgateway-{name}")
        # The scheduler's own greeting and certificate: HAProxy terminated nothing.
        assert result.greeting == "scheduler scheduler-https\n"
        assert result.peer_cert_der == scheduler.cert_der
        # A daskgateway- name nobody knows is refused, not answered with the API's certificate.
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            tls_connect(haproxy.port, f"daskgateway-{uuid.uuid4().hex}")
    finally:
        sync_maps(haproxy.runtime, haproxy.map_dir, {}, {})
        scheduler.close()


def test_plain_http_is_sent_to_https_keeping_the_method(haproxy, api):
    posts = api.posts
    conn = http.client.HTTPConnection("127.0.0.1", haproxy.port, timeout=10, source_address=(OUTSIDER, 0))
    try:
        status, headers, _ = request(conn, "GET", "/api/v1/clusters/?status=RUNNING")
        assert status == 308
        assert headers["location"] == f"https://127.0.0.1:{haproxy.port}/api/v1/clusters/?status=RUNNING"
        # A POST is redirected too (308: the client repeats it, body and method, over HTTPS)
        # and never reaches the API in clear.
        status, headers, _ = request(conn, "POST", "/api/v1/clusters/", b'{"cluster_options": {}}')
        assert status == 308 and headers["location"].startswith("https://")
        # Even a scheduler's call, when it does not come from this node's loopback.
        status, _, _ = request(conn, "POST", f"/api/v1/clusters/{uuid.uuid4().hex}/heartbeat", b"{}")
        assert status == 308
        # Load balancers' health checks stay plain.
        status, headers, raw = request(conn, "GET", "/api/health")
        assert status == 200 and json.loads(raw)["status"] == "pass"
        assert "strict-transport-security" not in headers
    finally:
        conn.close()
    assert api.posts == posts


def test_schedulers_of_this_node_still_report_in_plain_http_over_loopback(haproxy, api):
    posts = api.posts
    conn = http.client.HTTPConnection("127.0.0.1", haproxy.port, timeout=10)
    try:
        status, _, raw = request(conn, "POST", f"/api/v1/clusters/{uuid.uuid4().hex}/heartbeat", b"{}")
        # Anything else from loopback is still sent to HTTPS.
        other, _, _ = request(conn, "POST", "/api/v1/clusters/", b"{}")
    finally:
        conn.close()
    assert status == 200 and json.loads(raw)["name"] == "api-1"
    assert api.posts == posts + 1
    assert other == 308


def test_a_request_rate_above_the_limit_is_answered_429_json(haproxy, ca):
    outsider = https(haproxy.port, ca, source="127.0.0.5")
    statuses = []
    try:
        for _ in range(45):
            status, headers, raw = request(outsider, "GET", "/api/v1/clusters/")
            statuses.append(status)
            if status == 429:
                assert headers["content-type"] == "application/json"
                assert json.loads(raw)["error"].startswith("Too many requests")
                break
    finally:
        outsider.close()
    assert statuses[:30] == [200] * 30, statuses  # limit_http_rate 30 per 10 s
    assert statuses[-1] == 429, statuses
    # Another address is not affected: 127.0.0.1 (exempt) goes on.
    local = https(haproxy.port, ca)
    try:
        assert [request(local, "GET", "/api/v1/clusters/")[0] for _ in range(40)] == [200] * 40
    finally:
        local.close()


def _open_idle(port: int, source: str) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))


def _cut(sock: socket.socket) -> bool:
    """The server closed or reset this connection without answering."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def _conn_cur(haproxy, address: str) -> int:
    """What HAProxy's table counts for this address (0 when it has no entry)."""
    for line in haproxy.runtime.command("show table st_clients").splitlines():
        if f"key=::ffff:{address} " in line:
            return int(line.split("conn_cur=")[1].split()[0])
    return 0


def test_each_connection_counts_once_against_the_connection_rate(haproxy):
    """Requests are counted in a table of their own: were they tracked in st_clients, each
    connection would count twice there (tracking counts a connection) and clients would be cut
    at half the limit."""
    for _ in range(5):
        conn = http.client.HTTPConnection("127.0.0.1", haproxy.port, timeout=5, source_address=("127.0.0.6", 0))
        assert request(conn, "GET", "/api/health")[0] == 200
        conn.close()
    rates = [
        int(line.split("conn_rate(10000)=")[1].split()[0])
        for line in haproxy.runtime.command("show table st_clients").splitlines()
        if "key=::ffff:127.0.0.6 " in line
    ]
    assert rates == [5], rates


def test_open_connections_above_the_limit_are_cut_at_once(haproxy):
    held = [_open_idle(haproxy.port, "127.0.0.3") for _ in range(6)]  # limit_conn_cur 6
    try:
        # The kernel completes a handshake before HAProxy accepts it: wait until HAProxy holds
        # all six, so the next one is the 7th it sees.
        wait_until(lambda: _conn_cur(haproxy, "127.0.0.3") == 6, 5, "HAProxy to count six connections")
        t0 = time.monotonic()
        try:
            extra = _open_idle(haproxy.port, "127.0.0.3")
        except ConnectionResetError:
            pass  # reset already while connecting: refused
        else:
            extra.settimeout(1.5)
            assert _cut(extra), "a 7th open connection from one address is refused"
            extra.close()
        assert time.monotonic() - t0 < 1.5
        # A held one is still served (it was within the limit).
        held[0].sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        held[0].settimeout(5)
        assert held[0].recv(64).startswith(b"HTTP/1.1 200")
    finally:
        for sock in held:
            sock.close()


def test_a_slowloris_client_is_dropped_and_the_api_stays_responsive(haproxy):
    """Headers one byte a second: cut after inspect-delay (5 s) + timeout_http_request (2 s),
    while other clients are answered at once."""
    slow = _open_idle(haproxy.port, "127.0.0.4")
    slow.settimeout(0.9)
    payload = b"GET /api/v1/clusters/ HTTP/1.1\r\nHost: gateway\r\nX-Slow: " + b"a" * 60
    latencies, answer, stop = [], [], threading.Event()

    def others():
        while not stop.is_set():
            t0 = time.monotonic()
            conn = http.client.HTTPConnection("127.0.0.1", haproxy.port, timeout=5)
            conn.request("GET", "/api/health")
            assert conn.getresponse().status == 200
            conn.close()
            latencies.append(time.monotonic() - t0)
            stop.wait(0.3)

    watcher = threading.Thread(target=others)
    watcher.start()
    t0 = time.monotonic()
    try:
        for byte in payload:
            try:
                slow.sendall(bytes([byte]))
                data = slow.recv(4096)
            except TimeoutError:
                continue  # nothing yet: the next byte
            except (BrokenPipeError, ConnectionResetError):
                break
            answer.append(data)
            break  # an answer (408) or EOF: it was cut
    finally:
        elapsed = time.monotonic() - t0
        stop.set()
        watcher.join(10)
        slow.close()
    assert answer or elapsed < len(payload), "the slow client was never cut"
    assert elapsed < 5 + 2 + 5, f"cut only after {elapsed:.1f}s"
    if answer and answer[0]:
        # HAProxy 2.6's HTTP/1 layer answers this timeout itself, with its built-in HTML page:
        # neither http-error nor errorfile reach it (tried). The status is what clients act on.
        assert answer[0].startswith(b"HTTP/1.1 408"), answer[0][:80]
    assert latencies and max(latencies) < 2.0, latencies


def test_an_unknown_server_name_gets_the_public_certificate_which_does_not_verify_for_it(haproxy, ca):
    """A TLS client asking for a name this gateway is not (and not daskgateway-*) is answered
    with the public certificate: a verifying client refuses the connection itself."""
    context = ssl.create_default_context(cafile=str(ca.ca_crt))
    with socket.create_connection(("127.0.0.1", haproxy.port), timeout=5) as raw:
        with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
            context.wrap_socket(raw, server_hostname="evil.example")
    with socket.create_connection(("127.0.0.1", haproxy.port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
