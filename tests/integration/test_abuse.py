"""Abuse bounds against the real app and a real Postgres: login throttling (429 before any
password hash), one user's long polls capped per process, bad credentials always 401."""

from __future__ import annotations

import base64
import dataclasses
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import falcon.testing
import psycopg
import pytest
from haproxy_fixture import free_port
from psycopg.rows import dict_row

from conftest import SECRET, new_database
from gatewayha.api.app import create_app
from gatewayha.api.throttle import LoginThrottle
from gatewayha.auth import users
from gatewayha.config import load_settings
from gatewayha.db.migrate import migrate
from gatewayha.db.pool import make_pool
from helpers import real_api, wait_until

CONFIG = """
[server]
secret = "{secret}"
wait_timeout = 3.0
max_waits_per_user = 3
[database]
dsn = "{dsn}"
pool_max = 12
[auth]
throttle_window = 60
throttle_user_failures = 3
throttle_source_failures = 5
"""


@pytest.fixture(scope="module")
def env(pg_server, tmp_path_factory):
    dsn = new_database(pg_server)
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        migrate(conn)
    path = tmp_path_factory.mktemp("cfg") / "gatewayha.toml"
    path.write_text(CONFIG.format(secret=SECRET, dsn=dsn))
    settings = load_settings(path, {})
    pool = make_pool(settings.database, "test-abuse", open_wait=True)
    yield settings, pool, dsn
    pool.close()


@pytest.fixture
def db(env):
    with psycopg.connect(env[2], autocommit=True, row_factory=dict_row) as conn:
        yield conn


def app_client(env, **changes) -> falcon.testing.TestClient:
    settings, pool, _ = env
    for section, values in changes.items():
        settings = dataclasses.replace(settings, **{section: dataclasses.replace(getattr(settings, section), **values)})
    return falcon.testing.TestClient(create_app(settings, pool))


def basic(user, password):
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def new_user(db, password="right-password") -> str:
    name = "u" + uuid.uuid4().hex[:10]
    users.add_user(db, name, password)
    return name


def new_source() -> str:
    n = uuid.uuid4().int
    return f"10.{n % 250}.{(n >> 8) % 250}.{(n >> 16) % 250 + 1}"


def login(client, user, password, source=None, **kw):
    headers = basic(user, password)
    if source is not None:
        headers["X-Forwarded-For"] = source
    return client.simulate_get("/api/v1/clusters/", headers=headers, **kw)


def assert_throttled(r):
    assert r.status_code == 429, (r.status_code, r.text)
    assert set(r.json) == {"error"} and "Too many failed logins" in r.json["error"]
    assert 1 <= int(r.headers["Retry-After"]) <= 60


# --- login throttling -------------------------------------------------------------------


def test_user_is_throttled_after_its_failures_and_scrypt_is_not_run(env, db, scrypt_calls):
    client = app_client(env)
    name, source = new_user(db), new_source()
    for _ in range(3):
        assert login(client, name, "guess", source).status_code == 401
    assert len(scrypt_calls) == 3
    r = login(client, name, "guess", source)
    assert_throttled(r)
    # Even the right password: locked for the window, and still no hash computed.
    assert_throttled(login(client, name, "right-password", source))
    assert len(scrypt_calls) == 3
    # Another user from the same source is not locked.
    other = new_user(db)
    assert login(client, other, "right-password", source).status_code == 200


def test_one_user_guessed_from_many_addresses_is_bounded_by_the_user_limit(env, db, scrypt_calls):
    client = app_client(env)
    name = new_user(db)
    for i in range(3):
        assert login(client, name, f"guess{i}", new_source()).status_code == 401
    for i in range(5):
        assert_throttled(login(client, name, f"more{i}", new_source()))
    assert len(scrypt_calls) == 3
    # Another instance (another app, its own process state) sees the same count: it is in Postgres.
    assert_throttled(login(app_client(env), name, "right-password", new_source()))


def test_a_source_is_throttled_across_user_names_and_cannot_lock_out_others(env, db, scrypt_calls):
    client = app_client(env)
    source = new_source()
    for i in range(5):  # unknown users count too (and run the dummy hash)
        assert login(client, f"nobody{i}-{source}", "guess", source).status_code == 401
    victim = new_user(db)
    for _ in range(10):
        assert_throttled(login(client, victim, "guess", source))
    assert len(scrypt_calls) == 5
    # The throttled source took no slot of the victim's: the victim logs in from elsewhere.
    assert db.execute("SELECT * FROM login_failures WHERE scope = 'user' AND key = %s", (victim,)).fetchone() is None
    assert login(client, victim, "right-password", new_source()).status_code == 200


