"""The firewall (roles/firewall, nftables): what an outsider reaches and what the nodes need.

out1 (172.30.0.30) is on the same network as the nodes but in no group of the inventory: it
plays the attacker. Every TCP port any node listens on (read from `ss` on the node, so a
new listener is covered without a change here) plus a running cluster's scheduler, dashboard
and control API must time out from out1, except the public port (and SSH, open to anyone by
default; no sshd runs in these containers, so it answers with a reset). The gateway nodes
still reach each other's API instances and Dask ports and db1's Postgres; VRRP adverts forged
by out1 never reach keepalived.
"""

import re
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared"))
import gwtest  # noqa: E402

NODES = ("gw1", "gw2", "db1")
PUBLIC = gwtest.PORT
SSH = 22


@pytest.fixture(scope="module")
def cluster():
    created = gwtest.gwclient("create", "--workers", "1")
    name = created["name"]
    rows = gwtest.sql(f"SELECT scheduler_address, dashboard_address, api_address FROM clusters WHERE name = '{name}'")
    assert rows and all(rows[0]), rows
    ports = {}
    for what, address in zip(("scheduler", "dashboard", "api"), rows[0], strict=True):
        m = re.match(r"^\w+://([\d.]+):(\d+)", address)
        assert m, address
        ports[what] = (m.group(1), int(m.group(2)))
    gwtest.log(f"cluster {name}: {ports}")
    yield {"name": name, "ports": ports}
    gwtest.gwclient("stop", name, check=False)


def _listeners(name: str) -> set[tuple[str, int]]:
    """TCP listeners of a node reachable from the network: (node address, port)."""
    out = gwtest.node(name).run("ss -Hltn").stdout
    found = set()
    for line in out.splitlines():
        local = line.split()[3]
        host, _, port = local.rpartition(":")
        host = host.strip("[]")
        if host.startswith("127.") or host == "::1":
            continue
        found.add((gwtest.NODE_IP[name], int(port)))
    return found


def test_nftables_loaded_and_enabled_on_every_node():
    for name in NODES:
        host = gwtest.node(name)
        assert host.service("nftables").is_enabled, name
        table = host.run("nft list table inet gatewayha")
        assert table.rc == 0 and "policy drop" in table.stdout, (name, table.stdout, table.stderr)
        # Docker's own table (the embedded DNS server's NAT) is still there: resolving works.
        assert host.run("getent hosts gw1 || getent hosts db1").rc == 0, f"DNS broken on {name}"


def test_an_outsider_reaches_only_the_public_port(cluster):
    targets = set()
    for name in NODES:
        targets |= _listeners(name)
        targets.add((gwtest.NODE_IP[name], SSH))
        targets |= {(gwtest.NODE_IP[name], port) for port in gwtest.API_PORTS}
    targets |= set(cluster["ports"].values())
    for vip in (gwtest.VIP_A, gwtest.VIP_B):
        targets |= {(vip, PUBLIC), (vip, 8101), (vip, 8102)}
    relay = gwtest.API_PORTS[0] + gwtest.RELAY_OFFSET
    assert (gwtest.NODE_IP["db1"], 5432) in targets and (gwtest.NODE_IP["gw1"], relay) in targets
    found = gwtest.tcp_probe(gwtest.OUTSIDER, sorted(targets))
    gwtest.log(f"from {gwtest.OUTSIDER}: {found}")
    for target, state in found.items():
        port = int(target.rsplit(":", 1)[1])
        if port == PUBLIC and not target.startswith(gwtest.NODE_IP["db1"]):
            assert state == "open", target
        elif port == SSH:
            assert state in ("open", "refused"), (target, state)
        else:
            assert state == "timeout", f"{target} answered the outsider ({state})"


def test_the_nodes_reach_what_they_need(cluster):
    """gw2 reaches gw1's API instances, db1's Postgres and the cluster's ports (wherever it
    runs, from the other gateway node); db1 reaches no gateway port but the public one."""
    sched_host = cluster["ports"]["scheduler"][0]
    other = next(gw for gw in gwtest.GATEWAYS if gwtest.NODE_IP[gw] != sched_host)
    found = gwtest.tcp_probe(other, [*cluster["ports"].values()])
    relays = [port + gwtest.RELAY_OFFSET for port in gwtest.API_PORTS]
    found |= gwtest.tcp_probe("gw2", [*((gwtest.NODE_IP["gw1"], p) for p in relays), (gwtest.NODE_IP["db1"], 5432)])
    found |= gwtest.tcp_probe("gw1", [(gwtest.NODE_IP["gw2"], p) for p in relays])
    gwtest.log(f"between the nodes: {found}")
    assert set(found.values()) == {"open"}, found
    from_db = gwtest.tcp_probe("db1", [(gwtest.NODE_IP["gw1"], 9101), *cluster["ports"].values()])
    gwtest.log(f"from db1: {from_db}")
    assert set(from_db.values()) == {"timeout"}, from_db


# VRRP version 2 advert (RFC 3768): the outsider claims priority 255 for both VRIDs, with the
# right password (keepalived_auth_pass of molecule.yml), to the nodes' real addresses.
_FORGE = r"""
import socket, struct, sys, time
password, vip_a, vip_b, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
targets = sys.argv[5:]
def checksum(data):
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF
def advert(vrid, vip):
    body = socket.inet_aton(vip) + password.encode()[:8].ljust(8, b"\0")
    head = struct.pack("!BBBBBBH", 0x21, vrid, 255, 1, 1, 1, 0)
    return struct.pack("!BBBBBBH", 0x21, vrid, 255, 1, 1, 1, checksum(head + body)) + body
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 112)
s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 255)
sent, end = 0, time.time() + seconds
while time.time() < end:
    for target in targets:
        for vrid, vip in ((51, vip_a), (52, vip_b)):
            s.sendto(advert(vrid, vip), (target, 0))
            sent += 1
    time.sleep(0.2)
print(sent)
"""


def test_forged_vrrp_from_an_outsider_moves_no_vip():
    held = {gw: gwtest.vips_on(gw) for gw in gwtest.GATEWAYS}
    since = int(time.time()) - 1
    password = gwtest.node("gw1").ansible.get_variables()["keepalived_auth_pass"]
    args = [password, gwtest.VIP_A, gwtest.VIP_B, "5", *(gwtest.NODE_IP[gw] for gw in gwtest.GATEWAYS)]
    sent = gwtest.docker("exec", gwtest.OUTSIDER, "python3", "-c", _FORGE, *args, timeout=30).stdout.strip()
    time.sleep(2)
    gwtest.log(f"forged VRRP adverts sent by {gwtest.OUTSIDER}: {sent}; VIPs before {held}")
    assert int(sent) > 0
    assert {gw: gwtest.vips_on(gw) for gw in gwtest.GATEWAYS} == held, "a VIP moved"
    for gw in gwtest.GATEWAYS:
        log = gwtest.node(gw).run(f"journalctl -u keepalived --since @{since} --no-pager").stdout
        assert gwtest.OUTSIDER_IP not in log, f"keepalived on {gw} saw the outsider's adverts:\n{log[-2000:]}"
        assert "Entering BACKUP STATE" not in log, f"keepalived on {gw} changed state:\n{log[-2000:]}"
