"""Dashboard access on a real HAProxy 2.6: a request reaches the tenant's dashboard server only
with a valid dashboard token for that very cluster (checked by HAProxy's jwt_verify, no round
trip), and never carries the visitor's credentials there. The stand-in dashboard plays the
tenant: it records every header it is sent, and tries to set a cookie."""

from __future__ import annotations

import http.client
import http.server
import json
import os
import threading
import time
import uuid
from pathlib import Path

import pytest
from haproxy_fixture import TEST_SECRET, HAProxyProcess, NamedHTTPServer, http_get, running_haproxy

from gatewayha import dashboards
from gatewayha.routes import sync_maps

pytestmark = pytest.mark.skipif(not os.path.exists("/usr/sbin/haproxy"), reason="haproxy is not installed")


class TenantDashboard:
    """Records the headers of every request; answers with a Set-Cookie of its own."""

    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                owner.seen.append({k.lower(): v for k, v in self.headers.items()})
                data = json.dumps({"name": "tenant", "path": self.path}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Set-Cookie", "gatewayha-session=planted-by-tenant; Path=/")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


@pytest.fixture(scope="module")
def api_instances():
    servers = [NamedHTTPServer("api-1")]
    yield servers
    for server in servers:
        server.close()


@pytest.fixture
def haproxy(tmp_path: Path, api_instances):
    with running_haproxy(tmp_path, api_instances) as proc:
        yield proc


@pytest.fixture
def tenant():
    server = TenantDashboard()
    yield server
    server.close()


def get(port: int, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        body = json.loads(response.read() or b"null")
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        conn.close()


def token(name: str, ttl: int = 300, secret: str = TEST_SECRET, user: str = "alice", now: float | None = None) -> str:
    return dashboards.make_token(secret, user, name, ttl, now=now)


def forged(name: str) -> str:
    """A valid token of another cluster whose payload was rewritten to name this one."""
    header, _, signature = token(uuid.uuid4().hex).split(".")
    return f"{header}.{token(name).split('.')[1]}.{signature}"


def test_owner_token_reaches_dashboard_without_any_visitor_credential(haproxy, tenant):
    name = uuid.uuid4().hex
    sync_maps(haproxy.runtime, haproxy.map_dir, {}, {name: tenant.address})
    headers = {
        "Authorization": "Basic YWxpY2U6c2VjcmV0",
        "Proxy-Authorization": "Basic YWxpY2U6c2VjcmV0",
        "Cookie": f"gatewayha-session=alice|9999999999|mac; {dashboards.COOKIE}={token(name)}; other=1",
    }

    status, answer_headers, body = get(haproxy.port, f"/clusters/{name}/status", headers)

    assert (status, body["name"], body["path"]) == (200, "tenant", f"/clusters/{name}/status")
    [seen] = tenant.seen
    assert "authorization" not in seen and "proxy-authorization" not in seen
    assert "cookie" not in seen, seen.get("cookie")
    # Nor may the tenant plant a cookie on the gateway's origin.
    assert "set-cookie" not in answer_headers


@pytest.mark.parametrize(
    "cookie",
    [
        pytest.param(lambda name: "", id="no-token"),
        pytest.param(lambda name: token(uuid.uuid4().hex), id="another-clusters-token"),
        pytest.param(lambda name: token(name, now=time.time() - 600), id="expired"),
        pytest.param(lambda name: token(name, secret="another-secret-0123456789"), id="wrong-key"),
        pytest.param(lambda name: token(name).rsplit(".", 1)[0] + ".", id="unsigned"),
        pytest.param(lambda name: forged(name), id="payload-for-this-cluster-on-another-signature"),
        pytest.param(lambda name: "x" * 40, id="garbage"),
    ],
)
def test_without_a_valid_token_for_this_cluster_the_api_answers(haproxy, tenant, cookie):
    name = uuid.uuid4().hex
    sync_maps(haproxy.runtime, haproxy.map_dir, {}, {name: tenant.address})
    value = cookie(name)
    headers = {"Cookie": f"{dashboards.COOKIE}={value}"} if value else {}

    status, _, body = get(haproxy.port, f"/clusters/{name}/status", headers)

    assert body["name"] == "api-1"  # the API decides: 401, 404 or a new token
    assert body["path"] == f"/clusters/{name}/status"
    assert tenant.seen == []


def test_token_is_checked_against_the_cluster_in_the_path_not_the_map(haproxy, tenant):
    mine, theirs = uuid.uuid4().hex, uuid.uuid4().hex
    other = TenantDashboard()
    try:
        sync_maps(haproxy.runtime, haproxy.map_dir, {}, {mine: tenant.address, theirs: other.address})
        cookie = {"Cookie": f"{dashboards.COOKIE}={token(mine)}"}

        assert get(haproxy.port, f"/clusters/{mine}/status", cookie)[2]["name"] == "tenant"
        assert get(haproxy.port, f"/clusters/{theirs}/status", cookie)[2]["name"] == "api-1"
        assert other.seen == []
    finally:
        other.close()


def test_a_token_for_a_cluster_without_a_route_goes_to_the_api(haproxy):
    name = uuid.uuid4().hex
    cookie = {"Cookie": f"{dashboards.COOKIE}={token(name)}"}
    assert http_get(haproxy.port, f"/clusters/{name}/status", cookie)[2]["name"] == "api-1"


def test_during_a_secret_rotation_tokens_of_the_previous_key_still_pass_and_others_do_not(tmp_path, api_instances):
    """HAProxy rendered with server.secret = NEW and previous_secrets = TEST_SECRET (as
    `gatewayha-admin render-haproxy` does): tokens signed before the rotation reach the
    dashboard, new ones too, a token of a key outside the ring goes to the API; and a token
    for another cluster, valid under the previous key, does not pass for this one."""
    new = "rotated-secret-0123456789abcdef"
    proc = HAProxyProcess(
        tmp_path,
        [{"name": s.name, "address": s.address} for s in api_instances],
        dashboard_jwt_key=dashboards.jwt_key(new),
        dashboard_jwt_previous_keys=[dashboards.jwt_key(TEST_SECRET)],
    )
    tenant = TenantDashboard()
    try:
        proc.start()
        name = uuid.uuid4().hex
        sync_maps(proc.runtime, proc.map_dir, {}, {name: tenant.address})

        def who(value: str) -> str:
            return get(proc.port, f"/clusters/{name}/status", {"Cookie": f"{dashboards.COOKIE}={value}"})[2]["name"]

        assert who(token(name)) == "tenant"  # signed under the previous key
        assert who(token(name, secret=new)) == "tenant"
        assert who(token(name, secret="outside-the-ring-0123456789")) == "api-1"
        assert who(token(uuid.uuid4().hex)) == "api-1"
        assert who(forged(name)) == "api-1"
    finally:
        tenant.close()
        proc.stop()
