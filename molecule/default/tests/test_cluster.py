"""End to end with the stock dask-gateway client through a VIP, and the transient units.

One cluster for the module (tests run in file order and share it): create with options,
scale to 2 workers, compute, dashboard through the VIP, the scheduler/worker units with
their cgroup limits, a restart of gatewayha-jobs that must not touch them, shutdown.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared"))
import gwtest  # noqa: E402

GIB = 2**30
# Options the client passes (gatewayha_cluster_options of the role): 2 cores, 0.75 GiB per worker.
OPTIONS = '{"worker_cores": 2, "worker_memory_gib": 0.75}'
WORKER_CPU = "2s"  # CPUQuota=200% as systemd shows it (CPUQuotaPerSecUSec)
WORKER_MEMORY = int(0.75 * GIB) + 256 * 2**20  # worker memory + the nanny's headroom (backends/local.py)
SCHEDULER_CPU = "1s"  # [cluster] scheduler_cores = 1 (default)
SCHEDULER_MEMORY = 1 * GIB  # [cluster] scheduler_memory_gib = 1 (default)


@pytest.fixture(scope="module")
def cluster():
    created = gwtest.gwclient("create", "--options", OPTIONS, "--workers", "2")
    gwtest.log(f"cluster {created['name']} created in {created['created_s']}s, computed in {created['elapsed_s']}s")
    state = {"name": created["name"], "created": created}
    yield state
    # Whatever failed above, leave no cluster behind (the later stages count on the limits).
    gwtest.gwclient("stop", state["name"], check=False)


def _where(name: str) -> str:
    def find():
        hits = [gw for gw in gwtest.GATEWAYS if gwtest.cluster_units(gwtest.node(gw), name)]
        return hits[0] if len(hits) == 1 else None

    return gwtest.wait_until(find, 30, f"the units of {name} on exactly one node")


def test_create_scale_to_two_and_compute(cluster):
    created = cluster["created"]
    assert created["workers"] == 2
    assert created["result"] == sum(x * x for x in range(50))
    assert created["dashboard_link"] == f"{gwtest.ADDRESS_A}/clusters/{cluster['name']}/status"


def test_dashboard_through_each_vip(cluster):
    for address in (gwtest.ADDRESS_A, gwtest.ADDRESS_B):
        result = gwtest.gwclient("dashboard", cluster["name"], address=address)
        assert result["status"] == 200 and result["bytes"] > 0, result


def test_compute_through_the_other_vip(cluster):
    """The scheduler route (SNI) is in both nodes' HAProxy maps."""
    result = gwtest.gwclient("compute", cluster["name"], "--workers", "2", address=gwtest.ADDRESS_B)
    assert result["result"] == sum(x * x for x in range(50))


def test_transient_units_have_the_cluster_limits(cluster):
    name = cluster["name"]
    gw = _where(name)
    cluster["node"] = gw
    units = gwtest.cluster_units(gwtest.node(gw), name)
    gwtest.log(f"units of {name} on {gw}: {units}")
    scheduler = units.pop(f"gatewayha-{name}-scheduler.service")
    assert scheduler["ActiveState"] == "active"
    assert scheduler["Slice"] == "gatewayha.slice"
    assert scheduler["CPUQuotaPerSecUSec"] == SCHEDULER_CPU
    assert int(scheduler["MemoryMax"]) == SCHEDULER_MEMORY
    assert len(units) == 2 and all(u.startswith(f"gatewayha-{name}-worker-") for u in units)
    for unit, props in units.items():
        assert props["ActiveState"] == "active", unit
        assert props["CPUQuotaPerSecUSec"] == WORKER_CPU, unit
        assert int(props["MemoryMax"]) == WORKER_MEMORY, unit


def test_units_survive_a_restart_of_the_job_runner(cluster):
    name = cluster.get("node") and cluster["name"]
    assert name, "the units test found no node"
    host = gwtest.node(cluster["node"])
    before = {u: p["MainPID"] for u, p in gwtest.cluster_units(host, name).items()}
    assert len(before) == 3 and all(int(pid) > 0 for pid in before.values())
    runner_pid = host.run("systemctl show -p MainPID --value gatewayha-jobs").stdout.strip()
    assert host.run("systemctl restart gatewayha-jobs").rc == 0
    gwtest.wait_until(lambda: host.service("gatewayha-jobs").is_running, 30, "gatewayha-jobs active again")
    assert host.run("systemctl show -p MainPID --value gatewayha-jobs").stdout.strip() != runner_pid
    after = {u: p["MainPID"] for u, p in gwtest.cluster_units(host, name).items()}
    assert after == before, "the scheduler and workers kept their processes"
    result = gwtest.gwclient("compute", name, "--workers", "2")
    assert result["result"] == sum(x * x for x in range(50))
    # Some heartbeats later the restarted job runner has reconciled: still the same processes.
    after_compute = {u: p["MainPID"] for u, p in gwtest.cluster_units(host, name).items()}
    assert after_compute == before


def test_shutdown(cluster):
    name = cluster["name"]
    result = gwtest.gwclient("stop", name)
    assert result["status"] == "STOPPED"
    for gw in gwtest.GATEWAYS:
        gwtest.wait_until(
            lambda gw=gw: not gwtest.cluster_units(gwtest.node(gw), name), 30, f"the units of {name} gone on {gw}"
        )
    # The dashboard route is gone from the maps: the path now reaches the API (404 JSON).
    status, body = gwtest.http_get(f"{gwtest.ADDRESS_A}/clusters/{name}/status")
    assert status != 200, (status, body)
