"""The stock dask-gateway client, unchanged, against the local stack through HAProxy."""

from __future__ import annotations

import asyncio
import json
import re
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from dask_gateway import BasicAuth, Gateway, GatewayCluster
from dask_gateway.client import ClusterStatus

from helpers import wait_until

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "contrib"))
from retrying_gateway import RetryingGateway, _create_key  # noqa: E402  (the README's recipe)


def n_workers(client) -> int:
    return len(client.scheduler_info(n_workers=-1)["workers"])


def sni_map(stack) -> dict[str, str]:
    out = stack.haproxy(f"show map {stack.state}/haproxy/maps/sni.map")
    return {parts[1]: parts[2] for parts in (line.split() for line in out.splitlines()) if len(parts) == 3}


def haproxy_worker_pid(stack) -> int:
    info = stack.haproxy("show info")
    return int(re.search(r"^Pid: (\d+)$", info, re.M).group(1))


def test_wrong_password_is_refused(stack):
    gw = Gateway(stack.address, auth=BasicAuth("demo", "wrong"))
    with pytest.raises(Exception) as info:
        gw.list_clusters()
    assert "401" in str(info.value)
    gw.close()


def test_options_versions_and_listing(gateway):
    opts = gateway.cluster_options()
    assert opts.worker_cores == 1
    with pytest.raises(ValueError):
        opts.worker_cores = 99
    assert gateway.get_versions()["server"]["version"]
    assert gateway.list_clusters() == []


def test_a_cluster_runs_from_the_software_environment_it_picked(stack, gateway):
    """The stock client sees the declared environments as an option; the picked one's Python runs
    the scheduler and the workers (gatewayha.environments)."""
    alt = stack.env["GATEWAYHA_ENVIRONMENTS__ALT__PREFIX"]
    opts = gateway.cluster_options()
    assert opts.software_environment == "default"
    with pytest.raises(ValueError):
        opts.software_environment = "py27"
    opts.software_environment = "alt"
    with gateway.new_cluster(opts) as cluster:
        assert gateway.get_cluster(cluster.name).options["software_environment"] == "alt"
        cluster.scale(1)
        with cluster.get_client(set_as_default=False) as client:
            client.wait_for_workers(1, timeout=60)
            assert client.run_on_scheduler(lambda: sys.prefix) == alt
            assert set(client.run(lambda: sys.prefix).values()) == {alt}


def test_cluster_lifecycle_scale_compute_dashboard_and_routes(stack, gateway):
    opts = gateway.cluster_options()
    opts.worker_cores = 2
    opts.worker_memory_gib = 0.75
    pid_before = haproxy_worker_pid(stack)
    cluster = gateway.new_cluster(opts)
    try:
        name = cluster.name
        assert [c.name for c in gateway.list_clusters()] == [name]
        # The route was added to the live HAProxy without a reload.
        assert f"daskgateway-{name}" in sni_map(stack)
        assert haproxy_worker_pid(stack) == pid_before
        # Dashboard through HAProxy: its owner's only (tests/e2e/test_dashboard_browser.py).
        with pytest.raises(urllib.error.HTTPError) as anonymous:
            urllib.request.urlopen(cluster.dashboard_link, timeout=15)
        assert anonymous.value.code == 401
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
        login = urllib.request.Request(cluster.dashboard_link, headers=gateway.auth.pre_request(None)[0])
        with opener.open(login, timeout=15) as r:  # token cookie set, redirected to the dashboard
            assert (r.status, r.url) == (200, cluster.dashboard_link)
            assert b"bokeh" in r.read().lower()
        client = cluster.get_client()
        cluster.scale(2)
        client.wait_for_workers(2, timeout=90)
        workers = client.scheduler_info(n_workers=-1)["workers"].values()
        assert {w["nthreads"] for w in workers} == {2}
        assert {w["memory_limit"] for w in workers} == {int(0.75 * 2**30)}
        assert client.submit(sum, range(101)).result() == 5050
        assert sum(client.gather(client.map(lambda x: x + 1, range(50)))) == sum(range(1, 51))
        cluster.scale(1)
        wait_until(lambda: n_workers(client) == 1, 60, "scale down to 1 worker")
        # Another Gateway object connects to the same cluster by name.
        other = Gateway(gateway.address, auth=gateway.auth)
        same = other.connect(name)
        assert same.get_client().submit(lambda: 41 + 1).result() == 42
        same.close(shutdown=False)
        other.close()
        client.close()
    finally:
        cluster.shutdown()
    report = gateway.get_cluster(name)
    assert report.status in (ClusterStatus.STOPPING, ClusterStatus.STOPPED)
    wait_until(lambda: f"daskgateway-{name}" not in sni_map(stack), 20, "route removal")
    wait_until(lambda: gateway.get_cluster(name).status == ClusterStatus.STOPPED, 30, "STOPPED")
    assert haproxy_worker_pid(stack) == pid_before