def test_x_forwarded_for_counts_only_from_a_trusted_proxy(env, db):
    name_spoof = [new_user(db) for _ in range(6)]
    untrusted = app_client(env, server={"trusted_proxies": "192.0.2.1"})
    peer = new_source()
    # A client that is not the proxy claims a new address each time: its own address counts.
    for i in range(5):
        r = login(untrusted, name_spoof[i], "guess", new_source(), remote_addr=peer)
        assert r.status_code == 401
    assert_throttled(login(untrusted, name_spoof[5], "guess", new_source(), remote_addr=peer))
    # Through the trusted proxy, the last X-Forwarded-For entry (the one HAProxy appended) is
    # the source; what the client put before it is ignored.
    trusted = app_client(env, server={"trusted_proxies": "192.0.2.1"})
    real = new_source()
    for _ in range(5):
        r = login(trusted, new_user(db), "guess", f"{new_source()}, {real}", remote_addr="192.0.2.1")
        assert r.status_code == 401
    assert_throttled(login(trusted, new_user(db), "guess", f"{new_source()}, {real}", remote_addr="192.0.2.1"))


def test_successes_do_not_count(env, db, scrypt_calls):
    name, source = new_user(db), new_source()
    for _ in range(2):
        assert login(app_client(env), name, "guess", source).status_code == 401
    for _ in range(5):  # a fresh app each time: no cached verification, scrypt runs
        assert login(app_client(env), name, "right-password", source).status_code == 200
    assert len(scrypt_calls) == 7
    client = app_client(env)
    assert login(client, name, "guess", source).status_code == 401  # the third failure
    assert_throttled(login(client, name, "guess", source))


def test_the_lockout_ends_with_its_short_window(env, db):
    client = app_client(env, auth={"throttle_window": 1.0})
    name, source = new_user(db), new_source()
    for _ in range(3):
        assert login(client, name, "guess", source).status_code == 401
    r = login(client, name, "right-password", source)
    assert_throttled(r)
    assert r.headers["Retry-After"] == "1"
    time.sleep(1.1)
    assert login(client, name, "right-password", source).status_code == 200


def test_a_concurrent_burst_of_guesses_gets_exactly_the_limit(env, db, scrypt_calls):
    client = app_client(env)
    name, source = new_user(db), new_source()
    with ThreadPoolExecutor(10) as ex:
        codes = list(ex.map(lambda i: login(client, name, f"guess{i}", source).status_code, range(20)))
    assert sorted(codes) == [401] * 3 + [429] * 17
    assert len(scrypt_calls) == 3


def test_a_burst_of_one_users_correct_logins_is_not_throttled(env, db, scrypt_calls):
    client = app_client(env)
    name, source = new_user(db), new_source()
    with ThreadPoolExecutor(10) as ex:
        codes = list(ex.map(lambda i: login(client, name, "right-password", source).status_code, range(20)))
    assert codes == [200] * 20
    assert len(scrypt_calls) == 1  # one verification, shared (VerifiedPasswords)
    assert (
        db.execute(
            "SELECT coalesce(sum(failures), 0) AS n FROM login_failures WHERE key IN (%s, %s)", (name, source)
        ).fetchone()["n"]
        == 0
    )


@pytest.mark.parametrize("held", ["source", "user"])
def test_a_release_never_holds_one_row_while_waiting_for_the_other(env, db, held):
    """A deadlock between a release and a concurrent reserve (which locks the source's row, then
    the user's) failed logins with 503 under molecule's STORM-100. Another transaction holds
    the ``held`` row: the release may wait for it, but meanwhile it must hold no other row."""
    settings, pool, dsn = env
    throttle = LoginThrottle(settings)
    name, source = new_user(db), new_source()
    slot = throttle.reserve(db, name, source)
    other = "user" if held == "source" else "source"
    keys = {"source": source, "user": name}
    lock = "SELECT 1 FROM login_failures WHERE scope = %s AND key = %s FOR UPDATE"
    with psycopg.connect(dsn) as holder, psycopg.connect(dsn) as probe:
        holder.execute(lock, (held, keys[held]))
        done = threading.Event()

        def release():
            with pool.connection() as conn:
                throttle.release(conn, slot)
            done.set()

        thread = threading.Thread(target=release, daemon=True)
        thread.start()
        # The release is blocked on the held row (Postgres shows it waiting for a lock) ...
        wait_until(
            lambda: (
                db.execute(
                    "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock' AND query LIKE %s",
                    ("%UPDATE login_failures SET failures = failures - 1%",),
                ).fetchone()["n"]
                == 1
            ),
            10,
        )
        assert not done.is_set()
        # ... and the other row is free: a lock without waiting succeeds.
        probe.execute("SET lock_timeout = '100ms'")
        probe.execute(lock, (other, keys[other]))
        probe.rollback()
        holder.rollback()
        assert done.wait(10)
    thread.join(10)
    failures = db.execute("SELECT scope, failures FROM login_failures WHERE key IN (%s, %s)", (name, source)).fetchall()
    assert {r["scope"]: r["failures"] for r in failures} == {"source": 0, "user": 0}


