"""The routing layer against a real HAProxy 2.6 on loopback: one public port carrying
scheduler TLS (passed through by SNI), dashboards and the API, with routes changed at run
time through the admin socket."""

from __future__ import annotations

import http.client
import json
import os
import ssl
import time
import uuid
from pathlib import Path

import pytest
from haproxy_fixture import (
    TEST_SECRET,
    HAProxyProcess,
    NamedHTTPServer,
    TLSSchedulerStandIn,
    free_port,
    http_get,
    running_haproxy,
    tls_connect,
)

from gatewayha import dashboards
from gatewayha.routes import RuntimeAPIError, RuntimeConnectionError, render_map, sync_maps
from gatewayha.routes.render import map_paths

pytestmark = pytest.mark.skipif(not os.path.exists("/usr/sbin/haproxy"), reason="haproxy is not installed")

# What a client sees when HAProxy refuses a TLS connection: a reset or an EOF in the handshake.
REFUSED = (ssl.SSLError, ConnectionError, OSError)


def new_name() -> str:
    return uuid.uuid4().hex


def sni(name: str) -> str:
    return f"daskgateway-{name}"


def dash_cookie(name: str) -> dict[str, str]:
    """The dashboard token the API would set for this cluster's owner."""
    return {"Cookie": f"{dashboards.COOKIE}={dashboards.make_token(TEST_SECRET, 'alice', name, 300)}"}


@pytest.fixture(scope="module")
def api_instances():
    servers = [NamedHTTPServer("api-1"), NamedHTTPServer("api-2")]
    yield servers
    for server in servers:
        server.close()


@pytest.fixture
def haproxy(tmp_path: Path, api_instances):
    with running_haproxy(tmp_path, api_instances) as proc:
        yield proc


@pytest.fixture
def scheduler(tmp_path: Path):
    server = TLSSchedulerStandIn(tmp_path, "scheduler-a")
    yield server
    server.close()


@pytest.fixture
def dashboard():
    server = NamedHTTPServer("dashboard")
    yield server
    server.close()


def test_known_sni_passes_tls_through_to_scheduler(haproxy, scheduler):
    name = new_name()
    sync_maps(haproxy.runtime, haproxy.map_dir, {sni(name): scheduler.address}, {})

    result = tls_connect(haproxy.port, sni(name))

    # The client saw the scheduler's own certificate: HAProxy did not terminate TLS.
    assert result.peer_cert_der == scheduler.cert_der
    assert result.greeting == "scheduler scheduler-a\n"


def test_sni_is_matched_case_insensitively(haproxy, scheduler):
    name = new_name()
    sync_maps(haproxy.runtime, haproxy.map_dir, {sni(name): scheduler.address}, {})

    assert tls_connect(haproxy.port, sni(name).upper()).peer_cert_der == scheduler.cert_der


def test_route_added_at_runtime_is_used_without_reload(haproxy, scheduler):
    name = new_name()
    master, worker = haproxy.master_pid, haproxy.worker_pid()
    with pytest.raises(REFUSED):
        tls_connect(haproxy.port, sni(name))

    counts = sync_maps(haproxy.runtime, haproxy.map_dir, {sni(name): scheduler.address}, {})

    assert counts == {"added": 1, "changed": 0, "removed": 0, "files_changed": 1}
    assert tls_connect(haproxy.port, sni(name)).peer_cert_der == scheduler.cert_der
    assert (haproxy.master_pid, haproxy.worker_pid()) == (master, worker)


def test_removed_route_is_refused(haproxy, scheduler):
    name = new_name()
    sync_maps(haproxy.runtime, haproxy.map_dir, {sni(name): scheduler.address}, {})
    tls_connect(haproxy.port, sni(name))
    reached = scheduler.connections

    counts = sync_maps(haproxy.runtime, haproxy.map_dir, {}, {})

    assert counts["removed"] == 1
    with pytest.raises(REFUSED):
        tls_connect(haproxy.port, sni(name))
    assert scheduler.connections == reached


def test_unknown_daskgateway_sni_is_rejected(haproxy, scheduler, api_instances):
    sync_maps(haproxy.runtime, haproxy.map_dir, {sni(new_name()): scheduler.address}, {})

    with pytest.raises(REFUSED):
        tls_connect(haproxy.port, sni(new_name()))
    assert scheduler.connections == 0


def test_plain_http_reaches_api_instances(haproxy, api_instances):
    answers = [http_get(haproxy.port, "/api/health") for _ in range(8)]

    assert {status for status, _, _ in answers} == {200}
    assert {body["status"] for _, _, body in answers} == {"pass"}
    assert {body["name"] for _, _, body in answers} == {"api-1", "api-2"}


