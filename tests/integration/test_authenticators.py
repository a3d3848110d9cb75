"""Authentication through the real app and a real Postgres, played by an attacker: forged,
garbled, truncated and over-long credentials of every kind, cluster tokens and user credentials
swapped, authenticators chosen by [auth] (an unknown one refused), several challenges at once,
and a plug-in authenticator of the kind Kerberos will be. Every refusal is a 4xx with a JSON
``{"error"}`` that says why; none is a 500."""

from __future__ import annotations

import base64
import dataclasses

import falcon.testing
import psycopg
import pytest
from psycopg.rows import dict_row

from conftest import SECRET
from gatewayha import clusters
from gatewayha.api.app import create_app
from gatewayha.auth import secrets as sec
from gatewayha.auth import users
from gatewayha.auth.authenticators import REGISTRY, Authenticator, User, authorization
from gatewayha.config import ConfigError, load_settings
from gatewayha.db.pool import make_pool
from gatewayha.errors import Unauthorized

CONFIG = """
[server]
secret = "{secret}"
[database]
dsn = "{dsn}"
[auth]
authenticators = ["token", "basic"]
throttle_user_failures = 1000
throttle_source_failures = 1000
"""
COOKIE = "gatewayha-session"
CHALLENGE = 'Basic realm="gatewayha"'
HEARTBEAT = {
    "scheduler_address": "tls://127.0.0.1:40001",
    "dashboard_address": "http://127.0.0.1:40002",
    "api_address": "https://127.0.0.1:40003",
    "count": 0,
}


@pytest.fixture(scope="module")
def db(db_dsn):
    with psycopg.connect(db_dsn, autocommit=True, row_factory=dict_row) as conn:
        users.add_user(conn, "alice", "wonderland")
        users.add_user(conn, "bob", "builder")
        yield conn


