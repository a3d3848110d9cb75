"""The HTTP API (Falcon TestClient) against a real Postgres: wire contract, auth, bad input, limits."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime as dt
import http.server
import json
import socket
import ssl
import threading
import time

import falcon.testing
import psycopg
import pytest
from psycopg.rows import dict_row

from conftest import SECRET, new_database
from gatewayha import clusters, tls
from gatewayha.api.app import create_app
from gatewayha.api.watch import ClusterWatch
from gatewayha.auth import secrets as sec
from gatewayha.auth import users
from gatewayha.config import load_settings
from gatewayha.db.migrate import migrate
from gatewayha.db.pool import make_pool
from helpers import wait_until

CONFIG = """
[server]
secret = "{secret}"
max_body_bytes = 4096
wait_timeout = 1.0
[database]
dsn = "{dsn}"
pool_timeout = 2.0
[limits]
max_clusters = 3
[cluster]
max_workers = 5
[[cluster_options]]
field = "worker_cores"
type = "int"
default = 1
min = 1
max = 4
label = "Worker cores"
[[cluster_options]]
field = "worker_memory_gib"
type = "float"
default = 1.0
min = 0.5
max = 8
[[cluster_options]]
field = "queue"
type = "select"
default = "normal"
options = ["normal", "fast"]
[[cluster_options]]
field = "debug"
type = "bool"
default = false
[[cluster_options]]
field = "image"
type = "string"
default = "base"
[[cluster_options]]
field = "environment"
type = "mapping"
default = {{}}
[environments.default]
prefix = "/opt/dask-default"
[environments.gpu]
prefix = "/opt/conda/envs/gpu"
"""

CLUSTER_KEYS = {
    "name",
    "dashboard_route",
    "status",
    "start_time",
    "stop_time",
    "options",
    "tls_cert",
    "tls_key",
}


@pytest.fixture(scope="module")
def env(pg_server, tmp_path_factory):
    dsn = new_database(pg_server)
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        migrate(conn)
        users.add_user(conn, "alice", "wonderland")
        users.add_user(conn, "bob", "builder")
    path = tmp_path_factory.mktemp("cfg") / "gatewayha.toml"
    path.write_text(CONFIG.format(secret=SECRET, dsn=dsn))
    settings = load_settings(path, {})
    pool = make_pool(settings.database, "test-api", open_wait=True)
    _DSN["dsn"] = dsn
    yield settings, pool, dsn
    pool.close()


@pytest.fixture
def client(env):
    settings, pool, _ = env
    return falcon.testing.TestClient(create_app(settings, pool))


@pytest.fixture
def db(env):
    with psycopg.connect(env[2], autocommit=True, row_factory=dict_row) as conn:
        yield conn


def basic(user, password):
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


ALICE = basic("alice", "wonderland")
BOB = basic("bob", "builder")


def stop_all(db):
    db.execute("UPDATE clusters SET status = 'STOPPED', stopped_at = now() WHERE status <> 'STOPPED'")


def create(client, headers=ALICE, options=None):
    r = client.simulate_post("/api/v1/clusters/", headers=headers, json={"cluster_options": options or {}})
    assert r.status_code == 201, r.text
    return r.json["name"]


_DSN: dict[str, str] = {}


def cluster_token(name: str) -> str:
    """The token the cluster's scheduler holds (random, kept encrypted in its row)."""
    with psycopg.connect(_DSN["dsn"], autocommit=True, row_factory=dict_row) as conn:
        row = conn.execute("SELECT name, token_enc FROM clusters WHERE name = %s", (name,)).fetchone()
    return clusters.cluster_token(SECRET, row)


def place(name: str, host: str = "127.0.0.1") -> None:
    """What a start job does first: the cluster is placed on a node (whose host its addresses must name)."""
    with psycopg.connect(_DSN["dsn"], autocommit=True) as conn:
        conn.execute("UPDATE clusters SET node = 'node-t' WHERE name = %s AND node IS NULL", (name,))
        conn.execute(
            "INSERT INTO nodes (name, host) SELECT node, %s FROM clusters WHERE name = %s"
            " ON CONFLICT (name) DO NOTHING",
            (host, name),
        )


def heartbeat(client, name, token=None, **overrides):
    body = {
        "scheduler_address": "tls://127.0.0.1:40001",
        "dashboard_address": "http://127.0.0.1:40002",
        "api_address": "https://127.0.0.1:40003",
        "count": 0,
        "active_workers": [],
        "closing_workers": [],
        "closed_workers": [],
    }
    body.update(overrides)
    place(name)
    token = token or cluster_token(name)
    return client.simulate_post(
        f"/api/v1/clusters/{name}/heartbeat", headers={"Authorization": f"token {token}"}, json=body
    )


# --- stand-ins for a scheduler's control port -----------------------------------


def cluster_keypair(name: str) -> tuple[str, str]:
    """The cluster's own cert and key (what its scheduler's control API serves)."""
    with psycopg.connect(_DSN["dsn"], autocommit=True, row_factory=dict_row) as conn:
        row = conn.execute("SELECT tls_cert, tls_key_enc FROM clusters WHERE name = %s", (name,)).fetchone()
    return row["tls_cert"], tls.decrypt_key(SECRET, row["tls_key_enc"], name)


def server_context(tmp_path, cert_pem: str, key_pem: str) -> ssl.SSLContext:
    cert_file, key_file = tmp_path / f"{time.monotonic_ns()}.crt", tmp_path / f"{time.monotonic_ns()}.key"
    cert_file.write_text(cert_pem)
    key_file.write_text(key_pem)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_file, key_file)
    return ctx


