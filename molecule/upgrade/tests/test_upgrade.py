"""Rolling upgrade (playbooks/upgrade.yml, serial: 1) under a client loop: zero failed requests.

A verify stage of the default scenario (molecule/default/molecule.yml), after the basic
verifier and before the failover stage. The "new release" is a new build of the same
version (molecule/shared/repack_wheel.py): the role sees the wheelhouse copy change,
reinstalls the wheel, migrates (expand-only) and restarts the node's services. The nodes start
with the job runner's unit of before its rename (gatewayha-worker.service): the upgrade replaces
it by gatewayha-jobs.service.
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
SERVICES = ["gatewayha-api@8101", "gatewayha-api@8102", "gatewayha-jobs"]
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


def _as_before_the_jobs_rename(gw: str) -> None:
    """Leaves the node as a release before the job runner's rename did: its unit is
    gatewayha-worker.service (enabled, running), and there is no gatewayha-jobs.service."""
    units = "/etc/systemd/system"
    out = gwtest.node(gw).run(
        "systemctl disable --now gatewayha-jobs.service"
        f" && mv {units}/gatewayha-jobs.service {units}/gatewayha-worker.service"
        " && systemctl daemon-reload && systemctl enable --now gatewayha-worker.service"
    )
    assert out.rc == 0, out.stderr


def _old_jobs_unit_is_gone(gw: str) -> bool:
    host = gwtest.node(gw)
    load = host.run("systemctl show gatewayha-worker.service -p LoadState --value").stdout.strip()
    return load == "not-found" and not host.file("/etc/systemd/system/gatewayha-worker.service").exists


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
    # The upgrade also renames the job runner's unit (gatewayha-worker -> gatewayha-jobs).
    for gw in gwtest.GATEWAYS:
        _as_before_the_jobs_rename(gw)
        assert not _old_jobs_unit_is_gone(gw)
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
        assert _old_jobs_unit_is_gone(gw), f"{gw} still has gatewayha-worker.service"
        assert gwtest.node(gw).run("systemctl is-enabled gatewayha-jobs.service").stdout.strip() == "enabled", gw
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


# --------------------------------------------------------------------------- rotation

OLD_SECRET = "molecule-secret-0123456789abcdef"  # gatewayha_secret in molecule/default/molecule.yml
NEW_SECRET = "molecule-rotated-secret-fedcba9876543210"
TLS = "/etc/gatewayha/tls"


def _file_sha(name: str, path: str) -> str:
    out = gwtest.node(name).run(f"sha256sum {path}")
    assert out.rc == 0, out.stderr
    return out.stdout.split()[0]


def _rotate(*extra_vars: str) -> tuple[subprocess.CompletedProcess, float]:
    playbook = str(REPO / "playbooks" / "rotate.yml")
    args = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", gwtest.inventory(), playbook]
    for extra in extra_vars:
        args += ["-e", extra]
    t0 = time.monotonic()
    env = gwtest.ansible_env()
    run = subprocess.run(args, env=env, cwd=str(REPO), timeout=900, check=False, capture_output=True, text=True)
    print(run.stdout[-6000:], run.stderr[-3000:], flush=True)
    return run, time.monotonic() - t0


def test_rotating_the_certificates_and_the_secret_fails_no_request(tmp_path, cluster):
    """playbooks/rotate.yml twice under a client loop (docs/transport.md): new certificates for
    every node and the public side, the new secret accepted everywhere; then the swap (sign with
    the new secret, the old one only checked) and the stored keys re-encrypted. No request fails;
    the loop's session (signed before), a dashboard token signed before and the running cluster
    keep working."""
    name = cluster
    certs_before = {vip: gwtest.served_certificate(vip) for vip in (gwtest.VIP_A, gwtest.VIP_B)}
    node_certs_before = {n: _file_sha(n, f"{TLS}/node.crt") for n in ("gw1", "gw2", "db1")}
    old_dashboard = gwtest.dashboard_cookie(name)  # a token signed with the old secret

    stop, ready, result_file = tmp_path / "stop", tmp_path / "ready", tmp_path / "apiloop.json"
    loop = gwtest.gwclient_popen(
        "apiloop", "--stop-file", str(stop), "--ready-file", str(ready), "--out", str(result_file),
        "--max-seconds", "1200", "--threads", "2",
    )  # fmt: skip
    try:
        gwtest.wait_until(lambda: ready.exists() or loop.poll() is not None, 30, "the client loop", 0.2)
        assert loop.poll() is None, "the client loop exited at once"
        time.sleep(2)
        accept, accept_s = _rotate("rotate_certificates=true", json.dumps({"gatewayha_previous_secrets": [NEW_SECRET]}))
        certs_between = {vip: gwtest.served_certificate(vip) for vip in (gwtest.VIP_A, gwtest.VIP_B)}
        swap, swap_s = _rotate(json.dumps({"gatewayha_secret": NEW_SECRET, "gatewayha_previous_secrets": [OLD_SECRET]}))
        time.sleep(2)
    finally:
        stop.touch()
        result = gwtest.finish(loop, 120)
    gwtest.measured(
        f"ROTATION rotate.yml (new certificates, new secret accepted) {accept_s:.1f}s rc {accept.returncode}, "
        f"(secret swapped, keys re-encrypted) {swap_s:.1f}s rc {swap.returncode}; client loop through "
        f"{gwtest.VIP_A}: {result['requests']} requests, {result['failed']} failed, over {result['duration_s']}s"
    )
    assert accept.returncode == 0 and swap.returncode == 0, "rotate.yml failed"
    assert result["failed"] == 0, f"failed requests during the rotation: {result['failures']}"
    assert not result["thread_errors"], result["thread_errors"]
    assert result["requests"] >= 100 and result["_rc"] == 0

    # New certificates everywhere (issued once: both VIPs serve the same one), the CA unchanged.
    assert certs_between[gwtest.VIP_A] == certs_between[gwtest.VIP_B]
    assert all(certs_between[vip] != certs_before[vip] for vip in certs_before), "the public certificate is new"
    certs_after = {vip: gwtest.served_certificate(vip) for vip in certs_before}
    assert certs_after == certs_between, "the second run issued nothing"
    for n, sha in node_certs_before.items():
        assert _file_sha(n, f"{TLS}/node.crt") != sha, f"{n} has a new node certificate"
    # Postgres serves its new certificate (a new connection from a gateway node, verify-full).
    db_cert = (
        gwtest.node("gw1")
        .run(
            f"openssl s_client -starttls postgres -connect {gwtest.NODE_IP['db1']}:5432 -CAfile {TLS}/ca.crt "
            "-verify_return_error </dev/null 2>/dev/null | openssl x509 -outform DER | sha256sum"
        )
        .stdout.split()[0]
    )
    db_file = gwtest.node("db1").run(f"openssl x509 -outform DER -in {TLS}/node.crt | sha256sum").stdout.split()[0]
    assert db_cert == db_file, "Postgres still serves its old certificate"

    # The swap: every node signs with the new secret and still checks the old one.
    for gw in gwtest.GATEWAYS:
        conf = gwtest.node(gw).run("grep -E '^(secret|previous_secrets) =' /etc/gatewayha/gatewayha.toml").stdout
        assert f'secret = "{NEW_SECRET}"' in conf and f'previous_secrets = "{OLD_SECRET}"' in conf, gw
    # The dashboard token signed with the old secret still opens the dashboard, through both VIPs.
    for address in (gwtest.ADDRESS_A, gwtest.ADDRESS_B):
        status, _ = gwtest.http_get(f"{address}/clusters/{name}/status", 10, {"Cookie": old_dashboard})
        assert status == 200, (address, status)
    # Nothing stored is left under the old secret, and the cluster (its key re-encrypted) computes.
    again = gwtest.node("gw1").run(f"{gwtest.ADMIN} reencrypt")
    assert again.rc == 0 and ": 0 moved" in again.stdout and "0 unreadable" in again.stdout, again.stdout + again.stderr
    assert gwtest.gwclient("compute", name, "--workers", "1")["result"] == EXPECTED