def test_api_sees_client_address_through_internal_hop(haproxy):
    _, _, body = http_get(haproxy.port, "/api/version")

    assert body["headers"]["x-forwarded-for"] == "127.0.0.1"


def test_dashboard_path_routes_to_cluster_dashboard(haproxy, dashboard):
    name = new_name()
    sync_maps(haproxy.runtime, haproxy.map_dir, {}, {name: dashboard.address})

    status, _, body = http_get(haproxy.port, f"/clusters/{name}/status", dash_cookie(name))
    assert (status, body["name"], body["path"]) == (200, "dashboard", f"/clusters/{name}/status")

    # Another cluster's dashboard path is not routed there; the API answers it.
    other_name = new_name()
    _, _, other = http_get(haproxy.port, f"/clusters/{other_name}/status", dash_cookie(other_name))
    assert other["name"].startswith("api-")


def test_request_id_header_is_set(haproxy):
    _, _, first = http_get(haproxy.port, "/api/v1/options")
    _, _, second = http_get(haproxy.port, "/api/v1/options")
    _, _, given = http_get(haproxy.port, "/api/v1/options", headers={"X-Request-ID": "client-chosen-id"})

    ids = [uuid.UUID(first["headers"]["x-request-id"]), uuid.UUID(second["headers"]["x-request-id"])]
    assert ids[0] != ids[1]
    assert given["headers"]["x-request-id"] == "client-chosen-id"


@pytest.mark.parametrize("instances", ["all-down", "none-configured"])
def test_no_api_instance_gives_json_503(tmp_path: Path, instances: str):
    servers = (
        [
            {"name": "api-1", "address": f"127.0.0.1:{free_port()}"},
            {"name": "api-2", "address": f"127.0.0.1:{free_port()}"},
        ]
        if instances == "all-down"
        else []
    )
    proc = HAProxyProcess(tmp_path, servers)
    try:
        proc.start()
        status, headers, body = http_get(proc.port, "/api/v1/clusters/")
    finally:
        proc.stop()

    assert status == 503
    assert headers["content-type"] == "application/json"
    assert set(body) == {"error"}


def test_a_heartbeat_held_by_a_hung_instance_is_retried_on_another(tmp_path: Path):
    """An instance that lost its database (a partition) holds requests: HAProxy gives a
    heartbeat 5 s, then sends it to another instance (heartbeats are safe to repeat)."""
    hung, good = NamedHTTPServer("hung", post_delay=15), NamedHTTPServer("good")
    proc = HAProxyProcess(tmp_path, [{"name": s.name, "address": s.address} for s in (hung, good)])
    try:
        proc.start()
        for _ in range(2):  # leastconn: the first goes to either, so one of two meets "hung"
            conn = http.client.HTTPConnection("127.0.0.1", proc.port, timeout=30)
            t0 = time.monotonic()
            conn.request("POST", "/api/v1/clusters/" + new_name() + "/heartbeat", body=b"{}")
            response = conn.getresponse()
            body = json.loads(response.read())
            elapsed = time.monotonic() - t0
            conn.close()
            assert response.status == 200 and body["name"] == "good"
            assert elapsed < 12
            if hung.posts:
                break  # a held heartbeat was retried on the other: what this test is about
    finally:
        proc.stop()
        hung.close()
        good.close()
    assert hung.posts >= 1  # it did get (and hold) one


def test_drift_is_repaired(haproxy, scheduler):
    a, b, c = new_name(), new_name(), new_name()
    sni_routes = {sni(a): scheduler.address, sni(b): scheduler.address, sni(c): scheduler.address}
    dash_routes = {a: "127.0.0.1:8787"}
    sync_maps(haproxy.runtime, haproxy.map_dir, sni_routes, dash_routes)
    sni_map, dash_map = map_paths(haproxy.map_dir)
    rt = haproxy.runtime
    rt.del_map(sni_map, sni(a))  # lost
    rt.set_map(sni_map, sni(b), "127.0.0.1:1")  # altered
    rt.add_map(sni_map, sni(c), "127.0.0.1:2")  # duplicated
    rt.add_map(dash_map, new_name(), "127.0.0.1:3")  # stray

    counts = sync_maps(rt, haproxy.map_dir, sni_routes, dash_routes)

    assert counts == {"added": 1, "changed": 2, "removed": 1, "files_changed": 0}
    assert [e.key for e in rt.map_entries(sni_map)].count(sni(c)) == 1
    assert rt.show_map(sni_map) == sni_routes
    assert rt.show_map(dash_map) == dash_routes
    assert Path(sni_map).read_text() == render_map(sni_routes)
    assert Path(dash_map).read_text() == render_map(dash_routes)
    assert sync_maps(rt, haproxy.map_dir, sni_routes, dash_routes) == {
        "added": 0,
        "changed": 0,
        "removed": 0,
        "files_changed": 0,
    }
    for name in (a, b, c):
        assert tls_connect(haproxy.port, sni(name)).peer_cert_der == scheduler.cert_der