def test_adaptive_workers_come_and_go_on_their_own(gateway):
    with gateway.new_cluster() as cluster:
        cluster.adapt(minimum=0, maximum=2)
        client = cluster.get_client()
        futures = client.map(lambda x: __import__("time").sleep(0.5) or x, range(40))
        wait_until(lambda: n_workers(client) >= 1, 90, "adaptive scale-up")
        assert sum(client.gather(futures)) == sum(range(40))
        # Release the results: a worker holding data is never chosen to close (workers_to_close).
        client.cancel(futures)
        del futures
        wait_until(lambda: n_workers(client) == 0, 90, "adaptive scale-down to 0", interval=1)
        client.close()


def test_gateway_cluster_constructor_and_shutdown(stack):
    user, password = stack.credentials()
    cluster = GatewayCluster(address=stack.address, auth=BasicAuth(user, password))
    name = cluster.name
    assert cluster.status == "running"
    cluster.shutdown()
    gw = Gateway(stack.address, auth=BasicAuth(user, password))
    wait_until(lambda: gw.get_cluster(name).status in (ClusterStatus.STOPPED,), 30, "STOPPED")
    gw.close()


def test_asynchronous_api(stack):
    user, password = stack.credentials()

    async def main():
        async with Gateway(stack.address, auth=BasicAuth(user, password), asynchronous=True) as gw:
            cluster = await gw.new_cluster()
            try:
                await cluster.scale(1)
                client = await cluster.get_client(set_as_default=False)
                await client.wait_for_workers(1, timeout=90)
                assert await client.submit(lambda: 6 * 7) == 42
                assert [c.name for c in await gw.list_clusters()] == [cluster.name]
                await client.close()
            finally:
                await cluster.shutdown()

    asyncio.run(main())


def test_retrying_gateway_recipe_creates_once_per_key(stack):
    """contrib/retrying_gateway.py: the stock client plus retries and an Idempotency-Key per
    create. The same key sent twice (a create whose answer was lost, retried) is one cluster."""
    user, password = stack.credentials()

    async def main():
        async with RetryingGateway(stack.address, auth=BasicAuth(user, password), asynchronous=True) as gw:
            url = f"{gw.address}/api/v1/clusters/"
            token = _create_key.set("e2e-replayed-create")
            try:
                first = await (await gw._request("POST", url, json={"cluster_options": {}})).json()
                again = await (await gw._request("POST", url, json={"cluster_options": {}})).json()
            finally:
                _create_key.reset(token)
            other = await gw.submit()  # a fresh key: a new cluster
            names = {c.name for c in await gw.list_clusters()}
            for name in {first["name"], other}:
                await gw.stop_cluster(name)
            cluster = await gw.new_cluster()  # submit + wait on the retrying gateway, then connect
            assert cluster.status == "running" and cluster.scheduler_address.startswith("gateway://")
            await cluster.shutdown()
            return first["name"], again["name"], other, names

    first, again, other, names = asyncio.run(main())
    assert first == again != other
    assert {first, other} <= names
    gw = RetryingGateway(stack.address, auth=BasicAuth(user, password))  # the synchronous API
    with gw.new_cluster() as cluster:
        assert cluster.status == "running"
        assert [c.name for c in gw.list_clusters()] == [cluster.name]
        cluster.shutdown()
    gw.close()


