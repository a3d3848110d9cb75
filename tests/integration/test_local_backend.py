"""The local backend against real `dask scheduler` / `dask worker` processes.

A tiny HTTP server stands in for the gateway API: it records the scheduler's
heartbeats and self-deletes, so these tests need no Postgres and no HAProxy.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from gatewayha import control, tls
from gatewayha.backends import get_backend
from gatewayha.backends.base import SchedulerSpec, WorkerSpec
from gatewayha.backends.launcher import MARKER_VAR, ProcessLauncher, scheduler_unit
from gatewayha.backends.local import LocalBackend
from gatewayha.config import NodeSettings, Settings
from gatewayha.options import ClusterConfig
from helpers import plain_http_comm, wait_until

GIB = 2**30


# --------------------------------------------------------------------------- helpers


class Recorder:
    """Records what schedulers send to the gateway API."""

    def __init__(self):
        self.requests: list[dict] = []
        self.cond = threading.Condition()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _record(self, status: int) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with recorder.cond:
                    recorder.requests.append(
                        {
                            "method": self.command,
                            "path": self.path,
                            "auth": self.headers.get("Authorization"),
                            "json": json.loads(body) if body else None,
                            "at": time.monotonic(),
                        }
                    )
                    recorder.cond.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_POST(self):  # noqa: N802
                self._record(200)

            def do_DELETE(self):  # noqa: N802
                self._record(204)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.api_url = f"http://127.0.0.1:{self.server.server_address[1]}/api"

    def wait_for(self, predicate, timeout: float = 90.0) -> dict:
        """The first recorded request matching ``predicate``, waiting up to ``timeout``."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for r in self.requests:
                    if predicate(r):
                        return r
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no matching request in {timeout} s; got {self.requests}")
                self.cond.wait(left)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def heartbeat_of(name: str, token: str):
    def match(r: dict) -> bool:
        return (
            r["method"] == "POST"
            and r["path"] == f"/api/v1/clusters/{name}/heartbeat"
            and r["auth"] == f"token {token}"
        )

    return match


