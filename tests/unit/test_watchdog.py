"""The systemd watchdog of an API instance: pings while the instance answers, none when it does not."""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from gatewayha.api import watchdog
from helpers import datagrams as pings


@pytest.fixture
def notify_socket(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    sock.bind(path)
    sock.settimeout(0.1)
    yield path, sock
    sock.close()


class Instance:
    """A stand-in that answers /api/version until told to hang (every request then waits)."""

    def __init__(self):
        self.hang = threading.Event()
        self.release = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                if outer.hang.is_set():
                    outer.release.wait(10)
                body = b'{"version": "x"}'
                self.send_response(200 if self.path == "/api/version" else 404)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def test_nothing_starts_outside_systemd():
    assert watchdog.start({}) is None
    assert watchdog.start({"NOTIFY_SOCKET": "/run/x", "GATEWAYHA_API_BIND": "127.0.0.1:1"}) is None  # no WatchdogSec
    assert watchdog.start({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "1000000"}) is None  # not gatewayha-api


@pytest.mark.parametrize("usec,bind", [("soon", "127.0.0.1:1"), ("1000000", "nowhere"), ("0", "127.0.0.1:1")])
def test_a_bad_setting_starts_nothing(usec, bind):
    env = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": usec, "GATEWAYHA_API_BIND": bind}
    assert watchdog.start(env) is None


def test_pings_while_the_instance_answers_and_stops_when_it_hangs(notify_socket):
    path, sock = notify_socket
    instance = Instance()
    stop = threading.Event()
    try:
        env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "300000", "GATEWAYHA_API_BIND": f"0.0.0.0:{instance.port}"}
        thread = watchdog.start(env, stop)
        assert thread is not None
        got = pings(sock, 1.0)
        assert len(got) >= 3 and set(got) == {b"WATCHDOG=1"}

        instance.hang.set()
        pings(sock, 0.2)  # a ping already on its way
        assert pings(sock, 1.0) == []

        instance.hang.clear()
        instance.release.set()
        assert len(pings(sock, 1.0)) >= 2
    finally:
        stop.set()
        instance.close()
    thread.join(2)
    assert not thread.is_alive()


def test_serving_is_false_for_nothing_listening_or_a_wrong_answer():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free_port = s.getsockname()[1]
    assert watchdog.serving("127.0.0.1", free_port, timeout=0.5) is False
    instance = Instance()
    try:
        assert watchdog.serving("127.0.0.1", instance.port, timeout=0.5) is True
    finally:
        instance.close()


def test_an_abstract_socket_name_is_understood():
    name = f"@gatewayha-test-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name[1:])
        sock.settimeout(2)
        watchdog.notify(name, b"WATCHDOG=1")
        assert sock.recv(64) == b"WATCHDOG=1"