def test_idle_timeout_stops_an_idle_cluster(gateway):
    opts = gateway.cluster_options()
    opts.idle_timeout = 3
    cluster = gateway.new_cluster(opts, shutdown_on_close=False)
    name = cluster.name
    cluster.close()
    wait_until(lambda: gateway.get_cluster(name).status == ClusterStatus.STOPPED, 60, "idle cluster to stop itself")


def test_killing_one_api_instance_fails_no_read_through_haproxy(stack, gateway):
    import http.cookiejar

    user, password = stack.credentials()
    jar = http.cookiejar.CookieJar()
    import base64

    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    auth = {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
    url = f"{stack.address}/api/v1/clusters/"
    errors, ok = [], [0]
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            try:
                with opener.open(urllib.request.Request(url, headers=auth), timeout=10) as r:
                    assert r.status == 200
                    ok[0] += 1
            except Exception as exc:  # recorded, asserted below
                errors.append(repr(exc))

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: ok[0] > 20, 30, "reads to flow")
        victim = stack.pid(f"api-{stack.api_ports[0]}")
        import os
        import signal

        os.killpg(victim, signal.SIGKILL)
        before = ok[0]
        wait_until(lambda: ok[0] > before + 200, 60, "reads after the kill")
    finally:
        stop.set()
        for t in threads:
            t.join(15)
        stack.run("up")  # restart the killed instance (idempotent)
    assert errors == []


def test_route_drift_in_haproxy_is_repaired_by_the_periodic_resync(stack, gateway):
    with gateway.new_cluster() as cluster:
        key = f"daskgateway-{cluster.name}"
        target = sni_map(stack)[key]
        mapfile = f"{stack.state}/haproxy/maps/sni.map"
        stack.haproxy(f"del map {mapfile} {key}")
        stack.haproxy(f"add map {mapfile} daskgateway-{'0' * 32} 127.0.0.1:9")
        assert key not in sni_map(stack)
        wait_until(lambda: sni_map(stack).get(key) == target, 30, "drift repair")
        wait_until(lambda: f"daskgateway-{'0' * 32}" not in sni_map(stack), 30, "stray route removal")
        # The repaired route carries the scheduler connection again.
        assert cluster.get_client().scheduler_info()["address"].startswith("tls://")


def test_make_up_again_is_harmless(stack, gateway):
    before = {name: stack.pid(name) for name in ("haproxy", "worker-1", "worker-2")}
    with gateway.new_cluster() as cluster:
        stack.run("up")
        assert {name: stack.pid(name) for name in before} == before
        assert cluster.get_client().scheduler_info()["address"].startswith("tls://")
        assert [c.name for c in gateway.list_clusters()] == [cluster.name]


def test_unknown_sni_is_refused_and_plain_https_to_api_fails_cleanly(stack):
    import socket
    import ssl

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", stack.port), timeout=5) as raw:
        with pytest.raises((ssl.SSLError, ConnectionResetError, OSError)):
            with ctx.wrap_socket(raw, server_hostname=f"daskgateway-{'0' * 32}") as s:
                s.recv(1)