def test_shared_password_mode_is_throttled_too(env, db):
    client = app_client(env, auth={"type": "simple", "simple_password": "shared"})
    name, source = "s" + uuid.uuid4().hex[:8], new_source()
    for _ in range(3):
        assert login(client, name, "guess", source).status_code == 401
    assert_throttled(login(client, name, "shared", source))
    assert login(client, "s" + uuid.uuid4().hex[:8], "shared", new_source()).status_code == 200


# --- long polls ---------------------------------------------------------------------------


def test_one_users_long_polls_are_capped_and_the_next_is_answered_at_once(env, db):
    client = app_client(env)
    name = new_user(db)
    auth = basic(name, "right-password")
    r = client.simulate_post("/api/v1/clusters/", headers=auth, json={})
    assert r.status_code == 201
    cluster = r.json["name"]
    resource = client.app._router.find(f"/api/v1/clusters/{cluster}")[0]
    results = []

    def poll():
        t0 = time.monotonic()
        r = client.simulate_get(f"/api/v1/clusters/{cluster}", params={"wait": ""}, headers=auth)
        results.append((r.status_code, r.json["status"], time.monotonic() - t0))

    waiters = [threading.Thread(target=poll) for _ in range(3)]
    for t in waiters:
        t.start()
    wait_until(lambda: resource.waits.held(name) == 3, 5, "three long polls")
    t0 = time.monotonic()
    r = client.simulate_get(f"/api/v1/clusters/{cluster}", params={"wait": ""}, headers=auth)
    elapsed = time.monotonic() - t0
    assert r.status_code == 200 and r.json["status"] == "PENDING"
    assert elapsed < 1.0, elapsed  # the fourth did not wait (wait_timeout is 3 s)
    assert all(t.is_alive() for t in waiters)  # while the three still wait
    # Another user's long poll is not affected by this user's cap.
    other = new_user(db)
    other_auth = basic(other, "right-password")
    r = client.simulate_post("/api/v1/clusters/", headers=other_auth, json={})
    assert r.status_code == 201
    t0 = time.monotonic()
    r = client.simulate_get(f"/api/v1/clusters/{r.json['name']}", params={"wait": ""}, headers=other_auth)
    assert time.monotonic() - t0 >= 2.5
    for t in waiters:
        t.join(10)
    assert [s for s, _, _ in results] == [200] * 3 and all(e >= 2.5 for _, _, e in results)
    assert resource.waits.held(name) == 0  # slots are given back
    db.execute("UPDATE clusters SET status = 'STOPPED', stopped_at = now() WHERE owner IN (%s, %s)", (name, other))


# --- bad credentials ----------------------------------------------------------------------

BAD_AUTHORIZATION = [
    "token é",
    "Token é",
    "Basic é",
    "token gha_é_é",
    "token gha_x_" + "é" * 10,
    "token \x00abc",
    "Basic " + base64.b64encode(b"\xff\xfe:\xc3(").decode(),  # not UTF-8
    "Basic " + base64.b64encode("alice:wonderländ".encode("latin1")).decode(),
    "Basic " + base64.b64encode(b"no-colon").decode(),
    "Basic " + base64.b64encode(b":").decode(),
    "Basic !!!!",
    "Basic",
    "token",
    "token ",
    "Bearer abc",
    "",
    " ",
    "token " + "a" * 10_000,
    "Basic " + base64.b64encode(b"alice:" + b"x" * 10_000).decode(),
    "token gha_" + "a" * 10_000,
    "Basic " + "é" * 10_000,
    "token ë\u00ff\u0080",  # latin-1 bytes as a WSGI server decodes them
]
BAD_COOKIES = [
    "é",
    "a|b|c",
    "alice|9999999999|" + "é" * 64,
    "alice|٩٩٩٩٩٩٩٩٩٩|" + "0" * 64,
    "x" * 10_000,
    "|||",
    "\u00ff\u0080|1|2",
]
ROUTES = [
    ("GET", "/api/v1/clusters/"),
    ("GET", "/api/v1/options"),
    ("GET", "/api/v1/clusters/some-cluster"),
    ("GET", "/api/v1/clusters/some-cluster?wait"),
    ("DELETE", "/api/v1/clusters/some-cluster"),
    ("POST", "/api/v1/clusters/some-cluster/heartbeat"),
    ("POST", "/api/v1/clusters/some-cluster/scale"),
]