@contextlib.contextmanager
def tls_scheduler(ctx: ssl.SSLContext, handler):
    """An HTTPS server on the node's host playing a scheduler's control API."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


class Sniffer:
    """A listener on the node's host that records every byte the API sends it: in clear (what
    anyone on the LAN sees), or, given a cert and key, what arrives after a TLS handshake that
    the listener attempts with them (an impostor's view)."""

    def __init__(self, ctx: ssl.SSLContext | None = None):
        self.ctx = ctx
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.received = bytearray()
        self.handshake: str | None = None  # "ok", or the listener's TLS error
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:  # closed: nobody connected
            return
        self.connections += 1
        conn.settimeout(1.0)
        with conn:
            if self.ctx is not None:
                try:
                    conn = self.ctx.wrap_socket(conn, server_side=True)
                    self.handshake = "ok"
                except (ssl.SSLError, OSError) as exc:
                    self.handshake = repr(exc)
                    return
            # Everything until the API goes quiet (a TLS client waits for the server's hello
            # after its own) or closes.
            with contextlib.suppress(OSError):
                while chunk := conn.recv(65536):
                    self.received += chunk

    def close(self) -> None:
        # close() alone leaves a thread blocked in accept() until its join times out (Linux);
        # shutdown() wakes it at once.
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(10)
        assert not self.thread.is_alive(), "the sniffer is still listening"


def calls_to(client, name: str, sniffer: Sniffer, scheme: str = "https", calls=(("scale", {"count": 1}),)) -> list:
    """The cluster's first report points its api_address at ``sniffer``; then the owner's calls
    (their answers returned), and the sniffer is closed, holding what it received."""
    try:
        assert heartbeat(client, name, api_address=f"{scheme}://127.0.0.1:{sniffer.port}").status_code == 200
        return [
            client.simulate_post(f"/api/v1/clusters/{name}/{path}", headers=ALICE, json=body) for path, body in calls
        ]
    finally:
        sniffer.close()


# --- public endpoints ---------------------------------------------------------


def test_health_passes_without_credentials(client):
    r = client.simulate_get("/api/health")
    assert r.status_code == 200 and r.json == {"status": "pass"}


def test_version_is_served(client):
    assert "version" in client.simulate_get("/api/version").json


# --- authentication -----------------------------------------------------------


def test_anonymous_request_is_challenged_with_401_and_www_authenticate(client):
    r = client.simulate_get("/api/v1/clusters/")
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"].startswith("Basic")
    assert "error" in r.json


@pytest.mark.parametrize(
    "header",
    [
        basic("alice", "wrong"),
        basic("nobody", "x"),
        {"Authorization": "Basic !!!notbase64"},
        {"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()},
        {"Authorization": "Bearer abc"},
        {"Authorization": "token gha_bogus_secret"},
        {"Authorization": "token " + "f" * 64},  # a cluster token is no user credential
    ],
)
def test_bad_credentials_are_401_json(client, header):
    r = client.simulate_get("/api/v1/clusters/", headers=header)
    assert r.status_code == 401 and "error" in r.json


def test_basic_login_sets_a_signed_cookie_any_instance_accepts(env, client):
    r = client.simulate_get("/api/v1/clusters/", headers=ALICE)
    assert r.status_code == 200
    cookie = r.cookies["gatewayha-session"]
    assert cookie.http_only
    # A second app instance (another API process or node) accepts it.
    other = falcon.testing.TestClient(create_app(env[0], env[1]))
    r2 = other.simulate_get("/api/v1/clusters/", cookies={"gatewayha-session": cookie.value})
    assert r2.status_code == 200


def test_after_a_rotation_of_the_secret_sessions_and_clusters_of_the_old_one_keep_working(env, client, db):
    """An instance restarted with a new server.secret and the old one in previous_secrets
    accepts the sessions signed before, hands out new ones under the new key and still
    decrypts what was stored under the old one; without the old secret the old session fails."""
    import dataclasses

    settings, pool, _ = env
    old_cookie = client.simulate_get("/api/v1/clusters/", headers=ALICE).cookies["gatewayha-session"].value
    name = create(client)
    place(name)
    assert heartbeat(client, name).status_code == 200
    new = "rotated-secret-0123456789abcdef"
    rotated = dataclasses.replace(
        settings, server=dataclasses.replace(settings.server, secret=new, previous_secrets=SECRET)
    )
    after = falcon.testing.TestClient(create_app(rotated, pool))
    r = after.simulate_get(f"/api/v1/clusters/{name}", cookies={"gatewayha-session": old_cookie})
    assert r.status_code == 200 and r.json["tls_key"].startswith("-----BEGIN PRIVATE KEY-----")
    fresh = after.simulate_get("/api/v1/clusters/", headers=ALICE).cookies["gatewayha-session"].value
    assert fresh.split("|")[2] == sec.key_id(new)
    dropped = dataclasses.replace(settings, server=dataclasses.replace(settings.server, secret=new))
    later = falcon.testing.TestClient(create_app(dropped, pool))
    assert later.simulate_get("/api/v1/clusters/", cookies={"gatewayha-session": old_cookie}).status_code == 401
    assert later.simulate_get("/api/v1/clusters/", cookies={"gatewayha-session": fresh}).status_code == 200
    stop_all(db)


def test_forged_or_expired_cookie_is_challenged(client):
    forged = "alice|9999999999|" + "0" * 64
    expired = sec.make_session_cookie(SECRET, "alice", -10)
    for value in (forged, expired, "garbage"):
        r = client.simulate_get("/api/v1/clusters/", cookies={"gatewayha-session": value})
        assert r.status_code == 401


def test_api_token_authenticates_as_its_user(client, db):
    token = users.create_token(db, "alice")
    r = client.simulate_get("/api/v1/clusters/", headers={"Authorization": f"token {token}"})
    assert r.status_code == 200
    r = client.simulate_get("/api/v1/clusters/", headers={"Authorization": f"token {token}x"})
    assert r.status_code == 401


# --- options ------------------------------------------------------------------


def test_options_spec_round_trips_through_the_stock_client_parser(client):
    from dask_gateway.options import Options

    r = client.simulate_get("/api/v1/options", headers=ALICE)
    assert r.status_code == 200
    opts = Options._from_spec(r.json["cluster_options"])
    assert opts.worker_cores == 1 and opts.queue == "normal" and opts.environment == {}
    with pytest.raises(ValueError):
        opts.worker_cores = 5
    # Declared environments are a select of their own (gatewayha.environments).
    assert opts.software_environment == "default"
    opts.software_environment = "gpu"
    with pytest.raises(ValueError):
        opts.software_environment = "py27"


@pytest.mark.parametrize(
    "options",
    [
        {"worker_cores": 99},
        {"worker_cores": "2"},
        {"worker_cores": 1.5},
        {"worker_cores": True},
        {"worker_memory_gib": 0.1},
        {"queue": "turbo"},
        {"debug": "yes"},
        {"image": 5},
        {"environment": [1, 2]},
        {"software_environment": "py27"},
        {"software_environment": 3},
        {"not_an_option": 1},
    ],
)
def test_invalid_options_are_422_and_create_nothing(client, db, options):
    before = db.execute("SELECT count(*) AS n FROM clusters").fetchone()["n"]
    r = client.simulate_post("/api/v1/clusters/", headers=ALICE, json={"cluster_options": options})
    assert r.status_code == 422, r.text
    assert "error" in r.json
    assert db.execute("SELECT count(*) AS n FROM clusters").fetchone()["n"] == before


# --- create / get / list / delete --------------------------------------------


def test_create_returns_201_and_a_pending_cluster_with_exact_keys(client, db):
    stop_all(db)
    name = create(client, options={"worker_cores": 2})
    r = client.simulate_get(f"/api/v1/clusters/{name}", headers=ALICE)
    assert r.status_code == 200
    assert set(r.json) == CLUSTER_KEYS
    assert r.json["status"] == "PENDING"
    assert r.json["options"]["worker_cores"] == 2
    assert r.json["tls_key"] is None and r.json["tls_cert"] is None
    job = db.execute("SELECT kind FROM jobs WHERE cluster = %s", (name,)).fetchone()
    assert job == {"kind": "start_cluster"}
    # The stock client parses it.
    from dask_gateway.client import ClusterReport

    report = ClusterReport._from_json("http://gw", "gateway://gw:8000", dict(r.json))
    assert report.status.name == "PENDING"


def test_first_heartbeat_makes_cluster_running_with_tls_and_dashboard(client, db):
    stop_all(db)
    name = create(client)
    assert heartbeat(client, name).status_code == 200
    r = client.simulate_get(f"/api/v1/clusters/{name}", headers=ALICE)
    body = r.json
    assert body["status"] == "RUNNING"
    assert body["dashboard_route"] == f"/clusters/{name}/status"
    assert body["tls_cert"].startswith("-----BEGIN CERTIFICATE")
    assert "PRIVATE KEY" in body["tls_key"]
    stored = db.execute("SELECT tls_key_enc FROM clusters WHERE name = %s", (name,)).fetchone()
    assert b"PRIVATE KEY" not in bytes(stored["tls_key_enc"])  # encrypted at rest


def test_other_users_cannot_see_or_touch_a_cluster(client, db):
    stop_all(db)
    name = create(client)
    heartbeat(client, name)
    assert client.simulate_get(f"/api/v1/clusters/{name}", headers=BOB).status_code == 404
    assert name not in client.simulate_get("/api/v1/clusters/", headers=BOB).json
    assert client.simulate_post(f"/api/v1/clusters/{name}/scale", headers=BOB, json={"count": 1}).status_code == 404
    r = client.simulate_delete(f"/api/v1/clusters/{name}", headers=BOB)
    assert r.status_code == 204
    status = db.execute("SELECT status FROM clusters WHERE name = %s", (name,)).fetchone()["status"]
    assert status == "RUNNING"  # nothing changed


def test_list_filters_by_status_and_rejects_unknown_status(client, db):
    stop_all(db)
    a = create(client)
    b = create(client)
    heartbeat(client, b)
    default = client.simulate_get("/api/v1/clusters/", headers=ALICE).json
    assert set(default) == {a, b}
    assert all(set(v) == CLUSTER_KEYS for v in default.values())
    running = client.simulate_get("/api/v1/clusters/?status=running", headers=ALICE).json
    assert set(running) == {b}
    r = client.simulate_get("/api/v1/clusters/?status=EXPLODED", headers=ALICE)
    assert r.status_code == 422 and "error" in r.json


def test_wait_long_polls_until_running(client, db):
    stop_all(db)
    name = create(client)
    threading.Timer(0.3, lambda: heartbeat(client, name)).start()
    r = client.simulate_get(f"/api/v1/clusters/{name}", params={"wait": ""}, headers=ALICE)
    assert r.json["status"] == "RUNNING"


def test_wait_ends_on_the_clusters_notification_not_at_the_next_poll(env, db):
    """With the watch (one LISTEN per API process), the first heartbeat's NOTIFY ends the long
    poll: here the poll interval is 30 s, so only the notification can end it within the 10 s."""
    settings, pool, _ = env
    slow = dataclasses.replace(
        settings, server=dataclasses.replace(settings.server, wait_poll_interval=30.0, wait_timeout=60.0)
    )
    watch = ClusterWatch(settings.database, "test-api-watch").start()
    try:
        wait_until(watch.listening.is_set, 10, "the watch to listen")
        c = falcon.testing.TestClient(create_app(slow, pool, watch=watch))
        stop_all(db)
        name = create(c)
        threading.Timer(0.5, lambda: heartbeat(c, name)).start()
        t0 = time.monotonic()
        r = c.simulate_get(f"/api/v1/clusters/{name}", params={"wait": ""}, headers=ALICE)
        assert r.json["status"] == "RUNNING"
        assert time.monotonic() - t0 < 10, "the long poll waited for its next poll"
        assert watch._waiters == {}  # the waiter unregistered itself
    finally:
        watch.stop()


def test_wait_returns_pending_after_the_bound(client, db):
    stop_all(db)
    name = create(client)
    r = client.simulate_get(f"/api/v1/clusters/{name}", query_string="wait", headers=ALICE)
    assert r.status_code == 200 and r.json["status"] == "PENDING"


def test_delete_of_unplaced_cluster_stops_it_at_once(client, db):
    stop_all(db)
    name = create(client)
    r = client.simulate_delete(f"/api/v1/clusters/{name}", headers=ALICE)
    assert r.status_code == 204
    row = client.simulate_get(f"/api/v1/clusters/{name}", headers=ALICE).json
    assert row["status"] == "STOPPED" and row["stop_time"] is not None


def test_delete_of_placed_cluster_goes_stopping_and_queues_a_node_job(client, db):
    stop_all(db)
    name = create(client)
    db.execute("UPDATE clusters SET node = 'n1' WHERE name = %s", (name,))
    heartbeat(client, name)
    assert client.simulate_delete(f"/api/v1/clusters/{name}", headers=ALICE).status_code == 204
    assert db.execute("SELECT status FROM clusters WHERE name = %s", (name,)).fetchone()["status"] == "STOPPING"
    job = db.execute("SELECT queue FROM jobs WHERE kind = 'stop_cluster' AND cluster = %s", (name,)).fetchone()
    assert job == {"queue": "node:n1"}
    # Deleting again is harmless.
    assert client.simulate_delete(f"/api/v1/clusters/{name}", headers=ALICE).status_code == 204


def test_delete_unknown_or_malformed_name_is_204(client):
    for name in ("0" * 32, "not-a-cluster", "A" * 300):
        assert client.simulate_delete(f"/api/v1/clusters/{name}", headers=ALICE).status_code == 204
    # A path that escapes the route is no cluster at all.
    r = client.simulate_delete("/api/v1/clusters/..%2f..%2fetc", headers=ALICE)
    assert r.status_code == 404 and "error" in r.json


def test_cluster_token_can_delete_only_its_own_cluster(client, db):
    stop_all(db)
    a, b = create(client), create(client)
    token_a = cluster_token(a)
    r = client.simulate_delete(f"/api/v1/clusters/{b}", headers={"Authorization": f"token {token_a}"})
    assert r.status_code == 403
    assert db.execute("SELECT status FROM clusters WHERE name = %s", (b,)).fetchone()["status"] == "PENDING"
    r = client.simulate_delete(f"/api/v1/clusters/{a}", headers={"Authorization": f"token {token_a}"})
    assert r.status_code == 204
    assert db.execute("SELECT status FROM clusters WHERE name = %s", (a,)).fetchone()["status"] == "STOPPED"


# --- heartbeats -----------------------------------------------------------------


def test_heartbeat_with_wrong_or_missing_token_changes_nothing(client, db):
    stop_all(db)
    name = create(client)
    assert heartbeat(client, name, token="0" * 64).status_code == 403
    r = client.simulate_post(f"/api/v1/clusters/{name}/heartbeat", json={})
    assert r.status_code == 401
    r = client.simulate_post(f"/api/v1/clusters/{name}/heartbeat", headers=ALICE, json={})
    assert r.status_code == 401  # a user is not a scheduler
    assert db.execute("SELECT status FROM clusters WHERE name = %s", (name,)).fetchone()["status"] == "PENDING"


@pytest.mark.parametrize(
    "overrides",
    [
        {"scheduler_address": "tls://evil host:1\nuse_backend x"},
        {"dashboard_address": "javascript:alert(1)"},
        {"api_address": 5},
        {"count": -1},
        {"count": "3"},
        {"active_workers": "w1"},
        {"closed_workers": [1, 2]},
    ],
)
def test_malformed_heartbeat_is_422_and_changes_nothing(client, db, overrides):
    stop_all(db)
    name = create(client)
    r = heartbeat(client, name, **overrides)
    assert r.status_code == 422, r.text
    assert db.execute("SELECT status FROM clusters WHERE name = %s", (name,)).fetchone()["status"] == "PENDING"


def test_heartbeat_count_reconciles_workers_within_max_workers(client, db):
    stop_all(db)
    name = create(client)
    db.execute("UPDATE clusters SET node = 'n1' WHERE name = %s", (name,))
    heartbeat(client, name, count=3)
    workers = db.execute("SELECT name, status FROM workers WHERE cluster = %s", (name,)).fetchall()
    assert len(workers) == 3 and {w["status"] for w in workers} == {"PENDING"}
    jobs = db.execute("SELECT count(*) AS n FROM jobs WHERE kind = 'start_worker' AND cluster = %s", (name,))
    assert jobs.fetchone()["n"] == 3
    names = [w["name"] for w in workers]
    # Two join, one leaves: RUNNING, STOPPING, and one replacement is started.
    heartbeat(client, name, count=3, active_workers=names[:2], closed_workers=[names[2]])
    states = {
        w["name"]: w["status"] for w in db.execute("SELECT name, status FROM workers WHERE cluster = %s", (name,))
    }
    assert [states[n] for n in names] == ["RUNNING", "RUNNING", "STOPPING"]
    assert sum(1 for s in states.values() if s == "PENDING") == 1
    # A scheduler asking for 10**9 workers gets max_workers (5), not a runaway.
    heartbeat(client, name, count=10**9, active_workers=names[:2])
    live = db.execute(
        "SELECT count(*) AS n FROM workers WHERE cluster = %s AND status IN ('PENDING','RUNNING')", (name,)
    ).fetchone()["n"]
    assert live == 5


# --- scale / adapt ------------------------------------------------------------


def test_scale_and_adapt_of_pending_cluster_are_409(client, db):
    stop_all(db)
    name = create(client)
    assert client.simulate_post(f"/api/v1/clusters/{name}/scale", headers=ALICE, json={"count": 1}).status_code == 409
    r = client.simulate_post(f"/api/v1/clusters/{name}/adapt", headers=ALICE, json={"minimum": 0, "maximum": 2})
    assert r.status_code == 409


@pytest.mark.parametrize(
    "path,body",
    [
        ("scale", {"count": -1}),
        ("scale", {"count": "ten"}),
        ("scale", {"count": 1.5}),
        ("scale", {"count": None}),
        ("scale", {}),
        ("adapt", {"minimum": 5, "maximum": 2}),
        ("adapt", {"minimum": -1}),
        ("adapt", {"maximum": "x"}),
        ("adapt", {"active": "yes"}),
    ],
)
def test_bad_scale_and_adapt_bodies_are_422(client, db, path, body):
    stop_all(db)
    name = create(client)
    heartbeat(client, name)
    r = client.simulate_post(f"/api/v1/clusters/{name}/{path}", headers=ALICE, json=body)
    assert r.status_code == 422 and "error" in r.json


def test_absurd_scale_is_clamped_and_forwarded(client, db, tmp_path):
    """scale(10**12) is clamped to max_workers with ok: false; it reaches the scheduler's api,
    over TLS with the cluster's own certificate."""
    got = []

    class H(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            got.append(
                (
                    self.headers["Authorization"],
                    json.loads(self.rfile.read(int(self.headers["Content-Length"]))),
                )
            )
            self.send_response(200)
            self.end_headers()

        def log_message(self, *a):
            pass

    stop_all(db)
    name = create(client)
    with tls_scheduler(server_context(tmp_path, *cluster_keypair(name)), H) as srv:
        heartbeat(client, name, api_address=f"https://127.0.0.1:{srv.server_port}")
        r = client.simulate_post(f"/api/v1/clusters/{name}/scale", headers=ALICE, json={"count": 10**12})
        assert r.status_code == 200, r.text
        assert r.json["ok"] is False and "5" in r.json["msg"]
        assert got[-1] == (f"token {cluster_token(name)}", {"op": "scale", "count": 5})
        r = client.simulate_post(f"/api/v1/clusters/{name}/scale", headers=ALICE, json={"count": 2})
        assert r.json == {"ok": True, "msg": None}
        r = client.simulate_post(
            f"/api/v1/clusters/{name}/adapt",
            headers=ALICE,
            json={"minimum": 1, "maximum": 100, "active": True},
        )
        assert r.json["ok"] is False
        assert got[-1][1] == {"op": "adapt", "minimum": 1, "maximum": 5, "active": True}


def test_scale_when_scheduler_is_unreachable_is_503_json(client, db):
    stop_all(db)
    name = create(client)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    assert heartbeat(client, name, api_address=f"https://127.0.0.1:{closed}").status_code == 200
    r = client.simulate_post(f"/api/v1/clusters/{name}/scale", headers=ALICE, json={"count": 1})
    assert r.status_code == 503 and "error" in r.json


# --- what crosses the LAN to a scheduler's control port ---------------------------


def test_a_sniffer_on_the_control_port_sees_a_tls_client_hello_and_no_token(client, db):
    """A plain TCP listener poses as the scheduler (what anyone on the path sees): the API's
    first bytes are a TLS ClientHello, then nothing; the token, the request and its path never
    appear. The API answers 503."""
    stop_all(db)
    name = create(client)
    token = cluster_token(name)
    sniffer = Sniffer()
    [r] = calls_to(client, name, sniffer)
    assert r.status_code == 503 and "error" in r.json, r.text
    seen = bytes(sniffer.received)
    # A TLS record of type handshake (22), version 3.x, carrying a ClientHello (1).
    assert (seen[0], seen[1], seen[5]) == (0x16, 0x03, 0x01), seen[:16]
    for secret in (token.encode(), b"Authorization", b"/api/comm", b"scale"):
        assert secret not in seen, secret


def test_an_http_api_address_gets_no_connection_and_no_token(client, db):
    """A scheduler of an earlier release reports http://: the API does not connect at all (the
    token would cross the LAN in clear) and says to restart the cluster."""
    stop_all(db)
    name = create(client)
    token = cluster_token(name)
    sniffer = Sniffer()
    answers = calls_to(
        client, name, sniffer, scheme="http", calls=(("scale", {"count": 1}), ("adapt", {"minimum": 0, "maximum": 2}))
    )
    assert token.encode() not in sniffer.received, "the token crossed the network in clear"
    assert sniffer.connections == 0 and bytes(sniffer.received) == b""
    for r in answers:
        assert r.status_code == 503, r.text
        assert "without TLS" in r.json["error"] and "create a new one" in r.json["error"]


def test_a_control_port_with_another_clusters_certificate_never_gets_the_token(client, db, tmp_path):
    """A tenant pointing its api_address at another cluster's scheduler, or an impostor on the
    node: the listener holds a valid cluster keypair, but not this cluster's. The API refuses the
    handshake; no request, no token reaches the listener. 503."""
    stop_all(db)
    victim, other = create(client), create(client)
    token = cluster_token(victim)
    sniffer = Sniffer(server_context(tmp_path, *cluster_keypair(other)))
    [r] = calls_to(client, victim, sniffer)
    assert r.status_code == 503 and "certificate" in r.json["error"], r.text
    assert sniffer.connections == 1
    assert sniffer.handshake != "ok", "the API completed a handshake with another cluster's certificate"
    assert bytes(sniffer.received) == b"" and token.encode() not in sniffer.received


def test_a_certificate_signed_by_the_cluster_key_but_not_the_cluster_cert_gets_no_token(client, db, tmp_path):
    """The chain verifies and the name matches, but the server's certificate is not exactly the
    cluster's own: the pin refuses it after the handshake, before a byte of the request."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    stop_all(db)
    name = create(client)
    token = cluster_token(name)
    ca_pem, ca_key_pem = cluster_keypair(name)
    ca = x509.load_pem_x509_certificate(ca_pem.encode())
    ca_key = serialization.load_pem_private_key(ca_key_pem.encode(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, f"{name}-leaf")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(tls.CLUSTER_SAN)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    leaf_pem = leaf.public_bytes(serialization.Encoding.PEM).decode()
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    sniffer = Sniffer(server_context(tmp_path, leaf_pem, key_pem))
    [r] = calls_to(client, name, sniffer)
    assert r.status_code == 503 and "certificate" in r.json["error"], r.text
    assert sniffer.handshake == "ok"  # the chain is valid: only the pin stops it
    assert bytes(sniffer.received) == b"" and token.encode() not in sniffer.received


# --- malformed requests -------------------------------------------------------


@pytest.mark.parametrize(
    "body,status",
    [
        (b"{not json", 400),
        (b"[1, 2]", 400),
        (b'"string"', 400),
        (b"\xff\xfe", 400),
        (b'{"cluster_options": [1]}', 422),
        (b'{"cluster_options": "x"}', 422),
    ],
)
def test_malformed_create_bodies_are_4xx_json(client, db, body, status):
    stop_all(db)
    r = client.simulate_post("/api/v1/clusters/", headers={**ALICE, "Content-Type": "application/json"}, body=body)
    assert r.status_code == status and "error" in r.json


def test_oversized_body_is_413(client):
    body = json.dumps({"cluster_options": {"image": "x" * 10000}})
    r = client.simulate_post("/api/v1/clusters/", headers=ALICE, body=body)
    assert r.status_code == 413 and "error" in r.json


def test_unknown_route_and_method_are_json(client):
    r = client.simulate_get("/api/v1/nothing", headers=ALICE)
    assert r.status_code == 404 and "error" in r.json
    r = client.simulate_put("/api/v1/clusters/", headers=ALICE)
    assert r.status_code == 405 and "error" in r.json


def test_malformed_cluster_names_are_404(client):
    for name in ("x" * 500, "ABC", "%00"):
        r = client.simulate_get(f"/api/v1/clusters/{name}", headers=ALICE)
        assert r.status_code == 404 and "error" in r.json


# --- limits -------------------------------------------------------------------


def test_cluster_limit_is_exact_under_concurrent_creates_on_two_instances(env, db):
    stop_all(db)
    settings, pool, _ = env
    pool2 = make_pool(settings.database, "test-api-2", open_wait=True)
    apps = [falcon.testing.TestClient(create_app(settings, p)) for p in (pool, pool2)]
    codes = []

    def go(i):
        r = apps[i % 2].simulate_post("/api/v1/clusters/", headers=ALICE, json={"cluster_options": {}})
        codes.append(r.status_code)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    pool2.close()
    assert sorted(codes) == [201] * 3 + [409] * 9
    n = db.execute("SELECT count(*) AS n FROM clusters WHERE owner = 'alice' AND status = 'PENDING'").fetchone()["n"]
    assert n == 3


def test_a_burst_of_one_users_creates_leaves_the_pool_to_everyone_else(env, db):
    """Creates of one user serialise on the user's row lock; behind the per-user gate only one
    of them per API process waits in Postgres, so the rest of the pool (3 connections here)
    still serves other requests. Without the gate the waiting creates fill the pool and the
    GET below fails with 503 after pool_timeout."""
    stop_all(db)
    settings, _, dsn = env
    small = dataclasses.replace(
        settings,
        database=dataclasses.replace(settings.database, pool_max=3, pool_timeout=1.0),
        limits=dataclasses.replace(settings.limits, max_clusters=0),
    )
    pool = make_pool(small.database, "test-api-burst", open_wait=True)
    app = falcon.testing.TestClient(create_app(small, pool))
    codes = []
    with psycopg.connect(dsn, row_factory=dict_row) as locker:
        locker.execute("SELECT 1 FROM users WHERE name = 'bob' FOR UPDATE")  # a slow create elsewhere

        def create():
            codes.append(app.simulate_post("/api/v1/clusters/", headers=BOB).status_code)

        threads = [threading.Thread(target=create) for _ in range(8)]
        for t in threads:
            t.start()

        def lock_waiters():
            return db.execute(
                "SELECT count(*) AS n FROM pg_stat_activity"
                " WHERE application_name = 'test-api-burst' AND wait_event_type = 'Lock'"
            ).fetchone()["n"]

        wait_until(lock_waiters, timeout=20, what="a create waiting for bob's row lock")
        time.sleep(0.5)  # the other creates have reached the gate by now
        assert lock_waiters() == 1
        for _ in range(3):
            r = app.simulate_get("/api/v1/clusters/", headers=ALICE)
            assert r.status_code == 200, r.text
        assert app.simulate_get("/api/health").status_code == 200
        assert codes == []  # still waiting, not refused
        locker.rollback()
    for t in threads:
        t.join(60)
    pool.close()
    assert codes == [201] * 8
    n = db.execute("SELECT count(*) AS n FROM clusters WHERE owner = 'bob' AND status = 'PENDING'").fetchone()["n"]
    assert n == 8


def test_idempotency_key_replay_returns_the_same_cluster(client, db):
    stop_all(db)
    h = {**ALICE, "Idempotency-Key": "abc-123"}
    a = client.simulate_post("/api/v1/clusters/", headers=h, json={}).json["name"]
    b = client.simulate_post("/api/v1/clusters/", headers=h, json={}).json["name"]
    assert a == b
    assert db.execute("SELECT count(*) AS n FROM clusters WHERE status = 'PENDING'").fetchone()["n"] == 1


# --- database down ------------------------------------------------------------


def test_database_down_gives_503_json_quickly_and_recovers(env, pg_server):
    """Terminate every connection and block new ones; then let them back in."""
    import time

    settings, pool, dsn = env
    dbname = dsn.rsplit("/", 1)[1]
    client = falcon.testing.TestClient(create_app(settings, pool))
    with psycopg.connect(pg_server, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS false')
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (dbname,))
        try:
            t0 = time.monotonic()
            r = client.simulate_get("/api/v1/clusters/", headers=ALICE)
            assert r.status_code == 503 and "error" in r.json
            assert time.monotonic() - t0 < 10
            h = client.simulate_get("/api/health")
            assert h.status_code == 503 and h.json == {"status": "fail"}
        finally:
            admin.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS true')
    deadline = time.monotonic() + 20
    while client.simulate_get("/api/health").status_code != 200:
        assert time.monotonic() < deadline, "the API did not recover by itself"
        time.sleep(0.2)
    assert client.simulate_get("/api/v1/clusters/", headers=ALICE).status_code == 200


def test_shared_password_mode_accepts_any_user_name_with_that_password(env, db):
    import dataclasses

    settings, pool, _ = env
    simple = dataclasses.replace(
        settings, auth=dataclasses.replace(settings.auth, type="simple", simple_password="s3cret")
    )
    client = falcon.testing.TestClient(create_app(simple, pool))
    assert client.simulate_get("/api/v1/clusters/", headers=basic("newcomer", "s3cret")).status_code == 200
    assert client.simulate_get("/api/v1/clusters/", headers=basic("newcomer", "wrong")).status_code == 401
    assert db.execute("SELECT 1 FROM users WHERE name = 'newcomer'").fetchone() is not None


def test_core_and_memory_limits_cap_workers_across_a_users_clusters(env, db):
    import dataclasses

    settings, pool, _ = env
    limited = dataclasses.replace(
        settings, limits=dataclasses.replace(settings.limits, max_clusters=0, max_cores=4, max_memory_gib=100)
    )
    client = falcon.testing.TestClient(create_app(limited, pool))
    stop_all(db)
    a = create(client)
    db.execute("UPDATE clusters SET node = 'n1' WHERE name = %s", (a,))
    # 4 cores: 1 for the scheduler, 3 for workers of 1 core.
    assert heartbeat(client, a, count=5).status_code == 200
    live = "SELECT count(*) AS n FROM workers WHERE cluster = %s AND status IN ('PENDING','RUNNING')"
    assert db.execute(live, (a,)).fetchone()["n"] == 3
    # A second cluster's scheduler does not fit in what is left.
    r = client.simulate_post("/api/v1/clusters/", headers=ALICE, json={})
    assert r.status_code == 409 and "Core limit" in r.json["error"]
    # Two worker cores each: only one more fits after freeing the first cluster's workers.
    db.execute("UPDATE workers SET status = 'STOPPED' WHERE cluster = %s", (a,))
    db.execute("UPDATE clusters SET status = 'STOPPED' WHERE name = %s", (a,))
    b = create(client, options={"worker_cores": 2})
    db.execute("UPDATE clusters SET node = 'n1' WHERE name = %s", (b,))
    heartbeat(client, b, count=4)
    assert db.execute(live, (b,)).fetchone()["n"] == 1


# --- what a tenant holding its cluster's token can (not) do ---------------------


def test_heartbeat_addresses_are_pinned_to_the_placed_host_and_fixed_after_the_first(client, db):
    """The token is readable by the tenant's code: a forged first report may not name another
    host, a privileged port or a port of the gateway's own, and a later one may change nothing."""
    stop_all(db)
    name = create(client)
    pg_port = psycopg.conninfo.conninfo_to_dict(_DSN["dsn"])["port"]
    for bad in (
        {"scheduler_address": "tls://127.0.0.2:40001"},  # not the node's host
        {"dashboard_address": "http://localhost:40002"},
        {"api_address": "http://127.0.0.1:22"},  # privileged
        {"api_address": "https://127.0.0.1:22"},
        {"api_address": "https://127.0.0.2:40003"},  # not the node's host
        {"api_address": "ftp://127.0.0.1:40003"},  # neither https nor (an earlier release's) http
        {"scheduler_address": f"tls://127.0.0.1:{pg_port}"},  # the database
        {"dashboard_address": "http://127.0.0.1:80"},  # the public URL's port
    ):
        r = heartbeat(client, name, **bad)
        assert r.status_code == 422, (bad, r.text)
        row = db.execute("SELECT status, scheduler_address FROM clusters WHERE name = %s", (name,)).fetchone()
        assert row == {"status": "PENDING", "scheduler_address": None}
    assert heartbeat(client, name).status_code == 200
    before = db.execute(
        "SELECT scheduler_address, dashboard_address, api_address FROM clusters WHERE name = %s", (name,)
    )
    before = before.fetchone()
    assert before["api_address"] == "https://127.0.0.1:40003"
    for moved in (
        {"scheduler_address": "tls://127.0.0.1:40009"},
        {"api_address": "https://127.0.0.1:40009"},
        {"api_address": "http://127.0.0.1:40003"},  # back to plain HTTP
    ):
        r = heartbeat(client, name, **moved)
        assert r.status_code == 409 and "fixed" in r.json["error"], r.text
    after = db.execute(
        "SELECT scheduler_address, dashboard_address, api_address FROM clusters WHERE name = %s", (name,)
    )
    assert after.fetchone() == before
    assert heartbeat(client, name).status_code == 200


def test_cluster_tokens_are_random_per_cluster_and_die_with_the_cluster(client, db):
    stop_all(db)
    a, b = create(client), create(client)
    token_a = cluster_token(a)
    assert token_a != cluster_token(b)
    assert token_a != sec.legacy_cluster_token(SECRET, a)  # not derivable from the name and the secret
    row = db.execute("SELECT token_hash FROM clusters WHERE name = %s", (a,)).fetchone()
    assert bytes(row["token_hash"]) == __import__("hashlib").sha256(token_a.encode()).digest()
    assert heartbeat(client, a, token=sec.legacy_cluster_token(SECRET, a)).status_code == 403
    assert heartbeat(client, a, token="é" * 10).status_code in (401, 403)
    assert heartbeat(client, a).status_code == 200
    client.simulate_delete(f"/api/v1/clusters/{a}", headers=ALICE)
    db.execute("UPDATE clusters SET status = 'STOPPED' WHERE name = %s", (a,))  # its node stopped it
    r = heartbeat(client, a, token=token_a)
    assert r.status_code == 403 and r.json == {"error": "Invalid cluster token"}
    r = client.simulate_delete(f"/api/v1/clusters/{a}", headers={"Authorization": f"token {token_a}"})
    assert r.status_code == 403


def test_a_legacy_clusters_hmac_token_works_until_it_stops(client, db):
    """Rows made by the release before random tokens (no token_hash) keep their HMAC token."""
    stop_all(db)
    name = create(client)
    db.execute("UPDATE clusters SET token_hash = NULL, token_enc = NULL WHERE name = %s", (name,))
    legacy = sec.legacy_cluster_token(SECRET, name)
    assert cluster_token(name) == legacy
    assert heartbeat(client, name, token=legacy).status_code == 200
    stop_all(db)
    assert heartbeat(client, name, token=legacy).status_code == 403


def test_calls_to_a_scheduler_follow_no_redirect(client, db, tmp_path):
    """A tenant's scheduler answering a scale call with a redirect gets no second request (which
    would carry the cluster token to wherever it points)."""
    hits = []

    class Target(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            hits.append(self.headers.get("Authorization"))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *a):
            pass

    stop_all(db)
    name = create(client)
    ctx = server_context(tmp_path, *cluster_keypair(name))
    with tls_scheduler(ctx, Target) as target:

        class Redirect(Target):
            def do_POST(self):  # noqa: N802
                self.send_response(307)
                self.send_header("Location", f"https://127.0.0.1:{target.server_port}/api/comm")
                self.end_headers()

        with tls_scheduler(ctx, Redirect) as redirect:
            assert heartbeat(client, name, api_address=f"https://127.0.0.1:{redirect.server_port}").status_code == 200
            r = client.simulate_post(f"/api/v1/clusters/{name}/scale", headers=ALICE, json={"count": 1})
            assert r.status_code == 503 and "307" in r.json["error"]
    assert hits == []
