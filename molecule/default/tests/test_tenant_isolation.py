"""Tenant isolation on the appliance (systemd as PID 1): each cluster's units run under a uid of
their own in a sandbox, in a memory-capped slice; a tenant's code (tests/tenant_attack.py, the
same probes as the local stack's e2e test) reaches neither the control plane nor another tenant,
and its own cluster keeps computing, scaling and adapting.
"""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared"))
import gwtest  # noqa: E402

STATE = "/var/lib/gatewayha/node/clusters"
SANDBOX = {
    "NoNewPrivileges": "yes",
    "CapabilityBoundingSet": "",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "ProtectProc": "invisible",
    "RestrictNamespaces": "yes",
    "RestrictSUIDSGID": "yes",
    "OOMScoreAdjust": "800",
    "TasksMax": "1024",
    "Slice": "gatewayha.slice",
}


def _node_of(name: str) -> str:
    def find():
        hits = [gw for gw in gwtest.GATEWAYS if gwtest.cluster_units(gwtest.node(gw), name)]
        return hits[0] if len(hits) == 1 else None

    return gwtest.wait_until(find, 60, f"the units of {name} on exactly one node")


@pytest.fixture(scope="module")
def pair():
    """Two running clusters on the same node (three clusters on two nodes: two share one)."""
    names = [gwtest.gwclient("create")["name"] for _ in range(3)]
    try:
        where = {n: _node_of(n) for n in names}
        attacker, victim = next((a, b) for a in names for b in names if a != b and where[a] == where[b])
        yield {"attacker": attacker, "victim": victim, "node": where[attacker]}
    finally:
        for n in names:
            gwtest.gwclient("stop", n, check=False)


def _show(host, unit: str, *props: str) -> dict:
    out = host.run(f"systemctl show {unit} " + " ".join(f"-p {p}" for p in props)).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def test_tenant_units_run_sandboxed_under_a_uid_of_their_own(pair):
    host = gwtest.node(pair["node"])
    uids = {}
    for name in (pair["attacker"], pair["victim"]):
        unit = f"gatewayha-{name}-scheduler.service"
        props = _show(host, unit, "UID", "GID", "ReadWritePaths", "InaccessiblePaths", *SANDBOX)
        gwtest.log(f"{unit}: {props}")
        assert {k: props.get(k) for k in SANDBOX} == SANDBOX, props
        uid = int(props["UID"])
        assert uid >= 1_895_825_408 and props["GID"] == str(uid), props
        assert props["ReadWritePaths"] == f"{STATE}/{name}/work", props
        assert "/etc/gatewayha" in props["InaccessiblePaths"] and "/run/haproxy" in props["InaccessiblePaths"]
        uids[name] = uid
        # Files: the secrets are root:<its gid> 0440 in a directory only root writes.
        st = host.run(f"stat -c '%a %u %g' {STATE}/{name} {STATE}/{name}/tls.key {STATE}/{name}/api-token").stdout
        assert st.split("\n")[:3] == [f"750 0 {uid}", f"440 0 {uid}", f"440 0 {uid}"], st
    assert len(set(uids.values())) == 2, "each cluster has its own uid"
    assert host.run(f"stat -c %a {STATE}").stdout.strip() == "711"
    # Every Dask unit together is capped, and the control plane is the last the kernel kills.
    assert _show(host, "gatewayha.slice", "MemoryMax")["MemoryMax"] not in ("", "infinity")
    for unit in ("gatewayha-jobs.service", "gatewayha-api@8101.service", "haproxy.service"):
        assert _show(host, unit, "OOMScoreAdjust")["OOMScoreAdjust"] == "-500", unit
    for unit in (f"gatewayha-{pair['attacker']}-scheduler.service", "gatewayha-jobs.service",
                 "gatewayha-api@8101.service"):  # fmt: skip
        score = host.run(f"systemd-analyze security --no-pager {unit} | tail -1").stdout.strip()
        gwtest.measured(f"systemd-analyze security {unit}: {score}")


def test_a_tenant_reaches_neither_the_control_plane_nor_another_tenant(pair):
    host = gwtest.node(pair["node"])
    victim = pair["victim"]
    pids = [int(_show(host, unit, "MainPID")["MainPID"]) for unit in gwtest.cluster_units(host, victim)]
    assert all(pids), pids
    site = "/opt/gatewayha/venv/lib/python3.11/site-packages"
    targets = {
        "config": "/etc/gatewayha/gatewayha.toml",
        "secret": "/etc/gatewayha/environment",
        "local_env": "/root/.bash_history",
        "victim_dir": f"{STATE}/{victim}",
        "victim_name": victim,
        "victim_pids": pids,
        "clusters_dir": STATE,
        "own_dir": f"{STATE}/{pair['attacker']}",
        "haproxy_sock": "/run/haproxy/admin.sock",
        "pg_dir": "/var/run/postgresql",
        "pg_host": gwtest.NODE_IP["db1"],
        "pg_port": 5432,
        "site_packages": site,
        "app_file": f"{site}/gatewayha/__init__.py",
    }
    result = gwtest.gwclient("attack", pair["attacker"], "--targets", json.dumps(targets), check=False, timeout=300)
    gwtest.log(json.dumps(result, indent=1, sort_keys=True)[:6000])
    assert result.get("not_refused") == {"worker": [], "scheduler": []}, result
    assert result["result"] == sum(x * x for x in range(50)) and result["workers"] == 2
    assert result["after_adapt"] == 42
    # The victim's processes are untouched.
    assert [int(_show(host, u, "MainPID")["MainPID"]) for u in gwtest.cluster_units(host, victim)] == pids
