"""A real HAProxy on loopback, rendered from the project's template, plus stand-ins for what
sits behind it: TLS "schedulers" and small HTTP servers for API instances and dashboards.

Everything started here is stopped by its own PID or handle.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gatewayha import tls
from gatewayha.dashboards import jwt_key
from gatewayha.routes import (
    HAProxyRuntime,
    RuntimeAPIError,
    default_template_path,
    ensure_map_files,
    render_haproxy_cfg,
)
from helpers import wait_until

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
# The server.secret the rendered config's dashboard token key is derived from.
TEST_SECRET = "haproxy-fixture-secret-0123456789"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class HAProxyProcess:
    """``haproxy -W -S <master socket> -f <cfg>`` in the foreground, owned by the test."""

    def __init__(self, workdir: Path, api_servers: list[dict[str, str]], **params: Any) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.map_dir = workdir / "maps"
        self.admin_socket = workdir / "admin.sock"
        self.master_socket = workdir / "master.sock"
        self.cfg_path = workdir / "haproxy.cfg"
        self.log_path = workdir / "haproxy.log"
        self.params = {
            "bind": f"127.0.0.1:{self.port}",
            # Abstract socket names are global to the network namespace: make each unique.
            "abns_name": f"gwha-test-{self.port}-{id(self)}",
            "map_dir": str(self.map_dir),
            "admin_socket": str(self.admin_socket),
            "api_servers": api_servers,
            "maxconn": 1000,
            "api_check_inter": "100ms",
            "api_check_fall": 1,
            "api_check_rise": 1,
            "dashboard_jwt_key": jwt_key(TEST_SECRET),
            **params,
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.runtime = HAProxyRuntime(self.admin_socket)

    def write_config(self) -> None:
        ensure_map_files(self.map_dir)
        self.cfg_path.write_text(render_haproxy_cfg(default_template_path(), **self.params))

    def start(self) -> HAProxyProcess:
        self.write_config()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [HAPROXY, "-W", "-S", str(self.master_socket), "-f", str(self.cfg_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        wait_until(self._ready, 30, f"HAProxy on port {self.port} (log: {self.log_path})", interval=0.01)
        return self

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"HAProxy exited with {self.proc.returncode}: {self.log_path.read_text()}")
        try:
            self.runtime.show_info()
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except (RuntimeAPIError, OSError):
            return False
        return True

    @property
    def master_pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def worker_pid(self) -> int:
        return int(self.runtime.show_info()["Pid"])

    def reload(self) -> int:
        """Reload through the master (SIGUSR2) and return the new worker's PID."""
        old = self.worker_pid()
        self.write_config()
        assert self.proc is not None
        self.proc.send_signal(signal.SIGUSR2)

        def new_worker() -> int | None:
            try:
                pid = self.worker_pid()
            except RuntimeAPIError:
                return None
            return pid if pid != old else None

        return wait_until(new_worker, 30, "a new HAProxy worker after reload", interval=0.01)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()  # the master stops its workers
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


@contextlib.contextmanager
def running_haproxy(tmp_path: Path, api_instances) -> Any:
    """A started HAProxyProcess in front of ``api_instances`` (NamedHTTPServer), stopped after."""
    proc = HAProxyProcess(tmp_path, [{"name": s.name, "address": s.address} for s in api_instances])
    try:
        yield proc.start()
    finally:
        proc.stop()


def make_self_signed_cert(directory: Path, common_name: str) -> tuple[Path, Path]:
    """A cluster's keypair (gatewayha.tls), written to ``<common_name>.crt`` / ``.key``."""
    cert_pem, key_pem = tls.new_keypair(common_name)
    cert_path = directory / f"{common_name}.crt"
    key_path = directory / f"{common_name}.key"
    cert_path.write_text(cert_pem)
    key_path.write_text(key_pem)
    return cert_path, key_path


class TLSSchedulerStandIn:
    """A TLS server standing in for a Dask scheduler: it greets every client with its label.

    It terminates TLS itself, so a client that sees this server's certificate through
    HAProxy proves HAProxy passed TLS through.
    """

    def __init__(self, directory: Path, label: str) -> None:
        self.label = label
        self.cert_path, key_path = make_self_signed_cert(directory, label)
        self.cert_der = ssl.PEM_cert_to_DER_cert(self.cert_path.read_text())
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(self.cert_path, key_path)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.connections = 0
        self._thread = threading.Thread(target=self._serve, name=f"tls-{label}", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        try:
            with self.context.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(f"scheduler {self.label}\n".encode())
                tls.recv(1)  # wait for the client to close
        except (OSError, ssl.SSLError):
            pass

    def close(self) -> None:
        # shutdown() wakes the thread blocked in accept(); close() alone would not on Linux.
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self._thread.join(timeout=5)


@dataclass
class TLSResult:
    greeting: str
    peer_cert_der: bytes


def tls_connect(port: int, server_hostname: str, timeout: float = 5.0) -> TLSResult:
    """Open TLS through HAProxy with this SNI; return the greeting and the peer's certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname=server_hostname) as tls,
    ):
        cert = tls.getpeercert(binary_form=True)
        greeting = tls.recv(1024).decode()
    assert cert is not None
    return TLSResult(greeting=greeting, peer_cert_der=cert)


class _QuietHTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # HAProxy's health checks close with a reset once they have their answer.
        pass


class NamedHTTPServer:
    """A small HTTP server answering every GET with JSON naming itself, the path and headers.

    ``/api/health`` answers 200 ``{"status": "pass"}`` plus the name, like an API instance.
    POSTs are answered the same way, after ``post_delay`` seconds (an instance that hangs).
    """

    def __init__(self, name: str, post_delay: float = 0.0) -> None:
        self.name = name
        self.post_delay = post_delay
        self.posts = 0
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                headers = {k.lower(): v for k, v in self.headers.items()}
                body: dict[str, Any] = {"name": owner.name, "path": self.path, "headers": headers}
                if self.path == "/api/health":
                    body["status"] = "pass"
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                owner.posts += 1
                time.sleep(owner.post_delay)
                data = json.dumps({"name": owner.name, "path": self.path}).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # HAProxy gave up on us meanwhile
                    pass

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = _QuietHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.address = f"127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, name=f"http-{name}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


def http_get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    """GET through HAProxy on a fresh connection; returns status, headers and decoded JSON."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        raw = response.read()
        header_map = {k.lower(): v for k, v in response.getheaders()}
    finally:
        conn.close()
    return response.status, header_map, json.loads(raw) if raw else None