def test_map_files_rewritten_atomically_and_unchanged_files_not_touched(haproxy, scheduler):
    sni_map, dash_map = (Path(p) for p in map_paths(haproxy.map_dir))
    name = new_name()
    first = {sni(name): scheduler.address}
    dash = {name: "127.0.0.1:8787"}
    assert sync_maps(None, haproxy.map_dir, first, dash)["files_changed"] == 2
    before = {p: os.stat(p) for p in (sni_map, dash_map)}

    def untouched(st: os.stat_result) -> tuple:
        # Not the access time: comparing reads the file, and under relatime that first read after
        # a write moves st_atime (a flake when it crossed a second boundary).
        return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns

    assert sync_maps(None, haproxy.map_dir, first, dash)["files_changed"] == 0
    assert {p: untouched(os.stat(p)) for p in (sni_map, dash_map)} == {p: untouched(st) for p, st in before.items()}

    with sni_map.open() as reader_of_old_file:
        second = {**first, sni(new_name()): scheduler.address}
        assert sync_maps(None, haproxy.map_dir, second, dash)["files_changed"] == 1
        # Replaced by rename: a reader that opened the old file still reads it whole.
        assert reader_of_old_file.read() == render_map(first)
    assert os.stat(sni_map).st_ino != before[sni_map].st_ino
    assert os.stat(dash_map) == before[dash_map]
    assert sni_map.read_text() == render_map(second)
    assert sorted(p.name for p in sni_map.parent.iterdir()) == ["dash.map", "sni.map"]


@pytest.mark.parametrize(
    ("sni_routes", "dash_routes"),
    [
        pytest.param({"daskgateway-NOT-HEX": "127.0.0.1:9000"}, {}, id="sni-key-not-a-name"),
        pytest.param({uuid.uuid4().hex: "127.0.0.1:9000"}, {}, id="sni-key-without-prefix"),
        pytest.param({f"{sni(uuid.uuid4().hex)}\nshow info": "127.0.0.1:9000"}, {}, id="newline-in-key"),
        pytest.param({}, {sni(uuid.uuid4().hex): "127.0.0.1:9000"}, id="dash-key-with-prefix"),
        pytest.param({}, {uuid.uuid4().hex: "127.0.0.1:0"}, id="port-zero"),
        pytest.param({}, {uuid.uuid4().hex: "127.0.0.1:65536"}, id="port-too-big"),
        pytest.param({}, {uuid.uuid4().hex: "127.0.0.1:80;del map x"}, id="command-in-value"),
        pytest.param({}, {uuid.uuid4().hex: "127.0.0.1 80"}, id="space-in-value"),
        pytest.param({}, {uuid.uuid4().hex: "[::1]:80"}, id="ipv6"),
        # set-dst never resolves a name; it would connect to this host instead.
        pytest.param({}, {uuid.uuid4().hex: "scheduler-host:8786"}, id="hostname"),
    ],
)
def test_invalid_keys_never_reach_map_files(haproxy, scheduler, sni_routes, dash_routes):
    good = {sni(new_name()): scheduler.address}
    sync_maps(haproxy.runtime, haproxy.map_dir, good, {})
    files = {p: Path(p).read_text() for p in map_paths(haproxy.map_dir)}

    with pytest.raises(ValueError, match="invalid"):
        sync_maps(haproxy.runtime, haproxy.map_dir, {**good, **sni_routes}, dash_routes)

    assert {p: Path(p).read_text() for p in files} == files
    assert haproxy.runtime.show_map(map_paths(haproxy.map_dir)[0]) == good


def test_reload_keeps_routes_from_map_files(haproxy, scheduler, dashboard):
    name = new_name()
    sync_maps(haproxy.runtime, haproxy.map_dir, {sni(name): scheduler.address}, {name: dashboard.address})
    old_worker = haproxy.worker_pid()

    assert haproxy.reload() != old_worker

    assert tls_connect(haproxy.port, sni(name)).peer_cert_der == scheduler.cert_der
    assert http_get(haproxy.port, f"/clusters/{name}/status", dash_cookie(name))[2]["name"] == "dashboard"
    assert http_get(haproxy.port, "/api/health")[0] == 200