def unit_pids(cluster_name: str) -> set[int]:
    """Every live process carrying a unit marker of this cluster (group members included)."""
    out = set()
    needle = f"{MARKER_VAR}={cluster_name}-".encode()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                environ = f.read()
            with open(f"/proc/{entry.name}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and any(v.startswith(needle) for v in environ.split(b"\0")):
            out.add(int(entry.name))
    return out


def environ_of(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        raw = f.read()
    return dict(e.decode().split("=", 1) for e in raw.split(b"\0") if e)


def post_comm(api_address: str, token: str, msg: dict, cert: str) -> int:
    """What the API sends for scale and adapt, with its own client (TLS to ``cert`` only)."""
    control.post_comm(api_address, cert, token, msg)  # raises Unavailable otherwise
    return 200


def config(**overrides) -> ClusterConfig:
    values = dict(
        scheduler_cores=1.0,
        scheduler_memory_gib=1.0,
        worker_cores=1.0,
        worker_memory_gib=1.5,
        worker_threads=2,
        idle_timeout=0.0,
        max_workers=4,
        heartbeat_period=1.0,
        adaptive_period=3.0,
        environment={},
    )
    values.update(overrides)
    return ClusterConfig(**values)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def keypair():
    return tls.new_keypair("dask-internal")


@pytest.fixture
def recorder():
    r = Recorder()
    yield r
    r.close()


@pytest.fixture
def backend(tmp_path):
    node = NodeSettings(state_dir=str(tmp_path / "node"), host="127.0.0.1", launcher="process")
    b = get_backend(Settings(node=node))
    assert isinstance(b, LocalBackend) and isinstance(b.launcher, ProcessLauncher)
    yield b
    for name in b.local_clusters():
        b.stop_cluster(name)


def new_name() -> str:
    return uuid.uuid4().hex


# --------------------------------------------------------------------------- tests


def test_scheduler_heartbeats_to_api_url_and_worker_joins_over_tls(backend, recorder, keypair, tmp_path):
    from distributed import Client
    from distributed.security import Security

    cert, key = keypair
    name, token = new_name(), "tok-" + uuid.uuid4().hex
    cfg = config()
    started = time.monotonic()
    backend.start_scheduler(SchedulerSpec(name, token, recorder.api_url, cert, key, cfg))
    assert backend.scheduler_running(name)
    assert name in backend.local_clusters()

    first = recorder.wait_for(heartbeat_of(name, token))
    print(f"first heartbeat after {first['at'] - started:.2f} s")
    hb = first["json"]
    assert hb["scheduler_address"].startswith("tls://127.0.0.1:")
    assert hb["dashboard_address"].startswith("http://127.0.0.1:")
    assert hb["api_address"].startswith("https://127.0.0.1:")
    assert hb["count"] == 0 and hb["active_workers"] == []

    # The dashboard is served under the prefix HAProxy routes on.
    with urllib.request.urlopen(f"{hb['dashboard_address']}/clusters/{name}/status", timeout=10) as resp:
        assert resp.status == 200

    # The gateway forwards scale before it starts workers (as dask-gateway-server
    # does): a worker that joins while count is 0 is retired by the next heartbeat.
    assert post_comm(hb["api_address"], token, {"op": "scale", "count": 1}, cert) == 200
    recorder.wait_for(lambda r: heartbeat_of(name, token)(r) and r["json"]["count"] == 1)

    worker_name = f"{name}-w1"
    wspec = WorkerSpec(name, worker_name, hb["scheduler_address"], token, cert, key, cfg)
    backend.start_worker(wspec)
    backend.start_worker(wspec)  # idempotent
    assert backend.worker_running(name, worker_name)
    recorder.wait_for(lambda r: heartbeat_of(name, token)(r) and worker_name in r["json"]["active_workers"])

    cert_file = backend.cluster_dir(name) / "tls.crt"
    key_file = backend.cluster_dir(name) / "tls.key"
    # The cluster's own uid (not root, not ours) reads its secrets through its group, and
    # writes only in work/.
    ident = backend.identity(name)
    assert ident.uid >= backend.uid_min and ident.uid != os.geteuid()
    d = backend.cluster_dir(name)
    for path, mode, owner in ((key_file, 0o440, (0, ident.gid)), (d, 0o750, (0, ident.gid)),
                              (d / "work", 0o700, (ident.uid, ident.gid)), (d / "logs", 0o700, (0, 0))):  # fmt: skip
        st = path.stat()
        assert (oct(st.st_mode & 0o777), (st.st_uid, st.st_gid)) == (oct(mode), owner), path
    procs = unit_pids(name)
    assert procs and all(os.stat(f"/proc/{pid}").st_uid in (0, ident.uid) for pid in procs)
    # Only the wrapper that set the namespaces up runs as root; the Dask processes do not.
    assert sum(os.stat(f"/proc/{pid}").st_uid == ident.uid for pid in procs) >= 2
    security = Security(
        tls_ca_file=str(cert_file),
        tls_client_cert=str(cert_file),
        tls_client_key=str(key_file),
        require_encryption=True,
    )
    with Client(hb["scheduler_address"], security=security, timeout=30) as client:
        assert client.submit(sum, [1, 2, 3]).result(timeout=30) == 6
        workers = client.scheduler_info()["workers"]
        assert [w["name"] for w in workers.values()] == [worker_name]
        ((address, info),) = workers.items()
        assert info["nthreads"] == cfg.threads == 2
        assert info["memory_limit"] == int(cfg.worker_memory_gib * GIB)
        assert address.startswith("tls://127.0.0.1:")
        # The nanny is on: client.restart() (common in notebooks) needs it.
        assert info.get("nanny")

    # Mutual TLS: a client holding another cluster's keypair is refused.
    other_cert, other_key = tls.new_keypair("dask-internal")
    (tmp_path / "other.crt").write_text(other_cert)
    (tmp_path / "other.key").write_text(other_key)
    stranger = Security(
        tls_ca_file=str(cert_file),
        tls_client_cert=str(tmp_path / "other.crt"),
        tls_client_key=str(tmp_path / "other.key"),
        require_encryption=True,
    )
    with pytest.raises(OSError):
        Client(hb["scheduler_address"], security=stranger, timeout=3)

    pids = unit_pids(name)
    assert len(pids) >= 3  # scheduler, nanny, worker
    backend.stop_cluster(name)
    assert unit_pids(name) == set()
    for pid in pids:
        stat = Path(f"/proc/{pid}/stat")
        assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"
    assert not backend.cluster_dir(name).exists()
    assert name not in backend.local_clusters()
    assert not backend.scheduler_running(name)
    assert not backend.worker_running(name, worker_name)
    backend.stop_cluster(name)  # idempotent


def test_the_control_api_is_served_over_tls_with_the_clusters_own_certificate_only(backend, recorder, keypair):
    """The scheduler's /api/comm (dask-gateway's preload, through gatewayha_preload/control_tls.py) speaks
    TLS only, with the cluster's own cert: a plain-HTTP request carrying the right token gets no
    HTTP answer, a client that trusts another cluster's cert refuses the server, and the API's
    own client (gatewayha.control) scales the cluster."""
    import socket
    import ssl

    from gatewayha.errors import Unavailable

    cert, key = keypair
    name, token = new_name(), uuid.uuid4().hex
    backend.start_scheduler(SchedulerSpec(name, token, recorder.api_url, cert, key, config()))
    hb = recorder.wait_for(heartbeat_of(name, token))["json"]
    assert hb["api_address"].startswith("https://127.0.0.1:")
    host, port = hb["api_address"].removeprefix("https://").split(":")
    port = int(port)
    log = backend.cluster_dir(name) / "logs" / f"{scheduler_unit(name)}.log"
    assert f"control API over TLS at {hb['api_address']}" in log.read_text()

    # The certificate served is exactly the cluster's.
    with socket.create_connection((host, port), timeout=10) as raw:
        with control.client_context(cert).wrap_socket(raw, server_hostname=tls.CLUSTER_SAN) as s:
            assert s.getpeercert(binary_form=True) == ssl.PEM_cert_to_DER_cert(cert)
            assert s.version() in ("TLSv1.2", "TLSv1.3")

    # Plain HTTP, token and all (what the gateway sent before): no HTTP answer, the scale is not done.
    assert plain_http_comm(host, port, token, {"op": "scale", "count": 3}) is None

    # A client trusting another cluster's cert does not talk to this scheduler.
    other_cert, _ = tls.new_keypair("dask-internal")
    with pytest.raises(Unavailable) as info:
        control.post_comm(hb["api_address"], other_cert, token, {"op": "scale", "count": 3})
    assert "certificate" in info.value.message

    # The API's client, with this cluster's cert: the scale lands (count 1, never 3).
    assert post_comm(hb["api_address"], token, {"op": "scale", "count": 1}, cert) == 200
    beat = recorder.wait_for(lambda r: heartbeat_of(name, token)(r) and r["json"]["count"] != 0)
    assert beat["json"]["count"] == 1
    backend.stop_cluster(name)


def test_scale_down_retires_the_worker_and_its_nanny_exits(backend, recorder, keypair):
    cert, key = keypair
    name, token = new_name(), uuid.uuid4().hex
    cfg = config()
    backend.start_scheduler(SchedulerSpec(name, token, recorder.api_url, cert, key, cfg))
    hb = recorder.wait_for(heartbeat_of(name, token))["json"]
    post_comm(hb["api_address"], token, {"op": "scale", "count": 1}, cert)
    worker_name = f"{name}-a"
    backend.start_worker(WorkerSpec(name, worker_name, hb["scheduler_address"], token, cert, key, cfg))
    recorder.wait_for(lambda r: heartbeat_of(name, token)(r) and worker_name in r["json"]["active_workers"])

    post_comm(hb["api_address"], token, {"op": "scale", "count": 0}, cert)
    recorder.wait_for(lambda r: heartbeat_of(name, token)(r) and worker_name in r["json"]["closing_workers"])
    # Retiring closes the worker *and* its nanny (no restart): the unit ends by itself.
    wait_until(lambda: not backend.worker_running(name, worker_name), 30, "the worker to exit", interval=0.05)
    recorder.wait_for(lambda r: heartbeat_of(name, token)(r) and worker_name in r["json"]["closed_workers"])
    assert backend.scheduler_running(name)
    backend.stop_cluster(name)
    assert unit_pids(name) == set()


def test_the_start_and_a_joining_worker_are_reported_at_once_not_at_the_next_heartbeat(backend, recorder, keypair):
    """heartbeat_period 600 s: the stock preload would report the join 600 s later; gatewayha's
    preload (gatewayha_preload/prompt_reports.py) makes the scheduler report it as soon as it joins, which
    marks the worker RUNNING and frees the node's launch slot. It also sends the first heartbeat
    as soon as the scheduler is running, not after the stock loop's initial 0.25 s."""
    cert, key = keypair
    name, token = new_name(), uuid.uuid4().hex
    cfg = config(heartbeat_period=600.0)
    backend.start_scheduler(SchedulerSpec(name, token, recorder.api_url, cert, key, cfg))
    hb = recorder.wait_for(heartbeat_of(name, token))["json"]
    log = backend.cluster_dir(name) / "logs" / f"{scheduler_unit(name)}.log"
    assert "first heartbeat sent as soon as the scheduler was running" in log.read_text()
    # Then it connects once to its own TLS listener, so that a client's first connection (a
    # warm-pool create's largest part) does not pay the process's first-connection costs.
    wait_until(lambda: "gatewayha: listener warmed up in" in log.read_text(), 10, "the listener's warm-up")
    # The scheduler's count is 1 once the comm returns. (The stock preload's own report of a
    # scale is lost when it lands while a heartbeat is in flight: with a 600 s period that
    # report cannot be waited for here; the join's report below carries the count.)
    assert post_comm(hb["api_address"], token, {"op": "scale", "count": 1}, cert) == 200
    worker_name = f"{name}-j"
    launched = time.monotonic()
    backend.start_worker(WorkerSpec(name, worker_name, hb["scheduler_address"], token, cert, key, cfg))
    joined = recorder.wait_for(
        lambda r: heartbeat_of(name, token)(r) and worker_name in r["json"]["active_workers"], timeout=120
    )
    assert joined["json"]["count"] == 1
    print(f"join reported {joined['at'] - launched:.2f} s after the worker's launch")
    backend.stop_cluster(name)
    assert unit_pids(name) == set()


def test_idle_timeout_makes_scheduler_delete_its_cluster(backend, recorder, keypair):
    cert, key = keypair
    name, token = new_name(), uuid.uuid4().hex
    started = time.monotonic()
    backend.start_scheduler(SchedulerSpec(name, token, recorder.api_url, cert, key, config(idle_timeout=2.0)))
    recorder.wait_for(heartbeat_of(name, token))
    delete = recorder.wait_for(
        lambda r: r["method"] == "DELETE" and r["path"] == f"/api/v1/clusters/{name}", timeout=90
    )
    assert delete["auth"] == f"token {token}"
    # The idle clock starts with the scheduler (not its first heartbeat): never before 2 s.
    assert 2.0 <= delete["at"] - started <= 90
    backend.stop_cluster(name)
    assert unit_pids(name) == set()


def test_environment_option_cannot_override_gateway_variables(backend, recorder, keypair, tmp_path):
    cert, key = keypair
    name, token = new_name(), uuid.uuid4().hex
    evil = Recorder()
    try:
        env = {
            "DASK_GATEWAY_API_URL": evil.api_url,
            "DASK_GATEWAY_API_TOKEN": "stolen",
            "DASK_GATEWAY_CLUSTER_NAME": "f" * 32,
            "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "False",
            "DASK_DISTRIBUTED": "{'comm': {'require-encryption': False}}",
            "DASK_INTERNAL_INHERIT_CONFIG": "e30=",
            "LD_PRELOAD": "/tmp/evil.so",
            "PYTHONPATH": str(tmp_path),
            "GATEWAYHA_UNIT": f"{'e' * 32}-scheduler",
            "GATEWAYHA_SERVER__SECRET": "x",
            "BAD NAME": "1",
            "MY_SETTING": "not in cluster.environment_allow",
            "OMP_NUM_THREADS": "1",
        }
        cfg = config(environment=env)
        backend.start_scheduler(SchedulerSpec(name, token, recorder.api_url, cert, key, cfg))
        hb = recorder.wait_for(heartbeat_of(name, token))
        assert hb["auth"] == f"token {token}"

        # The Dask process itself (the root wrapper that set up its namespaces carries the marker too).
        (pid,) = [
            p
            for p in unit_pids(name)
            if environ_of(p).get(MARKER_VAR) == scheduler_unit(name) and os.stat(f"/proc/{p}").st_uid != 0
        ]
        seen = environ_of(pid)
        assert seen["DASK_GATEWAY_API_URL"] == recorder.api_url
        assert seen["DASK_GATEWAY_CLUSTER_NAME"] == name
        assert Path(seen["DASK_GATEWAY_API_TOKEN"]).read_text() == token
        assert seen["DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"] == "True"
        assert seen[MARKER_VAR] == scheduler_unit(name)
        assert seen["OMP_NUM_THREADS"] == "1"
        for dropped in ("DASK_DISTRIBUTED", "DASK_INTERNAL_INHERIT_CONFIG", "LD_PRELOAD", "PYTHONPATH",
                        "GATEWAYHA_SERVER__SECRET", "BAD NAME", "MY_SETTING"):  # fmt: skip
            assert dropped not in seen
        # Nothing of the job runner's (gatewayha-jobs) own environment leaks into user processes.
        assert not any(k.startswith("GATEWAYHA_") and k != MARKER_VAR for k in seen)
        assert evil.requests == []
    finally:
        evil.close()
    backend.stop_cluster(name)