@pytest.fixture(scope="module")
def env(db, db_dsn, tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "gatewayha.toml"
    path.write_text(CONFIG.format(secret=SECRET, dsn=db_dsn))
    settings = load_settings(path, {})
    with make_pool(settings.database, "test-authenticators", open_wait=True) as pool:
        yield settings, pool, db_dsn


def app_client(env, **auth) -> falcon.testing.TestClient:
    settings, pool, _ = env
    settings = dataclasses.replace(settings, auth=dataclasses.replace(settings.auth, **auth))
    return falcon.testing.TestClient(create_app(settings, pool))


@pytest.fixture(scope="module")
def client(env):
    return app_client(env)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


ALICE = basic("alice", "wonderland")


@pytest.fixture(scope="module")
def cluster(client, db):
    """(name, token) of a PENDING cluster of alice's."""
    r = client.simulate_post("/api/v1/clusters/", headers={"Authorization": ALICE}, json={})
    assert r.status_code == 201, r.text
    name = r.json["name"]
    row = db.execute("SELECT name, token_enc FROM clusters WHERE name = %s", (name,)).fetchone()
    return name, clusters.cluster_token(SECRET, row)


@pytest.fixture(scope="module")
def api_token(db):
    return users.create_token(db, "alice")


def refused(r, status: int = 401, error: str | None = None) -> None:
    """A refusal: the status, a JSON body of exactly {"error"}, its message when given."""
    assert r.status_code == status, (r.status_code, r.text)
    assert set(r.json) == {"error"}, r.text
    if error is not None:
        assert r.json["error"] == error


def get(client, authorization: str | None = None, cookie: str | None = None, path: str = "/api/v1/clusters/"):
    headers = {"Authorization": authorization} if authorization is not None else {}
    if cookie is not None:
        headers["Cookie"] = f"{COOKIE}={cookie}"
    return client.simulate_get(path, headers=headers)


def state(db, name: str) -> tuple:
    row = db.execute("SELECT status, scheduler_address FROM clusters WHERE name = %s", (name,)).fetchone()
    return row["status"], row["scheduler_address"]


# --- user credentials of each kind, tampered with -------------------------------------------


@pytest.mark.parametrize(
    "header, error",
    [
        (basic("alice", "wonderlan"), "Invalid user name or password"),  # forged: a guess
        (basic("mallory", "wonderland"), "Invalid user name or password"),  # no such user
        ("Basic " + base64.b64encode(b"alice:wonderland").decode()[:-3], "Malformed Basic credentials"),  # truncated
        ("Basic " + base64.b64encode(b"alice:wonderland").decode()[1:], "Malformed Basic credentials"),
        ("Basic %%%%", "Malformed Basic credentials"),  # garbled
        ("Basic " + base64.b64encode(b"alice").decode(), "Invalid user name or password"),
        ("Basic " + base64.b64encode(b"alice\n:wonderland").decode(), "Invalid user name or password"),
        ("Basic " + base64.b64encode(b"alice:" + b"w" * 4000).decode(), "Malformed credentials"),  # over-long
        ("Basic " + "QQ" * 5000, "Malformed credentials"),
        ("Basic YWxp\tY2U6d29uZGVybGFuZA==", "Malformed credentials"),  # a control character
    ],
)
def test_tampered_basic_credentials_are_refused_with_the_reason(client, header, error):
    r = get(client, header)
    refused(r, 401, error)
    assert r.headers["WWW-Authenticate"] == CHALLENGE
    assert COOKIE not in r.cookies


def test_tampered_api_tokens_are_refused_with_the_reason(client, api_token):
    token_id, secret = api_token[len("gha_") :].split("_", 1)
    cases = [
        (f"gha_{token_id}_{secret[:-1]}", "Invalid API token"),  # truncated
        (f"gha_{token_id}_{secret}x", "Invalid API token"),  # extended
        (f"gha_{token_id}_{'A' * len(secret)}", "Invalid API token"),  # forged secret, real id
        (f"gha_{'0' * 12}_{secret}", "Invalid API token"),  # forged id, real secret
        ("gha_", "Invalid API token"),  # garbled
        ("gha__", "Invalid API token"),
        (f"gha_{token_id}", "Invalid API token"),
        ("gha_" + "a" * 5000, "Malformed credentials"),  # over-long
    ]
    for token, error in cases:
        refused(get(client, f"token {token}"), 401, error)
    assert get(client, f"token {api_token}").status_code == 200
    assert get(client, f"TOKEN {api_token}").status_code == 200  # schemes are case-insensitive


def test_an_expired_or_revoked_api_token_is_refused(client, db):
    token = users.create_token(db, "bob", days=-1)
    refused(get(client, f"token {token}"), 401, "Invalid API token")
    token = users.create_token(db, "bob")
    assert get(client, f"token {token}").status_code == 200
    db.execute("DELETE FROM api_tokens WHERE user_name = 'bob'")
    refused(get(client, f"token {token}"), 401, "Invalid API token")


def test_an_api_token_opens_no_session(client, api_token):
    r = get(client, f"token {api_token}")
    assert r.status_code == 200 and COOKIE not in r.cookies


def test_tampered_session_cookies_fall_back_to_the_challenge(client):
    good = get(client, ALICE).cookies[COOKIE].value
    user, expiry, kid, mac = good.split("|")
    for cookie in (
        good[:-1],  # truncated
        f"bob|{expiry}|{kid}|{mac}",  # another user under alice's MAC
        f"{user}|{int(expiry) + 1}|{kid}|{mac}",  # a longer life
        f"{user}|{expiry}|00000000|{mac}",  # another key id
        f"{user}|{expiry}|{mac}",  # the pre-key-id shape, re-signed by nobody
        "|".join([user, expiry, kid, "0" * 64]),
        sec.make_session_cookie("another-secret-0123456789", "alice", 3600),  # forged with another key
        good + "x" * 5000,  # over-long
        "\u00e9" * 10,
    ):
        r = get(client, cookie=cookie)
        refused(r, 401, "Authentication required")
        assert r.headers["WWW-Authenticate"] == CHALLENGE
    assert get(client, cookie=good).status_code == 200


def test_a_valid_session_is_used_before_any_authenticator(client, scrypt_calls):
    cookie = get(client, ALICE).cookies[COOKIE].value
    scrypt_calls.clear()
    r = get(client, basic("alice", "a-wrong-password"), cookie=cookie)
    assert r.status_code == 200 and COOKIE not in r.cookies  # the cookie answered: no new one, no scrypt
    assert scrypt_calls == []


# --- cluster tokens and user credentials, swapped -------------------------------------------


def test_a_cluster_token_is_no_user_credential(client, cluster):
    name, token = cluster
    refused(get(client, f"token {token}"), 401, "Cluster tokens are not accepted here")
    refused(get(client, f"token {token}", path="/api/v1/options"), 401, "Cluster tokens are not accepted here")
    # The dashboard login is a user's route too: no dashboard token for a scheduler's token.
    r = get(client, f"token {token}", path=f"/clusters/{name}/status")
    refused(r, 401, "Cluster tokens are not accepted here")
    assert "Set-Cookie" not in r.headers
    # On the cluster's own route a scheduler is no user: it sees nothing.
    refused(get(client, f"token {token}", path=f"/api/v1/clusters/{name}"), 404)


def test_a_cluster_token_beside_a_valid_session_is_still_refused(client, cluster):
    cookie = get(client, ALICE).cookies[COOKIE].value
    refused(get(client, f"token {cluster[1]}", cookie=cookie), 401, "Cluster tokens are not accepted here")


@pytest.mark.parametrize("kind", ["basic", "cookie", "api token", "none"])
def test_a_user_credential_is_no_cluster_token(client, db, cluster, api_token, kind):
    name, _ = cluster
    headers = {}
    if kind == "basic":
        headers["Authorization"] = ALICE
    elif kind == "cookie":
        headers["Cookie"] = f"{COOKIE}={get(client, ALICE).cookies[COOKIE].value}"
    elif kind == "api token":
        headers["Authorization"] = f"token {api_token}"
    r = client.simulate_post(f"/api/v1/clusters/{name}/heartbeat", headers=headers, json=HEARTBEAT)
    if kind == "api token":  # a token, so checked as the cluster's, which it is not
        refused(r, 403, "Invalid cluster token")
    else:
        refused(r, 401, "A cluster token is required")
        assert r.headers["WWW-Authenticate"] == "token"
    assert state(db, name) == ("PENDING", None)


def test_tampered_cluster_tokens_are_refused_and_change_nothing(client, db, cluster):
    name, token = cluster
    for forged, status, error in (
        (token[:-1], 403, "Invalid cluster token"),  # truncated
        (token + "A", 403, "Invalid cluster token"),
        ("A" * len(token), 403, "Invalid cluster token"),  # forged
        (sec.legacy_cluster_token(SECRET, name), 403, "Invalid cluster token"),  # the pre-0005 token
        (token + "A" * 5000, 401, "Malformed credentials"),  # over-long
        (token[:10] + "\u00e9" + token[11:], 401, "Malformed credentials"),  # garbled
    ):
        r = client.simulate_post(
            f"/api/v1/clusters/{name}/heartbeat", headers={"Authorization": f"token {forged}"}, json=HEARTBEAT
        )
        refused(r, status, error)
        r = client.simulate_delete(f"/api/v1/clusters/{name}", headers={"Authorization": f"token {forged}"})
        assert r.status_code in (401, 403), r.text
    assert state(db, name) == ("PENDING", None)


def test_another_clusters_token_is_refused_on_this_cluster(client, db, cluster):
    name, _ = cluster
    r = client.simulate_post("/api/v1/clusters/", headers={"Authorization": ALICE}, json={})
    other = r.json["name"]
    row = db.execute("SELECT name, token_enc FROM clusters WHERE name = %s", (other,)).fetchone()
    token = clusters.cluster_token(SECRET, row)
    r = client.simulate_post(
        f"/api/v1/clusters/{name}/heartbeat", headers={"Authorization": f"token {token}"}, json=HEARTBEAT
    )
    refused(r, 403, "Invalid cluster token")
    assert state(db, name) == ("PENDING", None)


# --- choosing authenticators ------------------------------------------------------------------


def test_an_unknown_authenticator_name_stops_the_app_from_starting(env, tmp_path):
    settings, pool, dsn = env
    path = tmp_path / "gatewayha.toml"
    path.write_text(CONFIG.format(secret=SECRET, dsn=dsn).replace('["token", "basic"]', '["token", "ldap"]'))
    with pytest.raises(ConfigError, match="auth.authenticators: unknown authenticator 'ldap'"):
        load_settings(path, {})
    with pytest.raises(ConfigError, match="unknown authenticator 'ldap'"):
        app_client(env, authenticators=["token", "ldap"])


def test_only_the_configured_authenticators_are_asked(env, api_token):
    basic_only = app_client(env, authenticators=["basic"])
    assert get(basic_only, ALICE).status_code == 200
    r = get(basic_only, f"token {api_token}")
    refused(r, 401, "Authentication required")
    assert r.headers["WWW-Authenticate"] == CHALLENGE
    token_only = app_client(env, authenticators=["token"])
    assert get(token_only, f"token {api_token}").status_code == 200
    r = get(token_only, ALICE)
    refused(r, 401, "Authentication required")
    assert "WWW-Authenticate" not in r.headers  # API tokens are not asked for by a challenge


def test_the_deprecated_auth_type_still_picks_its_authenticators(env, db, api_token):
    simple = app_client(env, authenticators=[], type="simple", simple_password="shared")
    assert get(simple, basic("carol", "shared")).status_code == 200
    assert get(simple, f"token {api_token}").status_code == 200
    refused(get(simple, basic("alice", "wonderland")), 401, "Invalid user name or password")
    assert db.execute("SELECT 1 FROM users WHERE name = 'carol'").fetchone() is not None


class Negotiate(Authenticator):
    """A stand-in for Kerberos: "Negotiate good" is a user with groups, answered with a
    mutual-authentication token; "Negotiate evil" names a user no table may hold."""

    scheme = "negotiate"
    session = False
    provisions = True

    def authenticate(self, req):
        scheme, value = authorization(req)
        if scheme != self.scheme:
            return None
        if value == "good":
            req.context.negotiate_reply = "mutual-token"
            return User("kerb.user@TEST", frozenset({"physics"}), admin=False)
        if value == "evil":
            return User("mallory|9999999999|x")
        raise Unauthorized("Kerberos negotiation failed", {"WWW-Authenticate": "Negotiate continue"})

    def challenge(self):
        return "Negotiate"

    def response_headers(self, req, user):
        return {"WWW-Authenticate": f"Negotiate {req.context.negotiate_reply}"}


@pytest.fixture
def negotiate(env, monkeypatch):
    monkeypatch.setitem(REGISTRY, "negotiate", Negotiate)
    return app_client(env, authenticators=["basic", "negotiate", "token"])


def test_every_configured_challenge_is_sent(negotiate):
    for r in (get(negotiate), get(negotiate, "Bearer x"), get(negotiate, basic("alice", "wrong"))):
        assert r.status_code == 401 and set(r.json) == {"error"}
        # One field, the challenges in the configured order (RFC 9110 11.6.1; Falcon writes
        # one header line per name).
        assert r.headers["WWW-Authenticate"] == f"{CHALLENGE}, Negotiate"


def test_a_plugin_authenticator_names_a_user_and_adds_its_headers(negotiate, db):
    r = get(negotiate, "Negotiate good")
    assert r.status_code == 200, r.text
    assert r.headers["WWW-Authenticate"] == "Negotiate mutual-token"
    assert COOKIE not in r.cookies  # session = False
    assert db.execute("SELECT 1 FROM users WHERE name = 'kerb.user@TEST'").fetchone() is not None  # provisioned
    r = negotiate.simulate_post("/api/v1/clusters/", headers={"Authorization": "Negotiate good"}, json={})
    assert r.status_code == 201
    owner = db.execute("SELECT owner FROM clusters WHERE name = %s", (r.json["name"],)).fetchone()["owner"]
    assert owner == "kerb.user@TEST"


def test_a_plugin_refusal_keeps_its_headers_and_every_challenge(negotiate):
    r = get(negotiate, "Negotiate garbage")
    refused(r, 401, "Kerberos negotiation failed")
    assert r.headers["WWW-Authenticate"] == "Negotiate continue"


def test_a_user_name_no_table_may_hold_is_refused_not_stored(negotiate, db):
    r = get(negotiate, "Negotiate evil")
    refused(r, 401, "Invalid user name")
    assert db.execute("SELECT 1 FROM users WHERE name LIKE 'mallory%'").fetchone() is None


def test_a_plugin_never_sees_a_cluster_token(env, cluster, monkeypatch):
    seen = []

    class Spy(Negotiate):
        scheme = "token-spy"

        def authenticate(self, req):
            seen.append(req.get_header("Authorization"))
            return None

    monkeypatch.setitem(REGISTRY, "spy", Spy)
    client = app_client(env, authenticators=["spy", "basic"])
    name, token = cluster
    client.simulate_post(f"/api/v1/clusters/{name}/heartbeat", headers={"Authorization": f"token {token}"}, json={})
    client.simulate_delete(f"/api/v1/clusters/{name}x", headers={"Authorization": f"token {token}"})
    client.simulate_get("/api/v1/clusters/", headers={"Authorization": f"token {token}"})
    assert seen == []
    get(client, ALICE)
    assert seen == [ALICE]
