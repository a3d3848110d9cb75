"""A tenant attacks: its code, run through the stock client on a worker and on the scheduler,
tries to reach the control plane and another tenant. Every attempt must fail for the right
reason (permission, authentication, namespace), while the tenant's own work keeps working.

The local stack runs as root with node.isolation = "uid": each cluster under a uid of its own,
in PID and mount namespaces of its own (backends/launcher.py, ProcessLauncher.confine).
"""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from dask_gateway import BasicAuth, Gateway
from tenant_attack import attack, check_refused

from helpers import plain_http_comm, wait_until

ROOT = Path(__file__).resolve().parents[2]


def _pids_of(name: str) -> list[int]:
    """Live processes (seen from the host) whose command line names the cluster."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if name in (d / "cmdline").read_bytes().decode(errors="replace"):
                    out.append(int(d.name))
            except OSError:
                pass
    return out


def _cluster_dir(stack, name: str) -> Path:
    return wait_until(
        lambda: next((p for p in stack.state.glob(f"node-*/clusters/{name}") if (p / "api-token").exists()), None),
        30,
        f"the directory of {name}",
    )


@pytest.fixture(scope="module")
def victim(stack):
    """Another user's running cluster."""
    env = {**stack.env, "GATEWAYHA_CONFIG": str(stack.state / "gatewayha.toml")}
    subprocess.run(
        [str(ROOT / ".venv/bin/gatewayha-admin"), "users", "add", "victim", "--password-stdin"],
        input="victim-password-1\n",
        env=env,
        check=False,
        capture_output=True,
        text=True,
    )
    gw = Gateway(stack.address, auth=BasicAuth("victim", "victim-password-1"))
    cluster = gw.new_cluster()
    yield gw, cluster
    cluster.shutdown()
    gw.close()


def test_a_tenant_reaches_neither_the_control_plane_nor_another_tenant(stack, gateway, victim):
    import site

    victim_gw, victim = victim
    pg_port = int((stack.state / "pg" / "port").read_text())
    victim_dir = _cluster_dir(stack, victim.name)
    victim_pids = _pids_of(victim.name)
    assert victim_pids, "the victim's scheduler runs"
    cluster = gateway.new_cluster()
    cluster.scale(1)
    client = cluster.get_client()
    client.wait_for_workers(1, timeout=120)
    own_dir = _cluster_dir(stack, cluster.name)
    site_packages = next(p for p in site.getsitepackages() if p.startswith(str(ROOT / ".venv")))
    targets = {
        "config": str(stack.state / "gatewayha.toml"),
        "secret": str(stack.state / "secret"),
        "local_env": str(stack.state / "local.env"),
        "victim_dir": str(victim_dir),
        "victim_name": victim.name,
        "victim_pids": victim_pids,
        "clusters_dir": str(victim_dir.parent),
        "own_dir": str(own_dir),
        "haproxy_sock": str(stack.state / "run" / "haproxy.sock"),
        "pg_dir": str(stack.state / "pg"),
        "pg_port": pg_port,
        "site_packages": site_packages,
        "app_file": str(ROOT / "app" / "gatewayha" / "__init__.py"),
    }
    on_worker = client.submit(lambda t: attack(t), targets, pure=False).result(timeout=60)
    on_scheduler = client.run_on_scheduler(lambda t: attack(t), targets)
    for where, got in (("worker", on_worker), ("scheduler", on_scheduler)):
        assert got["uid"] == got["euid"] == own_dir.joinpath("work").stat().st_uid != 0, (where, got)
        refused = {
            "config": "PermissionError",
            "secret": "PermissionError",
            "local_env": "PermissionError",
            "victim_key": "PermissionError",
            "victim_token": "PermissionError",
            "victim_listing": "PermissionError",
            "clusters_listing": "PermissionError",
            "haproxy_admin": "PermissionError",
            "pg_socket_dir": "PermissionError",
            "pg_no_password": "AuthRefused",
            "pg_guessed_password": "AuthRefused",
            "venv_write": "PermissionError",
            "app_write": "PermissionError",
            "setuid_root": "PermissionError",
            "renice_up": "PermissionError",
        }
        # On the local stack each refusal is exactly a permission or authentication error.
        assert {k: got[k] for k in refused} == refused, (where, got)
        # Other tenants' pids do not exist in this one's PID namespace (or are not its to signal);
        # its own token and work dir work.
        assert check_refused(got, victim_pids) == [], (where, got)
    # The victim is untouched, and the tenant's own work goes on: compute, scale, adapt.
    assert all(Path(f"/proc/{pid}").exists() for pid in victim_pids)
    assert victim_gw.get_cluster(victim.name).status.name == "RUNNING"
    assert client.submit(sum, range(100)).result(timeout=60) == 4950
    cluster.scale(2)
    client.wait_for_workers(2, timeout=120)
    cluster.adapt(minimum=1, maximum=2)
    assert client.submit(lambda: 6 * 7).result(timeout=60) == 42
    client.close()
    cluster.shutdown()


