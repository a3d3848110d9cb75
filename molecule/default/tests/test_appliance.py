"""The converged appliance: services, ports, HAProxy config, VIPs, health, pg_hba."""

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared"))
import gwtest  # noqa: E402

GATEWAY_SERVICES = ["haproxy", "keepalived", "gatewayha-jobs", "gatewayha-api@8101", "gatewayha-api@8102"]


@pytest.mark.parametrize("name", GATEWAY_SERVICES)
@pytest.mark.parametrize("gw", gwtest.GATEWAYS)
def test_gateway_service_active_and_enabled(gw, name):
    service = gwtest.node(gw).service(name)
    assert service.is_running, f"{name} is not active on {gw}"
    assert service.is_enabled, f"{name} is not enabled on {gw}"


@pytest.mark.parametrize("unit", ["gatewayha-jobs", "gatewayha-api@8101"])
def test_the_units_documentation_is_installed(unit):
    """`systemctl help <unit>` opens what Documentation= names: this release's README and docs."""
    host = gwtest.node("gw1")
    docs = host.run(f"systemctl show -p Documentation --value {unit}").stdout.split()
    assert docs, f"{unit} names no documentation"
    for url in docs:
        assert url.startswith("file://") and host.file(url.removeprefix("file://")).is_file, (unit, url)


def test_postgresql_active_and_enabled():
    service = gwtest.node("db1").service("postgresql@15-main")
    assert service.is_running
    assert service.is_enabled


@pytest.mark.parametrize("gw", gwtest.GATEWAYS)
def test_gateway_ports_listening(gw):
    host = gwtest.node(gw)
    ip = gwtest.NODE_IP[gw]
    assert host.socket("tcp://0.0.0.0:8000").is_listening, "HAProxy's public port"
    for port in (8101, 8102):
        assert host.socket(f"tcp://127.0.0.1:{port}").is_listening, f"gatewayha-api@{port} on loopback"
        assert not host.socket(f"tcp://{ip}:{port}").is_listening, f"gatewayha-api@{port} on {ip}"
        assert host.socket(f"tcp://{ip}:{port + gwtest.RELAY_OFFSET}").is_listening, f"the TLS relay of {port}"


def test_postgresql_port_listening():
    assert gwtest.node("db1").socket("tcp://0.0.0.0:5432").is_listening


@pytest.mark.parametrize("gw", gwtest.GATEWAYS)
def test_haproxy_config_valid(gw):
    out = gwtest.node(gw).run("haproxy -c -f /etc/haproxy/haproxy.cfg")
    assert out.rc == 0, out.stdout + out.stderr


def test_exactly_one_vip_per_gateway_node():
    held = {gw: gwtest.vips_on(gw) for gw in gwtest.GATEWAYS}
    gwtest.log(f"VIPs: {json.dumps({gw: sorted(v) for gw, v in held.items()})}")
    for gw, vips in held.items():
        assert len(vips) == 1, f"{gw} holds {sorted(vips)}: each node must hold exactly one VIP"
    assert held["gw1"] | held["gw2"] == {gwtest.VIP_A, gwtest.VIP_B}, "each VIP is held by exactly one node"
    # The preferred masters (VIP a on gw1, b on gw2) win the first election after a converge.
    assert held == {"gw1": {gwtest.VIP_A}, "gw2": {gwtest.VIP_B}}


@pytest.mark.parametrize("vip", [gwtest.VIP_A, gwtest.VIP_B])
def test_api_healthy_through_each_vip(vip):
    status, body = gwtest.http_get(f"http://{vip}:{gwtest.PORT}/api/health")
    assert (status, body) == (200, {"status": "pass"})


@pytest.mark.parametrize("gw", gwtest.GATEWAYS)
def test_api_instances_healthy_on_each_node(gw):
    for port in (8101, 8102):
        assert gwtest.instance_healthy(gw, port), f"gatewayha-api@{port} on {gw}"


def test_each_node_s_instances_run_its_wsgi_server_with_its_liveness_guard():
    """gw1's instances run granian, and systemd receives their workers' pings (NotifyAccess=all):
    the watchdog timestamp of each moves on. gw2's run gunicorn (gatewayha_wsgi_server): their
    unit has no watchdog (gunicorn's worker timeout instead). None was restarted."""

    def watchdog_state():
        state = {}
        for gw in gwtest.GATEWAYS:
            for port in (8101, 8102):
                out = gwtest.node(gw).run(
                    f"systemctl show -p WatchdogUSec -p WatchdogTimestampMonotonic -p NRestarts gatewayha-api@{port}"
                )
                state[(gw, port)] = dict(line.split("=", 1) for line in out.stdout.split())
        return state

    before = watchdog_state()
    time.sleep(11)  # pings every 10 s (a third of WatchdogSec)
    after = watchdog_state()
    for key, props in after.items():
        gw, port = key
        if gwtest.WSGI[gw] == "granian":
            assert props["WatchdogUSec"] == "30s", (key, props)
            pinged = int(props["WatchdogTimestampMonotonic"]) > int(before[key]["WatchdogTimestampMonotonic"])
            assert pinged, (key, props)
        else:
            assert props["WatchdogUSec"] == "0", (key, props)
        assert props["NRestarts"] == "0", (key, props)
        # The server that answers, asked on the node itself.
        out = gwtest.node(gw).run(
            f". /etc/gatewayha/environment && curl -s -o /dev/null -D - http://$GATEWAYHA_API_HOST:{port}/api/version"
        )
        assert f"server: {gwtest.WSGI[gw]}" in out.stdout.lower(), (key, out.stdout)


def test_pg_hba_refuses_other_addresses():
    """pg_hba.conf admits the gatewayha role from the gateway nodes only: db1's own address (a
    TLS connection with the right password, past the firewall since it is local) is refused by
    pg_hba. The test host (172.30.0.1) does not even reach the port (the firewall drops it)."""
    out = gwtest.node("db1").run(
        f"PGPASSWORD={shlex.quote(gwtest.db_password())} PGCONNECT_TIMEOUT=5 psql -XAt "
        f"'host={gwtest.NODE_IP['db1']} dbname=gatewayha user=gatewayha sslmode=require' -c 'SELECT 1'"
    )
    gwtest.log(f"pg from db1's own address: {out.stderr.strip()}")
    assert out.rc != 0
    assert f'no pg_hba.conf entry for host "{gwtest.NODE_IP["db1"]}"' in out.stderr, out.stderr
    proc = subprocess.run(
        [
            str(gwtest.APP_PYTHON),
            str(gwtest.SHARED / "pgconnect.py"),
            gwtest.NODE_IP["db1"],
            "5432",
            "gatewayha",
            "gatewayha",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PGPASSWORD": gwtest.db_password(), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    gwtest.log(f"pg from the test host: {result}")
    assert result["connected"] is False
    assert "timeout expired" in result["error"], "dropped by the firewall: no answer at all"


@pytest.mark.parametrize("gw", gwtest.GATEWAYS)
def test_pg_hba_admits_the_gateway_nodes(gw):
    result = gwtest.pgconnect_on(gw, gwtest.NODE_IP["db1"])
    assert result == {"connected": True, "select": 1, "ssl": True}
