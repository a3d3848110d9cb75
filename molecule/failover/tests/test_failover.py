"""Failover: lose gw1, keep serving through the same VIP, no needless move when it returns.

The last verify stage of the default scenario (it breaks the appliance; destroy follows).
Tests run in file order and share one state; each prints what it measured:

1. clusters on both nodes (created until each node hosts one, bounded)
2. `docker stop gw1` (a clean node stop) -> VIP a on gw2, timed   "FAILOVER vip-a moved in ..."
3. a new cluster through the same VIP a, on gw2, computes
4. the cluster hosted on gw2 keeps computing
5. the cluster hosted on gw1 goes FAILED with the stored reason (node lost)
6. `docker start gw1` -> VIP a stays on gw2 (nopreempt); a connected client never notices
7. `docker kill gw2` (a node lost without a goodbye) -> both VIPs on gw1, timed
"""

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared"))
import gwtest  # noqa: E402

EXPECTED = sum(x * x for x in range(50))
# Bounds on the measured VIP moves. keepalived 2.2.7, advert_int 1, unicast: a clean stop
# sends priority 0 (the backup takes over within about a second); a lost node is noticed
# after 3 adverts + skew (about 3.6 s at priority 100). Generous for a loaded 2-core host.
CLEAN_STOP_BOUND_S = 5.0
NODE_LOSS_BOUND_S = 8.0
NODE_TIMEOUT_S = 15  # gatewayha_node_timeout in molecule/default/molecule.yml
MAX_CREATES = 8


@pytest.fixture(scope="module")
def state():
    st = {"created": [], "placed": {}}
    yield st
    for name in st["created"]:
        for address in (gwtest.ADDRESS_A, gwtest.ADDRESS_B):
            if gwtest.gwclient("stop", name, "--timeout", "20", address=address, timeout=60, check=False)["_rc"] == 0:
                break


def _need(state, *keys):
    missing = [k for k in keys if k not in state]
    if missing:
        pytest.fail(f"an earlier failover step did not complete ({', '.join(missing)})")


def _node_of(name: str, via: str = "gw2") -> str:
    return gwtest.clusters(gwtest.node(via))[name]["node"]


def _watch_vips(container: str, wanted: set, t0: float, bound: float) -> dict:
    """Poll (every ~0.1 s, bounded) until ``container`` holds each wanted VIP; seconds per VIP."""
    moved: dict[str, float] = {}
    deadline = t0 + bound + 20
    while time.monotonic() < deadline and set(moved) != wanted:
        held = gwtest.vips_on(container)
        for vip in wanted & held:
            moved.setdefault(vip, time.monotonic() - t0)
        time.sleep(0.05)
    return moved


def _watch_final(name: str, t0: float, out: dict, timeout: float = 120) -> threading.Thread:
    """In the background (plain docker exec, bounded): when gw2 first lists ``name`` as ended."""

    def run():
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = gwtest.docker("exec", "gw2", "sh", "-c", f"{gwtest.ADMIN} clusters list --all", check=False)
            for line in proc.stdout.splitlines():
                parts = line.split(None, 5)
                if parts and parts[0] == name and parts[2] in ("FAILED", "STOPPED"):
                    out.update(status=parts[2], after_s=time.monotonic() - t0, line=line)
                    return
            time.sleep(1.0)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _first_health(address: str, t0: float, timeout: float = 30) -> float | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gwtest.health(address, timeout=1.0):
            return time.monotonic() - t0
        time.sleep(0.1)
    return None


def test_clusters_on_both_gateway_nodes(state):
    placed = state["placed"]
    for attempt in range(1, MAX_CREATES + 1):
        created = gwtest.gwclient("create", "--workers", "1")
        name = created["name"]
        state["created"].append(name)
        node = _node_of(name)
        gwtest.log(f"create #{attempt}: {name} on {node}")
        if node in placed:
            gwtest.gwclient("stop", name)  # one per node is enough; keep the limits free
        else:
            placed[node] = name
        if set(placed) == set(gwtest.GATEWAYS):
            break
    assert set(placed) == set(gwtest.GATEWAYS), f"after {MAX_CREATES} creates the clusters are only on {placed}"
    state["on_gw1"], state["on_gw2"] = placed["gw1"], placed["gw2"]