def _heartbeat(stack, name: str, token: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(
        f"{stack.address}/api/v1/clusters/{name}/heartbeat",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_a_heartbeat_cannot_steer_routes_and_a_stopped_clusters_token_dies(stack, gateway):
    """The tenant holds its cluster's token (its code can read it): it cannot move its route to
    a gateway service or another host, and the token stops working when the cluster stops."""
    cluster = gateway.new_cluster()
    name = cluster.name
    token = (_cluster_dir(stack, name) / "api-token").read_text()
    with stack.db() as conn:
        row = conn.execute(
            "SELECT scheduler_address, dashboard_address, api_address FROM clusters WHERE name = %s", (name,)
        ).fetchone()
    assert row["scheduler_address"].startswith("tls://127.0.0.1:")
    pg_port = int((stack.state / "pg" / "port").read_text())
    base = {**row, "count": 0, "active_workers": [], "closing_workers": [], "closed_workers": []}
    route_before = stack.haproxy(f"show map {stack.state}/haproxy/maps/sni.map")
    assert f"daskgateway-{name} " in route_before
    for evil in (
        {"scheduler_address": f"tls://127.0.0.1:{pg_port}"},  # the database through the public port
        {"scheduler_address": f"tls://127.0.0.1:{stack.api_ports[0]}"},
        {"dashboard_address": f"http://127.0.0.1:{stack.port}"},
        {"api_address": "http://127.0.0.2:8080"},
    ):
        status, body = _heartbeat(stack, name, token, {**base, **evil})
        assert status == 409 and "fixed" in body["error"], (evil, status, body)
    # The route did not move, and the genuine heartbeat is still accepted.
    assert stack.haproxy(f"show map {stack.state}/haproxy/maps/sni.map") == route_before
    assert _heartbeat(stack, name, token, base)[0] == 200
    # A token is the cluster's own: not another cluster's, not derivable from the name.
    other = gateway.new_cluster()
    assert _heartbeat(stack, other.name, token, base)[0] == 403
    other.shutdown()
    cluster.shutdown()
    wait_until(lambda: gateway.get_cluster(name).status.name == "STOPPED", 60, "the cluster to stop")
    status, body = _heartbeat(stack, name, token, base)
    assert status == 403, body
    # Nor can the dead token delete anything.
    req = urllib.request.Request(
        f"{stack.address}/api/v1/clusters/{name}", headers={"Authorization": f"token {token}"}, method="DELETE"
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=10)
    assert info.value.code == 403


def test_the_schedulers_control_api_speaks_tls_only(stack, gateway):
    """scale/adapt go from whichever API instance serves them to the scheduler's control port
    (/api/comm) with the cluster's token: over TLS with the cluster's own certificate. A plain
    HTTP request to that port, right token and all, gets no HTTP answer and changes nothing; the
    stock client's scale and adapt work."""
    import ssl

    cluster = gateway.new_cluster()  # default options: a pooled scheduler when one is ready
    name = cluster.name
    token = (_cluster_dir(stack, name) / "api-token").read_text()
    with stack.db() as conn:
        row = conn.execute("SELECT api_address, tls_cert FROM clusters WHERE name = %s", (name,)).fetchone()
    assert row["api_address"].startswith("https://127.0.0.1:"), row
    host, port = row["api_address"].removeprefix("https://").split(":")
    served = ssl.get_server_certificate((host, int(port)), timeout=10)
    assert ssl.PEM_cert_to_DER_cert(served) == ssl.PEM_cert_to_DER_cert(row["tls_cert"])
    assert plain_http_comm(host, int(port), token, {"op": "scale", "count": 2}) is None
    cluster.scale(1)
    client = cluster.get_client()
    client.wait_for_workers(1, timeout=120)
    assert client.submit(lambda: 6 * 7).result(timeout=60) == 42
    with stack.db() as conn:
        target = conn.execute("SELECT target_workers FROM clusters WHERE name = %s", (name,)).fetchone()
    assert target["target_workers"] == 1  # the plain request's count of 2 never landed
    cluster.adapt(minimum=0, maximum=1)
    client.close()
    cluster.shutdown()


def test_a_create_asking_for_a_preload_or_jupyter_settings_is_refused(gateway):
    opts = gateway.cluster_options()
    opts.environment = {"DASK_DISTRIBUTED__SCHEDULER__PRELOAD": "evil_module", "JUPYTERHUB_API_TOKEN": "x"}
    with pytest.raises(ValueError) as info:
        gateway.new_cluster(opts)
    assert "DASK_DISTRIBUTED__SCHEDULER__PRELOAD" in str(info.value)
    opts.environment = {"OMP_NUM_THREADS": "1"}
    cluster = gateway.new_cluster(opts)
    cluster.shutdown()
