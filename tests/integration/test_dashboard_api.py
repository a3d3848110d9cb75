"""The API's side of dashboard access (a request HAProxy found no valid token on), and its
refusal of calls a web page makes: Falcon TestClient against a real Postgres."""

from __future__ import annotations

import pytest
from test_api import ALICE, BOB, client, create, db, env, heartbeat, stop_all  # noqa: F401  (fixtures)

from conftest import SECRET
from gatewayha import dashboards

NAVIGATE = {"Sec-Fetch-Site": "none", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}


@pytest.fixture
def running(client, db):  # noqa: F811
    stop_all(db)
    name = create(client)
    assert heartbeat(client, name).status_code == 200
    return name


def test_no_credentials_is_a_basic_challenge_a_browser_answers(client, running):  # noqa: F811
    r = client.simulate_get(f"/clusters/{running}/status", headers=NAVIGATE)
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Basic ")
    assert dashboards.COOKIE not in r.cookies


def test_the_owner_gets_a_token_for_this_cluster_and_is_sent_back(client, running):  # noqa: F811
    r = client.simulate_get(f"/clusters/{running}/status", query_string="theme=dark", headers={**ALICE, **NAVIGATE})
    assert r.status_code == 303
    assert r.headers["location"] == f"/clusters/{running}/status?theme=dark"
    cookie = r.cookies[dashboards.COOKIE]
    assert cookie.path == f"/clusters/{running}/"
    assert cookie.http_only and cookie.same_site == "Strict"
    assert dashboards.check_token(SECRET, cookie.value, running) == "alice"
    assert dashboards.check_token(SECRET, cookie.value, "f" * 32) is None
    assert r.headers["cache-control"] == "no-store"


@pytest.mark.parametrize(
    ("path", "target"), [("", "/"), ("/", "/"), ("/info/main/workers.html", "/info/main/workers.html")]
)
def test_redirect_keeps_the_path_and_ends_under_the_cookie_path(client, running, path, target):  # noqa: F811
    r = client.simulate_get(f"/clusters/{running}{path}", headers=ALICE)
    assert r.status_code == 303
    assert r.headers["location"] == f"/clusters/{running}{target}"


def test_another_user_and_unknown_clusters_get_404_as_the_api_answers(client, running):  # noqa: F811
    assert client.simulate_get(f"/clusters/{running}/status", headers={**BOB, **NAVIGATE}).status_code == 404
    assert client.simulate_get(f"/api/v1/clusters/{running}", headers=BOB).status_code == 404
    assert client.simulate_get(f"/clusters/{'e' * 32}/status", headers=ALICE).status_code == 404
    assert client.simulate_get("/clusters/not-a-name/status", headers=ALICE).status_code == 404


def test_a_cluster_without_a_running_dashboard_is_404(client, db):  # noqa: F811
    stop_all(db)
    name = create(client)  # PENDING: no dashboard yet
    assert client.simulate_get(f"/clusters/{name}/status", headers=ALICE).status_code == 404


def test_a_valid_token_that_reached_the_api_is_503_not_a_redirect_loop(client, running):  # noqa: F811
    token = dashboards.make_token(SECRET, "alice", running, 60)
    r = client.simulate_get(f"/clusters/{running}/status", headers=ALICE, cookies={dashboards.COOKIE: token})
    assert r.status_code == 503
    assert r.headers["retry-after"] == "1"


def test_a_navigation_from_another_site_reloads_from_this_origin(client, running):  # noqa: F811
    headers = {**ALICE, **NAVIGATE, "Sec-Fetch-Site": "cross-site"}
    r = client.simulate_get(f"/clusters/{running}/status", headers=headers)
    assert r.status_code == 200
    assert f'http-equiv="refresh" content="0;url=/clusters/{running}/status"' in r.text
    assert dashboards.check_token(SECRET, r.cookies[dashboards.COOKIE].value, running) == "alice"


@pytest.mark.parametrize(
    "metadata",
    [
        {"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors", "Sec-Fetch-Dest": "empty"},  # fetch()
        {"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "iframe"},
        {"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"},  # open()
        {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "iframe"},
        {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "script"},
    ],
    ids=["fetch", "same-origin-frame", "window-open", "cross-site-frame", "cross-site-script"],
)
def test_a_page_cannot_log_in_to_a_dashboard(client, running, metadata):  # noqa: F811
    r = client.simulate_get(f"/clusters/{running}/status", headers={**ALICE, **metadata})
    assert r.status_code == 403
    assert dashboards.COOKIE not in r.cookies
    # Refused before any credential check: no Basic prompt for a page's request.
    assert client.simulate_get(f"/clusters/{running}/status", headers=metadata).status_code == 403


@pytest.mark.parametrize(
    "metadata",
    [
        {"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors", "Sec-Fetch-Dest": "empty"},
        {"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "cors", "Sec-Fetch-Dest": "empty"},
        {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"},
        {"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "iframe"},
        {"Origin": "http://gateway.example"},  # a browser without Fetch Metadata
        {"Origin": "null"},  # a sandboxed page
    ],
    ids=["fetch", "same-site", "cross-site-link", "frame", "origin", "null-origin"],
)
def test_the_api_refuses_what_a_web_page_sends_whatever_its_credentials(client, db, running, metadata):  # noqa: F811
    cookie = client.simulate_get("/api/v1/clusters/", headers=ALICE).cookies["gatewayha-session"].value
    for creds in ({**ALICE}, {"Cookie": f"gatewayha-session={cookie}"}):
        assert client.simulate_get("/api/v1/clusters/", headers={**creds, **metadata}).status_code == 403
        r = client.simulate_delete(f"/api/v1/clusters/{running}", headers={**creds, **metadata})
        assert r.status_code == 403
    status = db.execute("SELECT status FROM clusters WHERE name = %s", (running,)).fetchone()["status"]
    assert status == "RUNNING"


def test_the_api_still_answers_clients_and_the_users_own_address_bar(client, running):  # noqa: F811
    assert running in client.simulate_get("/api/v1/clusters/", headers=ALICE).json  # dask-gateway client
    assert running in client.simulate_get("/api/v1/clusters/", headers={**ALICE, **NAVIGATE}).json


def test_the_session_cookie_is_strict_and_scoped_to_the_api(client):  # noqa: F811
    cookie = client.simulate_get("/api/v1/clusters/", headers=ALICE).cookies["gatewayha-session"]
    assert (cookie.path, cookie.same_site, cookie.http_only) == ("/api/", "Strict", True)
