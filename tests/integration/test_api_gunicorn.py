"""gatewayha-api --wsgi gunicorn: the same app served by gunicorn's gthread worker, a graceful
stop, and gunicorn's worker timeout replacing a hung worker (what systemd's watchdog does for an
instance under granian)."""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import signal
import threading
import time
import uuid
from pathlib import Path

import psycopg
import pytest
from haproxy_fixture import free_port

from conftest import SECRET
from gatewayha.auth import users
from helpers import alive, children, real_api, wait_until

TIMEOUT = 3  # server.gunicorn_timeout of the instance under test
PASSWORD = "right-password"


def request(port: int, method: str, path: str, headers=None, body=None, timeout: float = 10):
    """(status, headers, body) of one request, or None when no answer came within ``timeout``."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def serving(port: int, timeout: float = 2) -> bool:
    answer = request(port, "GET", "/api/version", timeout=timeout)
    return answer is not None and answer[0] == 200


@pytest.fixture
def user(db_dsn) -> dict[str, str]:
    name = "g" + uuid.uuid4().hex[:10]
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        users.add_user(conn, name, PASSWORD)
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{PASSWORD}".encode()).decode()}


@pytest.fixture
def gunicorn_api(db_dsn, tmp_path):
    """A gatewayha-api under gunicorn, serving: (its process, port, pid file, log file)."""
    port = free_port()
    env = dict(
        GATEWAYHA_DATABASE__DSN=db_dsn,
        GATEWAYHA_SERVER__SECRET=SECRET,
        GATEWAYHA_SERVER__GUNICORN_TIMEOUT=str(TIMEOUT),
        GATEWAYHA_SERVER__WAIT_TIMEOUT="4",
        GATEWAYHA_NODE__STATE_DIR=str(tmp_path / "node"),
        GATEWAYHA_API_THREADS="8",
    )
    pid_file = tmp_path / "api.pid"
    args = ("--wsgi", "gunicorn", "--pid-file", str(pid_file))
    with real_api(tmp_path, f"127.0.0.1:{port}", *args, **env) as api:
        wait_until(lambda: serving(port), 30, "gatewayha-api under gunicorn")
        yield api, port, pid_file, tmp_path / "api.log"


def test_gunicorn_serves_the_api_with_the_same_app(gunicorn_api, user):
    api, port, pid_file, log = gunicorn_api
    assert int(pid_file.read_text()) == api.pid
    [worker] = children(api.pid)  # one gthread worker process (GATEWAYHA_API_PROCESSES=1)

    status, headers, body = request(port, "GET", "/api/version")
    assert status == 200 and headers["server"] == "gunicorn", headers  # gunicorn answers, not granian
    assert "version" in json.loads(body)
    status, headers, body = request(port, "GET", "/api/v1/clusters/")
    assert status == 401 and headers["www-authenticate"].startswith("Basic"), (status, headers)
    status, headers, body = request(port, "GET", "/api/v1/clusters/", headers=user)
    assert (status, json.loads(body)) == (200, {}), body
    assert "gatewayha-session=" in headers["set-cookie"]
    # A 10 kB credential (HAProxy passes up to 16 kB of headers) reaches the app: its 401 JSON,
    # not gunicorn's own 400 page.
    status, _, body = request(port, "GET", "/api/v1/clusters/", headers={"Authorization": "token " + "a" * 10_000})
    assert status == 401 and json.loads(body).keys() == {"error"}, (status, body[:200])

    # No header rewrites the path the app routes on (gunicorn trusts loopback's SCRIPT_NAME by default).
    status, _, _ = request(port, "GET", "/api/api/version", headers={"SCRIPT_NAME": "/api"})
    assert status == 404
    status, headers, _ = request(port, "GET", "/api/version", headers={"X-Forwarded-Proto": "https"})
    assert status == 200

    text = log.read_text()
    # gunicorn's lines and the app's request lines in the app's format, on the same stream.
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
    assert re.search(rf"^{stamp} INFO gunicorn Listening at: http://127\.0\.0\.1:{port} ", text, re.M), text
    assert re.search(rf"^{stamp} INFO gunicorn Using worker: gthread$", text, re.M), text
    assert re.search(rf"^{stamp} INFO gunicorn Booting worker with pid: {worker}$", text, re.M), text
    assert re.search(rf"^{stamp} INFO gatewayha\.api request_id=\w+ user=g\w+ GET /api/v1/clusters -> 200 ", text, re.M)
    assert "granian" not in text and "Traceback" not in text
    maps = Path(f"/proc/{worker}/maps").read_text() + Path(f"/proc/{api.pid}/maps").read_text()
    assert "_granian" not in maps  # granian's extension was never loaded


def test_a_hung_worker_is_replaced_after_the_gunicorn_timeout(gunicorn_api):
    api, port, _, log = gunicorn_api
    [worker] = children(api.pid)
    os.kill(worker, signal.SIGSTOP)  # wedged: nothing of the worker runs, the port stays open
    stopped = time.monotonic()
    try:
        assert not serving(port, timeout=1), "the instance answered while its only worker was stopped"
        assert children(api.pid) == [worker], "replaced before the timeout"

        new = wait_until(lambda: [c for c in children(api.pid) if c != worker], TIMEOUT + 10, "a new worker")
        replaced = time.monotonic() - stopped
    finally:
        if alive(worker):
            os.kill(worker, signal.SIGCONT)
    assert TIMEOUT - 0.5 <= replaced <= TIMEOUT + 5, f"replaced after {replaced:.1f} s (timeout {TIMEOUT} s)"
    wait_until(lambda: not alive(worker), 10, "the hung worker to be killed")
    wait_until(lambda: serving(port), 30, "the new worker to serve")
    assert api.poll() is None and children(api.pid) == new, "the instance (its main process) stayed up"
    assert f"CRITICAL gunicorn WORKER TIMEOUT (pid:{worker})" in log.read_text()


def test_sighup_replaces_the_worker_and_the_instance_keeps_serving(gunicorn_api):
    """systemctl reload (the unit's ExecReload: kill -HUP): a new worker, the old one stopped."""
    api, port, _, log = gunicorn_api
    [worker] = children(api.pid)
    api.send_signal(signal.SIGHUP)
    new = wait_until(lambda: [c for c in children(api.pid) if c != worker], 30, "a new worker")
    wait_until(lambda: not alive(worker), 30, "the old worker to stop")
    wait_until(lambda: serving(port), 30, "the new worker to serve")
    assert api.poll() is None and children(api.pid) == new
    assert "Traceback" not in log.read_text()


def test_sigterm_lets_a_long_poll_finish_then_the_instance_exits(gunicorn_api, user):
    api, port, pid_file, _ = gunicorn_api
    status, _, body = request(port, "POST", "/api/v1/clusters/", headers=user, body=b"{}")
    assert status == 201, body
    name = json.loads(body)["name"]  # PENDING: no job worker runs here, the poll waits its 4 s

    answers = []
    poll = threading.Thread(
        target=lambda: answers.append(request(port, "GET", f"/api/v1/clusters/{name}?wait", headers=user))
    )
    poll.start()
    time.sleep(1)  # the poll is in the worker (it waits up to server.wait_timeout, 4 s)
    sent = time.monotonic()
    api.send_signal(signal.SIGTERM)
    poll.join(15)
    assert api.wait(30) == 0
    [(status, _, body)] = answers
    assert status == 200 and json.loads(body)["name"] == name, (status, body)
    assert time.monotonic() - sent >= 2, "the poll ran its course"
    assert not pid_file.exists(), "gunicorn removes its pid file on a clean stop"
    assert not serving(port, timeout=1)