def test_stop_gw1_moves_vip_a_to_gw2(state):
    _need(state, "on_gw1", "on_gw2")
    assert gwtest.vips_on("gw1") == {gwtest.VIP_A}, "VIP a starts on gw1"
    assert gwtest.vips_on("gw2") == {gwtest.VIP_B}
    t0 = time.monotonic()
    stopper = subprocess.Popen(["docker", "stop", "gw1"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state["gw1_final"] = {}
    state["gw1_watch"] = _watch_final(state["on_gw1"], t0, state["gw1_final"])
    moved = _watch_vips("gw2", {gwtest.VIP_A}, t0, CLEAN_STOP_BOUND_S)
    served = _first_health(gwtest.ADDRESS_A, t0)
    stopper.wait(timeout=60)
    stopped = time.monotonic() - t0
    state["gw1_stopped_at"] = t0
    vip_s = moved.get(gwtest.VIP_A)
    gwtest.measured(
        f"FAILOVER vip-a moved in {vip_s:.1f}s (docker stop gw1: on gw2 after {vip_s:.2f}s; /api/health through "
        f"{gwtest.VIP_A} answered again after {served if served is None else round(served, 2)}s; "
        f"docker stop returned after {stopped:.1f}s)"
        if vip_s is not None
        else f"FAILOVER vip-a did not move within {CLEAN_STOP_BOUND_S + 20:g}s"
    )
    assert stopper.returncode == 0, stopper.stderr.read()
    assert vip_s is not None and vip_s <= CLEAN_STOP_BOUND_S, f"VIP a moved in {vip_s}s, bound {CLEAN_STOP_BOUND_S}s"
    assert served is not None, "the API never answered through VIP a"
    assert not gwtest.running("gw1")
    assert gwtest.vips_on("gw2") == {gwtest.VIP_A, gwtest.VIP_B}, "both VIPs on gw2"
    state["failover_s"] = vip_s


def test_new_cluster_through_the_same_vip(state):
    _need(state, "failover_s")
    created = gwtest.gwclient("create", "--workers", "1", address=gwtest.ADDRESS_A)
    state["created"].append(created["name"])
    assert created["result"] == EXPECTED and created["workers"] == 1
    assert _node_of(created["name"]) == "gw2"
    gwtest.log(f"new cluster {created['name']} through {gwtest.VIP_A} on gw2 in {created['elapsed_s']}s")
    state["new"] = created["name"]


def test_cluster_on_gw2_keeps_computing(state):
    _need(state, "failover_s")
    for address in (gwtest.ADDRESS_A, gwtest.ADDRESS_B):
        result = gwtest.gwclient("compute", state["on_gw2"], "--workers", "1", address=address)
        assert result["result"] == EXPECTED


def test_cluster_on_gw1_fails_as_node_lost(state):
    """Its scheduler went down with gw1. molecule sets heartbeat_timeout 12 < node_timeout 15, so
    the silent scheduler is usually noticed first ("no heartbeat for 12 s"), else the node
    sweep ("node gw1 lost (unseen for 15 s)"); either way the cluster must end FAILED."""
    _need(state, "failover_s")
    name = state["on_gw1"]
    gw2 = gwtest.node("gw2")
    state["gw1_watch"].join(timeout=NODE_TIMEOUT_S + 90)
    final = state["gw1_final"]
    assert final, f"{name} (on gw1) did not end within {NODE_TIMEOUT_S + 90}s of the stop"
    row = gwtest.clusters(gw2)[name]
    gwtest.measured(
        f"NODE-LOST cluster {name} on gw1: {final['status']} {final['after_s']:.0f}s after the stop, "
        f"reason: {row['reason']!r}"
    )
    assert gwtest.nodes_alive(gw2).get("gw1") is False, "gw1 is dead in `gatewayha-admin nodes`"
    assert row["status"] == "FAILED", f"a cluster of a lost node is FAILED, not {row['status']} ({row['reason']})"
    assert row["reason"].startswith(("node gw1 lost", "no heartbeat for")), row["reason"]
    assert gwtest.gwclient("status", name, address=gwtest.ADDRESS_B)["status"] == "FAILED"
    # Its route is gone from the surviving HAProxy; the survivor's clusters keep theirs.

    def routes_without_it():
        routes = gwtest.sni_routes(gw2)
        return routes if name not in routes else None

    assert state["on_gw2"] in gwtest.wait_until(routes_without_it, 30, "the lost cluster's route removed on gw2")


def test_gw1_back_without_taking_vip_a_back(state, tmp_path):
    _need(state, "new")
    ready, stop = tmp_path / "ready", tmp_path / "stop"
    hold = gwtest.gwclient_popen(
        "hold",
        state["new"],
        "--seconds",
        "120",
        "--ready-file",
        str(ready),
        "--stop-file",
        str(stop),
        address=gwtest.ADDRESS_A,
    )
    violations = []
    try:
        gwtest.wait_until(lambda: ready.exists() or hold.poll() is not None, 60, "the held client", 0.2)
        assert hold.poll() is None, "the held client exited early"
        t0, since = time.monotonic(), int(time.time()) - 1
        gwtest.docker("start", "gw1")
        gw1 = gwtest.node("gw1")
        gwtest.wait_until(
            lambda: all(gw1.service(s).is_running for s in ("keepalived", "haproxy", "gatewayha-jobs")),
            90,
            "keepalived, haproxy and gatewayha-jobs on gw1",
            1.0,
        )
        gwtest.wait_until(lambda: gwtest.nodes_alive(gwtest.node("gw2")).get("gw1"), 60, "gw1 alive again", 1.0)
        back = time.monotonic() - t0
        # Watch a while longer than keepalived needs to (re)elect: 3 adverts + skew + 2 script rises.
        watch_until = time.monotonic() + 8
        while time.monotonic() < watch_until:
            on_gw1, on_gw2 = gwtest.vips_on("gw1"), gwtest.vips_on("gw2")
            if on_gw1 or on_gw2 != {gwtest.VIP_A, gwtest.VIP_B}:
                violations.append((round(time.monotonic() - t0, 1), sorted(on_gw1), sorted(on_gw2)))
            time.sleep(0.5)
    finally:
        stop.touch()
        held = gwtest.finish(hold, 90)
    # The containers share the host's boot id: look at keepalived's log since the start.
    masters = gw1.run(
        f"journalctl -u keepalived --since @{since} --no-pager | grep -c 'Entering MASTER STATE' || true"
    ).stdout
    gwtest.measured(
        f"NOPREEMPT gw1 back (services up, node alive) {back:.1f}s after docker start; VIP a stayed on gw2 for the "
        f"next 8s: {not violations}; connected client through {gwtest.VIP_A}: {held['rounds']} rounds, "
        f"{held['failures']} failed"
    )
    assert not violations, f"VIPs moved although nothing failed: {violations}"
    assert int(masters.strip() or 0) == 0, "keepalived on gw1 became MASTER of something"
    assert held["failures"] == 0 and held["rounds"] > 0, held
    assert gwtest.instance_healthy("gw1", 8101), "gw1's API instances serve again"


def test_kill_gw2_moves_both_vips_to_gw1(state):
    """A node lost without a goodbye (no priority-0 advert): the backup notices the silence."""
    _need(state, "new")
    assert gwtest.vips_on("gw2") == {gwtest.VIP_A, gwtest.VIP_B}
    t0 = time.monotonic()
    gwtest.docker("kill", "gw2")
    moved = _watch_vips("gw1", {gwtest.VIP_A, gwtest.VIP_B}, t0, NODE_LOSS_BOUND_S)
    served = _first_health(gwtest.ADDRESS_B, t0)
    gwtest.measured(
        "FAILOVER node loss (docker kill gw2): "
        + ", ".join(f"vip-{'a' if v == gwtest.VIP_A else 'b'} moved in {s:.1f}s" for v, s in sorted(moved.items()))
        + f"; /api/health through {gwtest.VIP_B} answered again after "
        + f"{served if served is None else round(served, 2)}s"
    )
    assert set(moved) == {gwtest.VIP_A, gwtest.VIP_B}, f"only {sorted(moved)} moved to gw1"
    assert max(moved.values()) <= NODE_LOSS_BOUND_S, moved
    assert served is not None
    created = gwtest.gwclient("create", "--workers", "1", address=gwtest.ADDRESS_B)
    state["created"].append(created["name"])
    assert created["result"] == EXPECTED
    assert _node_of(created["name"], via="gw1") == "gw1"