def test_large_difference_is_applied_as_one_atomic_replace(haproxy, scheduler):
    routes = {sni(new_name()): scheduler.address for _ in range(2000)}

    counts = sync_maps(haproxy.runtime, haproxy.map_dir, routes, {})

    assert counts["added"] == 2000
    assert haproxy.runtime.show_map(map_paths(haproxy.map_dir)[0]) == routes
    assert tls_connect(haproxy.port, next(iter(routes))).peer_cert_der == scheduler.cert_der
    assert sync_maps(haproxy.runtime, haproxy.map_dir, {}, {})["removed"] == 2000
    assert haproxy.runtime.show_map(map_paths(haproxy.map_dir)[0]) == {}


def test_runtime_errors_are_raised_clearly(haproxy, tmp_path: Path):
    with pytest.raises(RuntimeAPIError, match="Unknown map identifier"):
        haproxy.runtime.show_map(str(tmp_path / "not-a-map.map"))
    with pytest.raises(RuntimeAPIError, match="Key not found"):
        haproxy.runtime.del_map(map_paths(haproxy.map_dir)[0], sni(new_name()))
    with pytest.raises(RuntimeConnectionError):
        type(haproxy.runtime)(tmp_path / "no-such.sock").show_info()


def test_oversized_payload_fails_loudly_and_never_wipes_the_live_map(haproxy, scheduler, monkeypatch):
    # HAProxy drops a CLI payload larger than its buffer without answering; committing the
    # half-filled version would have emptied the map.
    from gatewayha.routes import runtime as runtime_module

    kept = {sni(new_name()): scheduler.address}
    sync_maps(haproxy.runtime, haproxy.map_dir, kept, {})
    monkeypatch.setattr(runtime_module, "PAYLOAD_CHUNK_BYTES", 10**9)
    many = {sni(new_name()): scheduler.address for _ in range(300)}

    # Just over the buffer: no answer at all; far over it: a reset. Both must raise.
    with pytest.raises(RuntimeAPIError):
        haproxy.runtime.replace_map(map_paths(haproxy.map_dir)[0], many)

    assert haproxy.runtime.show_map(map_paths(haproxy.map_dir)[0]) == kept


def test_maps_are_found_when_map_dir_is_spelled_differently(haproxy, scheduler, tmp_path: Path):
    # The worker may name map_dir through a symlink while the config holds the real path.
    alias = tmp_path / "maps-alias"
    alias.symlink_to(haproxy.map_dir)
    name = new_name()

    counts = sync_maps(haproxy.runtime, alias, {sni(name): scheduler.address}, {})

    assert counts["added"] == 1
    assert tls_connect(haproxy.port, sni(name)).peer_cert_der == scheduler.cert_der


def test_sync_against_haproxy_without_these_maps_names_the_problem(haproxy, scheduler, tmp_path: Path):
    elsewhere = tmp_path / "other-maps"

    with pytest.raises(RuntimeAPIError, match="has not loaded"):
        sync_maps(haproxy.runtime, elsewhere, {sni(new_name()): scheduler.address}, {})
    # The files were still written, for an HAProxy that will load them.
    assert (elsewhere / "sni.map").read_text().startswith("daskgateway-")


def test_a_route_is_live_before_the_map_files_are_written(haproxy, scheduler, monkeypatch):
    # The files' fsyncs took 30-100 ms on a busy disk (bench/profile.md, finding 13): a client
    # waiting for its route must not wait for them too.
    from gatewayha.routes import sync as sync_module

    name = new_name()
    live_at_write = []
    real_write = sync_module.write_atomic

    def write_atomic(path, text, *args, **kwargs):
        live_at_write.append(sni(name) in haproxy.runtime.show_map(map_paths(haproxy.map_dir)[0]))
        return real_write(path, text, *args, **kwargs)

    monkeypatch.setattr(sync_module, "write_atomic", write_atomic)
    counts = sync_maps(haproxy.runtime, haproxy.map_dir, {sni(name): scheduler.address}, {})

    assert counts == {"added": 1, "changed": 0, "removed": 0, "files_changed": 1}
    assert live_at_write == [True, True]  # sni.map, dash.map: both after the live change
    assert sni(name) in Path(map_paths(haproxy.map_dir)[0]).read_text()


def test_map_files_are_written_while_haproxy_is_down(haproxy, scheduler, tmp_path: Path):
    name = new_name()
    down = type(haproxy.runtime)(tmp_path / "no-such.sock")

    with pytest.raises(RuntimeConnectionError):
        sync_maps(down, haproxy.map_dir, {sni(name): scheduler.address}, {})
    # What HAProxy loads on its next start holds the route.
    assert Path(map_paths(haproxy.map_dir)[0]).read_text() == render_map({sni(name): scheduler.address})
