"""Rolling upgrade (playbooks/upgrade.yml, serial: 1) under a client loop: zero failed requests.

A verify stage of the default scenario (molecule/default/molecule.yml), after the basic
verifier and before the failover stage. The "new release" is a new build of the same
version (molecule/shared/repack_wheel.py): the role sees the wheelhouse copy change,
reinstalls the wheel, migrates (expand-only) and restarts the node's services.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared"))
import gwtest  # noqa: E402

REPO = gwtest.REPO
SERVICES = ["gatewayha-api@8101", "gatewayha-api@8102", "gatewayha-worker"]
EXPECTED = sum(x * x for x in range(50))


def _invocations(gw: str) -> dict[str, dict]:
    host = gwtest.node(gw)
    out = {}
    for svc in SERVICES:
        props = host.run(f"systemctl show {svc} -p InvocationID -p ActiveEnterTimestampMonotonic -p ActiveState").stdout
        out[svc] = dict(p.split("=", 1) for p in props.splitlines() if "=" in p)
    return out


def _wheel_sha(gw: str) -> str:
    out = gwtest.node(gw).run("sha256sum /opt/gatewayha/wheelhouse/gatewayha-*.whl")
    assert out.rc == 0, out.stderr
    return out.stdout.split()[0]


@pytest.fixture()
def cluster():
    """A running cluster before the upgrade: the data plane must not notice the upgrade."""
    created = gwtest.gwclient("create", "--workers", "1")
    yield created["name"]
    gwtest.gwclient("stop", created["name"], check=False)


def test_rolling_upgrade_without_failed_requests(tmp_path, cluster):
    name = cluster
    hosting = gwtest.wait_until(
        lambda: [gw for gw in gwtest.GATEWAYS if gwtest.cluster_units(gwtest.node(gw), name)], 30, "the cluster's node"
    )[0]
    pids_before = {u: p["MainPID"] for u, p in gwtest.cluster_units(gwtest.node(hosting), name).items()}
    before = {gw: _invocations(gw) for gw in gwtest.GATEWAYS}

    # The new build of the same version.
    wheelhouse = tmp_path / "wheelhouse"
    repack = subprocess.run(
        [sys.executable, str(gwtest.SHARED / "repack_wheel.py"), str(REPO / ".state" / "wheelhouse"), str(wheelhouse)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    new_sha = repack.stdout.split()[-1]
    assert all(_wheel_sha(gw) != new_sha for gw in gwtest.GATEWAYS)

    # The client loop through VIP a, for the whole duration of the playbook.
    stop, ready, result_file = tmp_path / "stop", tmp_path / "ready", tmp_path / "apiloop.json"
    loop = gwtest.gwclient_popen(
        "apiloop",
        "--stop-file",
        str(stop),
        "--ready-file",
        str(ready),
        "--out",
        str(result_file),
        "--max-seconds",
        "900",
        "--threads",
        "2",
    )
    try:
        gwtest.wait_until(lambda: ready.exists() or loop.poll() is not None, 30, "the client loop", 0.2)
        assert loop.poll() is None, "the client loop exited at once"
        time.sleep(2)
        t0 = time.monotonic()
        playbook = subprocess.run(
            [
                str(Path(sys.executable).parent / "ansible-playbook"),
                "-i",
                gwtest.inventory(),
                str(REPO / "playbooks" / "upgrade.yml"),
                "-e",
                f"gatewayha_wheelhouse={wheelhouse}",
            ],
            env=gwtest.ansible_env(),
            cwd=str(REPO),
            timeout=900,
            check=False,
        )
        duration = time.monotonic() - t0
        time.sleep(2)
    finally:
        stop.touch()
        result = gwtest.finish(loop, 120)
    gwtest.measured(
        f"UPGRADE playbooks/upgrade.yml took {duration:.1f}s (rc {playbook.returncode}); client loop through "
        f"{gwtest.VIP_A}: {result['requests']} requests {json.dumps(result['by_path'], sort_keys=True)}, "
        f"{result['failed']} failed, over {result['duration_s']}s; latency {json.dumps(result['latency_s'])}"
    )
    assert playbook.returncode == 0, "upgrade.yml failed"
    assert result["failed"] == 0, f"failed requests during the upgrade: {result['failures']}"
    assert not result["thread_errors"], result["thread_errors"]
    assert result["requests"] >= 100, "the loop ran for the whole upgrade"
    assert result["_rc"] == 0

    after = {gw: _invocations(gw) for gw in gwtest.GATEWAYS}
    for gw in gwtest.GATEWAYS:
        assert _wheel_sha(gw) == new_sha, f"{gw} has the new wheel"
        for svc in SERVICES:
            assert after[gw][svc]["ActiveState"] == "active", (gw, svc)
            assert after[gw][svc]["InvocationID"] != before[gw][svc]["InvocationID"], f"{svc} restarted on {gw}"
    # serial: 1 — one node's services all (re)started before the other's.
    starts = {gw: [int(after[gw][s]["ActiveEnterTimestampMonotonic"]) for s in SERVICES] for gw in gwtest.GATEWAYS}
    first, second = sorted(gwtest.GATEWAYS, key=lambda gw: min(starts[gw]))
    assert max(starts[first]) < min(starts[second]), f"nodes restarted one at a time: {starts}"

    # Nothing left drained: every API instance is UP in every HAProxy.
    for gw in gwtest.GATEWAYS:
        servers = gwtest.haproxy_servers(gwtest.node(gw))
        assert len(servers) == 4 and set(servers.values()) == {"UP"}, f"{gw}: {servers}"

    # The cluster kept its processes and computes.
    pids_after = {u: p["MainPID"] for u, p in gwtest.cluster_units(gwtest.node(hosting), name).items()}
    assert pids_after == pids_before
    assert gwtest.gwclient("compute", name, "--workers", "1")["result"] == EXPECTED