def _chunked_post(stack, body: bytes) -> tuple[int, dict]:
    """POST a create with a chunked body (no Content-Length) through HAProxy.

    The server may answer (413) and close before the whole body is sent: like curl, keep the
    answer that arrived rather than failing on the broken pipe (http.client would raise on
    the send and never read it)."""
    import base64
    import http.client
    import json
    import socket

    user, password = stack.credentials()
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    head = (
        "POST /api/v1/clusters/ HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
        f"Authorization: Basic {token}\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n"
    ).encode()
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (body[i : i + 8192] for i in range(0, len(body), 8192)))
    with socket.create_connection(("127.0.0.1", stack.port), timeout=30) as sock:
        try:
            sock.sendall(head + chunks + b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered before the end of the body: read that answer
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        return resp.status, json.loads(resp.read())


def test_a_chunked_create_body_is_read_and_bounded_like_any_other(stack, gateway):
    """Without a Content-Length the body used to be taken for empty: a 1 MB chunked body (or
    malformed JSON) created a cluster with default options."""
    import json

    status, answer = _chunked_post(stack, b"x" * 1_000_000)
    assert status == 413 and "larger than" in answer["error"]
    status, answer = _chunked_post(stack, b"{not json")
    assert status == 400 and "error" in answer
    assert gateway.list_clusters() == []
    body = json.dumps({"cluster_options": {"worker_cores": 2}}).encode()
    status, answer = _chunked_post(stack, body)
    assert status == 201, answer
    cluster = gateway.connect(answer["name"])
    try:
        assert gateway.get_cluster(cluster.name).options["worker_cores"] == 2
    finally:
        cluster.shutdown()


def _api_response_errors(stack) -> int:
    """HAProxy's count of broken answers (eresp) from the API instances."""
    rows = [line.split(",") for line in stack.haproxy("show stat").splitlines() if line.startswith("be_api,")]
    return sum(int(r[14] or 0) for r in rows if r[1] != "BACKEND")


def test_oversized_bodies_are_refused_without_breaking_an_api_connection(stack):
    """An answer before the body was read used to reset HAProxy's upload to the instance (a 502
    for the client, a response error against a healthy instance). The API drains up to 8 MiB;
    HAProxy refuses a longer Content-Length itself."""
    import http.client
    import socket

    before = _api_response_errors(stack)
    for _ in range(4):
        status, answer = _chunked_post(stack, b"x" * 1_000_000)
        assert status == 413 and "larger than" in answer["error"]
    # HAProxy answers on the headers alone: send no body (an unread one would make its close
    # a reset, which may overtake the answer).
    head = b"POST /api/v1/clusters/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n"
    with socket.create_connection(("127.0.0.1", stack.port), timeout=30) as sock:
        sock.sendall(head % (8 * 1024 * 1024 + 1))
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        assert (resp.status, json.loads(resp.read())) == (413, {"error": "Request body too large"})
    assert _api_response_errors(stack) == before


def test_default_create_claims_a_warm_scheduler_running_on_the_first_poll(stack, gateway):
    def ready_pool():
        with stack.db() as conn:
            return conn.execute("SELECT name, node FROM warm_pool WHERE ready_at IS NOT NULL").fetchall()

    pool = wait_until(lambda: len(ready_pool()) == 2 and ready_pool(), 60, "a ready pooled scheduler per node")
    pooled = {r["name"] for r in pool}
    assert gateway.list_clusters() == []  # pooled schedulers are never visible to users
    t0 = time.monotonic()
    name = gateway.submit()
    report = gateway.get_cluster(name)  # one poll, no wait
    assert report.status == ClusterStatus.RUNNING, report.status
    assert name in pooled
    cluster = gateway.connect(name)
    try:
        cluster.scale(1)
        client = cluster.get_client()
        client.wait_for_workers(1, timeout=90)
        assert client.submit(lambda: 7 * 6).result() == 42
        print(f"WARM create->computed in {time.monotonic() - t0:.2f}s")
        client.close()
    finally:
        cluster.shutdown()
    # The pool is topped up again, with a new scheduler.
    refilled = wait_until(lambda: len(ready_pool()) == 2 and ready_pool(), 60, "the pool to refill")
    assert name not in {r["name"] for r in refilled}