@pytest.mark.parametrize("header", BAD_AUTHORIZATION, ids=range(len(BAD_AUTHORIZATION)))
def test_bad_authorization_is_401_json_on_every_route(env, header):
    # Some are well-formed wrong passwords: counted, but not up to a 429 here.
    client = app_client(env, auth={"throttle_user_failures": 1000, "throttle_source_failures": 1000})
    for method, path in ROUTES:
        path, _, query = path.partition("?")
        r = client.simulate_request(method, path, query_string=query, headers={"Authorization": header})
        assert r.status_code == 401, (method, path, r.status_code, r.text)
        assert set(r.json) == {"error"}


@pytest.mark.parametrize("cookie", BAD_COOKIES, ids=range(len(BAD_COOKIES)))
def test_bad_session_cookie_is_401_json(env, cookie):
    client = app_client(env)
    for method, path in ROUTES[:3]:
        r = client.simulate_request(method, path, headers={"Cookie": f"{env[0].server.cookie_name}={cookie}"})
        assert r.status_code == 401, (method, path, r.status_code, r.text)
        assert set(r.json) == {"error"}


def _raw(port: int, head: bytes) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        head_end = data.find(b"\r\n\r\n")
        status = int(data.split(b" ", 2)[1])
        length = 0
        for line in data[:head_end].split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v)
        body = data[head_end + 4 :]
        while len(body) < length:
            chunk = s.recv(65536)
            if not chunk:
                break
            body += chunk
        return status, body


RAW_HEADERS = [
    b"Authorization: token \xc3\xa9",  # 'token é' in UTF-8
    b"Authorization: token \xe9",  # latin-1
    b"Authorization: Basic \xc3\xa9",
    b"Authorization: Basic " + base64.b64encode(b"\xff\xfe:\xe9"),
    b"Authorization: token " + b"\xe9" * 10_000,
    b"Authorization: token " + b"a" * 10_000,  # ASCII, oversized: 401, not a 403 for a wrong token
    b"Authorization: Basic",
    b"Cookie: gatewayha-session=\xc3\xa9|1|\xe9",
    b"Cookie: gatewayha-session=" + b"x" * 10_000,
    b"Cookie: gatewayha-session=alice|9999999999|\xff\xfe",
]


@pytest.mark.parametrize("wsgi", ["granian", "gunicorn"])
def test_bad_credentials_through_a_real_gatewayha_api_are_401_never_500(env, tmp_path: Path, wsgi):
    """Bytes as a client sends them (UTF-8, latin-1, 10 kB), through each WSGI server's decoding.

    Observed: granian hands the app a header value with non-ASCII bytes as an empty string
    (so those arrive as "no credentials"), and answers a control character itself (400, before
    the app); gunicorn decodes them as latin-1 (the PEP 3333 way, as falcon's TestClient does in
    the tests above)."""
    settings, _, dsn = env
    port = free_port()
    env = dict(
        GATEWAYHA_DATABASE__DSN=dsn,
        GATEWAYHA_SERVER__SECRET=SECRET,
        GATEWAYHA_NODE__STATE_DIR=str(tmp_path / "node"),
        GATEWAYHA_API_THREADS="8",
    )
    with real_api(tmp_path, f"127.0.0.1:{port}", "--wsgi", wsgi, **env):

        def up():
            try:
                return _raw(port, b"GET /api/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")[0] == 200
            except OSError:
                return False

        wait_until(up, 30, "gatewayha-api")
        for method, path in ROUTES:
            for header in RAW_HEADERS:
                req = f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n".encode()
                status, body = _raw(port, req + header + b"\r\n\r\n")
                assert status == 401, (method, path, header[:60], status, body[:200])
                assert body.startswith(b'{"error"'), body[:200]
    assert b"Traceback" not in (tmp_path / "api.log").read_bytes()
