"""Helpers shared by the molecule verifiers (testinfra, run by molecule with .venv-ops).

The dask-gateway client is not in .venv-ops: client steps run molecule/shared/gwclient.py
with the app venv (.venv/bin/python) as a subprocess and return its JSON. Nodes are
reached through testinfra hosts of the molecule inventory; docker itself (stop/start a
node, precise timing of VIP moves) through the docker CLI. Every wait is bounded.
"""

from __future__ import annotations

import base64
import glob
import json
import os
import re
import shlex
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import testinfra

SHARED = Path(__file__).resolve().parent
REPO = SHARED.parents[1]
sys.path.insert(0, str(REPO / "tests"))
import helpers  # noqa: E402  (tests/helpers.py: one wait_until for both test suites)

APP_PYTHON = REPO / ".venv" / "bin" / "python"
GWCLIENT = SHARED / "gwclient.py"

# The molecule scenario's fixed addresses (molecule/default/molecule.yml).
VIP_A = "172.30.0.100"
VIP_B = "172.30.0.101"
PORT = 8000
NODE_IP = {"gw1": "172.30.0.11", "gw2": "172.30.0.12", "db1": "172.30.0.20"}
GATEWAYS = ("gw1", "gw2")
# The API instances' WSGI server per node (gatewayha_wsgi_server in molecule.yml's host_vars).
WSGI = {"gw1": "granian", "gw2": "gunicorn"}
# HTTPS (the haproxy role's default; the certificate is the appliance CA's, see trust_the_ca).
ADDRESS_A = f"https://{VIP_A}:{PORT}"
ADDRESS_B = f"https://{VIP_B}:{PORT}"
ADMIN = "GATEWAYHA_CONFIG=/etc/gatewayha/gatewayha.toml /opt/gatewayha/venv/bin/gatewayha-admin"


def log(msg: str) -> None:
    print(msg, flush=True)


def measured(msg: str) -> None:
    """A measured number for the summary of scripts/molecule.sh (it collects "MEASURED ..." lines)."""
    print(f"\nMEASURED {msg}", flush=True)


def inventory() -> str:
    """The molecule inventory: from molecule's environment, else the last converge's."""
    eph = os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY")
    if eph:
        return str(Path(eph) / "inventory")
    found = sorted(glob.glob(os.path.expanduser("~/.ansible/tmp/molecule.*.default/inventory")))
    if not found:
        raise RuntimeError("no molecule inventory: run under molecule, or converge the default scenario first")
    return found[-1]


def trust_the_ca() -> Path | None:
    """Trust the appliance's CA (roles/pki, next to the inventory) the way README tells users to:
    SSL_CERT_FILE = the system's CAs + ca.crt, for this process (urllib) and the client
    processes it starts (the stock dask-gateway client). None before a converge made the CA."""
    try:
        ca = Path(inventory()) / "pki" / "ca.crt"
    except RuntimeError:
        return None
    if not ca.exists():
        return None
    bundle = ca.with_name("client-bundle.pem")
    system = Path(ssl.get_default_verify_paths().openssl_cafile)
    text = (system.read_text() if system.exists() else "") + ca.read_text()
    if not bundle.exists() or bundle.read_text() != text:
        # Whole or not at all: a client loop of this or another process (every import of this
        # module comes here) reads it for each new connection, and a half-written bundle failed
        # its requests with "unable to get local issuer certificate".
        tmp = bundle.with_name(f".{bundle.name}.{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, bundle)
    os.environ["SSL_CERT_FILE"] = str(bundle)
    return ca


def ansible_env() -> dict[str, str]:
    """The environment for ansible-playbook runs from a verifier: molecule's (its ansible.cfg)."""
    env = dict(os.environ)
    cfg = Path(inventory()).parent / "ansible.cfg"
    if "ANSIBLE_CONFIG" not in env and cfg.exists():
        env["ANSIBLE_CONFIG"] = str(cfg)
    # molecule (ansible-compat) puts the project's roles/ on ANSIBLE_ROLES_PATH; by hand, do the same.
    # GWTEST_ROLES=<dir> tries a changed copy of the roles instead (it goes first).
    roles = os.environ.get("GWTEST_ROLES") or str(REPO / "roles")
    paths = [p for p in env.get("ANSIBLE_ROLES_PATH", "").split(":") if p]
    env["ANSIBLE_ROLES_PATH"] = ":".join([roles, *(p for p in paths if p != roles)])
    env.setdefault("ANSIBLE_NOCOLOR", "1")
    env.setdefault("ANSIBLE_FORCE_COLOR", "0")
    return env


_hosts: dict[str, Any] = {}


def node(name: str):
    """The testinfra host of one inventory node (cached)."""
    if name not in _hosts:
        _hosts[name] = testinfra.get_host(f"ansible://{name}", ansible_inventory=inventory())
    return _hosts[name]


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
    """tests/helpers.wait_until, polling less often: each check here is a `docker exec`."""
    return helpers.wait_until(predicate, timeout, what, interval)


trust_the_ca()


def served_certificate(vip: str) -> bytes:
    """The public port's certificate (DER) as a client that trusts only the appliance's CA sees
    it: verified, for the VIP's address (an IP address SAN)."""
    ctx = ssl.create_default_context(cafile=str(Path(inventory()) / "pki" / "ca.crt"))
    with socket.create_connection((vip, PORT), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=vip) as tls:
            return tls.getpeercert(binary_form=True)


# --------------------------------------------------------------------------- client


def gwclient(*args: str, address: str = ADDRESS_A, timeout: float = 240, check: bool = True) -> dict:
    """Run one gwclient.py command with the app venv; return its JSON (last stdout line)."""
    cmd = [str(APP_PYTHON), str(GWCLIENT), "--address", address, *args]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    result = json.loads(lines[-1]) if lines else {}
    elapsed = time.monotonic() - t0
    if check and (proc.returncode != 0 or not lines):
        stderr = "\n".join(line for line in proc.stderr.splitlines() if "VersionMismatch" not in line)
        raise AssertionError(
            f"gwclient {' '.join(args)} via {address} failed (rc {proc.returncode}, {elapsed:.1f}s):\n"
            f"stdout: {proc.stdout[-2000:]}\nstderr: {stderr[-4000:]}"
        )
    result["_rc"] = proc.returncode
    return result


def gwclient_popen(*args: str, address: str = ADDRESS_A) -> subprocess.Popen:
    """Start a long-running gwclient.py command (hold, apiloop); the caller bounds it."""
    cmd = [str(APP_PYTHON), str(GWCLIENT), "--address", address, *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float) -> dict:
    """Wait (bounded) for a gwclient.py process started by gwclient_popen; its JSON."""
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate(timeout=10)
        raise AssertionError(f"client process did not finish within {timeout:g}s: {stderr[-2000:]}") from None
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise AssertionError(f"client process printed no result (rc {proc.returncode}): {stderr[-3000:]}")
    result = json.loads(lines[-1])
    result["_rc"] = proc.returncode
    result["_stderr"] = stderr[-3000:]
    return result


def http_get(url: str, timeout: float = 5.0, headers: dict[str, str] | None = None) -> tuple[int | None, Any]:
    """(status, parsed JSON or text); status None when no HTTP answer came."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=timeout) as r:
            body = r.read().decode()
            status = r.status
    except urllib.error.HTTPError as e:
        body, status = e.read().decode(errors="replace"), e.code
    except OSError as e:
        return None, repr(e)
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def dashboard_cookie(name: str, address: str = ADDRESS_A, user: str = "demo", password: str = "demo-password") -> str:
    """The owner's dashboard login (through the API): the ``Cookie`` header value HAProxy then
    checks by itself on every request to the cluster's dashboard."""
    basic = base64.b64encode(f"{user}:{password}".encode()).decode()
    req = urllib.request.Request(f"{address}/clusters/{name}/status", headers={"Authorization": f"Basic {basic}"})
    try:
        urllib.request.build_opener(_NoRedirect).open(req, timeout=10)
        raise AssertionError("the dashboard login did not redirect")
    except urllib.error.HTTPError as e:
        assert e.code == 303, (e.code, e.read()[:200])
        cookies = [c.split(";", 1)[0] for c in e.headers.get_all("Set-Cookie") or []]
    token = [c for c in cookies if c.startswith("gatewayha-dashboard=")]
    assert token, cookies
    return token[0]


def answers_503(since: str | float = "-5min") -> list[str]:
    """Every 503 the gateway nodes answered since ``since`` (a journalctl time, or a time.time()
    of this host: the containers share its clock), as HAProxy logged it (frontend, backend/server,
    timers, termination state: `<NOSRV>` is HAProxy's own) and as the API logged it (its error):
    to tell in a failure message which of them said no."""
    if isinstance(since, float | int):
        since = f"@{int(since) - 1}"
    lines = []
    for gw in GATEWAYS:
        journal = f"journalctl -u haproxy -u 'gatewayha-api@*' --since={since} --no-pager -o cat"
        out = node(gw).run(f"{journal} | grep -E ' 503 |-> 503| is DOWN' | tail -40").stdout
        lines += [f"{gw}: {line}" for line in out.splitlines()]
    return lines


API_PORTS = (8101, 8102)  # gatewayha_api_ports in molecule/default/molecule.yml
# API instances listen on loopback; other nodes' HAProxy reach them through TLS relays on
# port + RELAY_OFFSET of the node's address (gatewayha_api_relay_offset).
RELAY_OFFSET = 1000
OUTSIDER = "out1"  # in no group of the inventory: the firewall admits it to the public port only
OUTSIDER_IP = "172.30.0.30"


def node_get(gw: str, port: int, path: str = "/api/health", auth: tuple[str, str] | None = None,
             rounds: int = 1) -> list[tuple[int, str]]:  # fmt: skip
    """GET an API instance of ``gw`` directly, from that node itself (the firewall admits no one
    else but the other gateway nodes), ``rounds`` times in one docker exec: [(status, body)],
    status 0 when no HTTP answer came. The instance's address is the units' GATEWAYHA_API_HOST."""
    creds = f"-u {shlex.quote(':'.join(auth))} " if auth else ""
    url = f'"http://$GATEWAYHA_API_HOST:{port}{path}"'
    cmd = (
        f". /etc/gatewayha/environment && for i in $(seq 1 {rounds}); do "
        f"curl -s -m 10 {creds}-w '\\n%{{http_code}}\\n' {url}; echo ----; done"
    )
    out = node(gw).run(cmd).stdout
    answers = []
    for chunk in out.split("----\n")[:rounds]:
        body, _, code = chunk.rstrip("\n").rpartition("\n")
        answers.append((int(code) if code.isdigit() else 0, body))
    return answers


def instances_serving(user: str = "demo", password: str = "demo-password", rounds: int = 3) -> dict[str, int]:
    """Every API instance of every gateway node, asked directly (not through HAProxy, from its own
    node) for the user's cluster list ``rounds`` times: instance -> how many answers were not 200."""
    bad = {}
    for gw in GATEWAYS:
        for port in API_PORTS:
            answers = node_get(gw, port, "/api/v1/clusters/", auth=(user, password), rounds=rounds)
            bad[f"{gw}:{port}"] = sum(code != 200 for code, _ in answers) + rounds - len(answers)
    return bad


def instance_healthy(gw: str, port: int) -> bool:
    """An API instance answers its health check (asked from its own node)."""
    [(code, body)] = node_get(gw, port)
    return code == 200 and body.strip().replace(" ", "") == '{"status":"pass"}'


_PROBE = r"""
import concurrent.futures, json, socket, sys
def probe(target):
    s = socket.socket()
    s.settimeout(TIMEOUT)
    try:
        s.connect((target[0], int(target[1])))
        return "open"
    except ConnectionRefusedError:
        return "refused"
    except socket.timeout:
        return "timeout"
    except OSError as e:
        return type(e).__name__
    finally:
        s.close()
targets = json.loads(sys.argv[1])
with concurrent.futures.ThreadPoolExecutor(64) as ex:
    found = list(ex.map(probe, targets))
print(json.dumps({f"{h}:{p}": r for (h, p), r in zip(targets, found)}))
"""


def tcp_probe(container: str, targets: Iterable[tuple[str, int]], timeout: float = 2.0) -> dict[str, str]:
    """TCP connects from inside ``container`` (plain python3, in parallel): "host:port" -> "open",
    "refused" (an RST: nothing listens, or a reject), "timeout" (dropped) or an error name."""
    script = _PROBE.replace("TIMEOUT", repr(timeout))
    targets = [list(t) for t in targets]
    proc = docker("exec", container, "python3", "-c", script, json.dumps(targets), timeout=60)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def health(address: str, timeout: float = 5.0) -> bool:
    return http_get(f"{address}/api/health", timeout) == (200, {"status": "pass"})


# --------------------------------------------------------------------------- nodes


def admin(host, args: str) -> str:
    out = host.run(f"{ADMIN} {args}")
    assert out.rc == 0, f"gatewayha-admin {args} failed on {host.backend.get_hostname()}: {out.stderr}"
    return out.stdout


def clusters(host, all_: bool = True) -> dict[str, dict]:
    """`gatewayha-admin clusters list [--all]` parsed: name -> {status, node, workers, target,
    reason} (the WORKERS column is running/target)."""
    return parse_clusters(admin(host, "clusters list" + (" --all" if all_ else "")))


def parse_clusters(listing: str) -> dict[str, dict]:
    rows = {}
    for line in listing.splitlines()[1:]:
        m = re.match(r"^([0-9a-f]{32})\s+(\S+)\s+(\S+)\s+(\S+)\s+(\d+)/(\d+)\s*(.*)$", line)
        if m:
            name, owner, status, node_, workers, target, reason = m.groups()
            rows[name] = {
                "owner": owner, "status": status, "node": node_, "workers": int(workers), "target": int(target),
                "reason": reason,
            }  # fmt: skip
    return rows


def nodes_alive(host) -> dict[str, bool]:
    out = {}
    for line in admin(host, "nodes").splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 3:
            out[parts[0]] = parts[2] == "yes"
    return out


def cluster_units(host, name: str) -> dict[str, dict]:
    """The cluster's transient units on this host: unit -> selected `systemctl show` properties."""
    listed = host.run(f"systemctl list-units --all --no-legend --plain 'gatewayha-{name}-*'").stdout
    units = {}
    for line in listed.splitlines():
        unit = line.split()[0] if line.split() else ""
        if not unit.endswith(".service"):
            continue
        props = host.run(
            f"systemctl show {unit} -p MainPID -p ActiveState -p CPUQuotaPerSecUSec -p MemoryMax -p Slice"
        ).stdout
        units[unit] = dict(p.split("=", 1) for p in props.splitlines() if "=" in p)
    return units


def sql(query: str) -> list[list[str]]:
    """Rows of a query on db1 (psql as postgres; `|`-separated fields). The test host itself
    is refused by pg_hba, as any host but the gateway nodes."""
    out = node("db1").run(
        f"runuser -u postgres -- psql -d gatewayha -XAt -F '|' -v ON_ERROR_STOP=1 -c {shlex.quote(query)}"
    )
    assert out.rc == 0, f"psql failed: {out.stderr}"
    return [line.split("|") for line in out.stdout.splitlines() if line]


def db_password() -> str:
    return node("db1").ansible.get_variables()["postgresql_db_password"]


def pgconnect_on(name: str, host: str, *params: str) -> dict:
    """One connection as the gatewayha role (its password) from node ``name`` to Postgres at
    ``host`` with more libpq ``params`` (KEY=VALUE), by shared/pgconnect.py in the gatewayha
    venv: {"connected": true, "select": 1, "ssl": ...} or {"connected": false, "error": ...}."""
    target = node(name)
    target.run("mkdir -p /tmp/molecule-probe")
    script = (SHARED / "pgconnect.py").read_text()
    out = target.run(
        f"cat > /tmp/molecule-probe/pgconnect.py <<'EOF'\n{script}EOF\n"
        f"PGPASSWORD={shlex.quote(db_password())} /opt/gatewayha/venv/bin/python /tmp/molecule-probe/pgconnect.py "
        f"{shlex.quote(host)} 5432 gatewayha gatewayha {' '.join(shlex.quote(p) for p in params)}"
    )
    assert out.stdout.strip(), out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    log(f"pg from {name} to {host} {' '.join(params)}: {result}")
    return result


def main_pid(host, unit: str) -> int:
    return int(host.run(f"systemctl show -p MainPID --value {unit}").stdout.strip() or 0)


def scheduler_units(host) -> set[str]:
    """Cluster names with an active scheduler unit on this host."""
    listed = host.run("systemctl list-units --state=active --no-legend --plain 'gatewayha-*-scheduler.service'").stdout
    return {m.group(1) for m in re.finditer(r"gatewayha-([0-9a-f]{32})-scheduler\.service", listed)}


def sni_routes(host) -> dict[str, str]:
    """HAProxy's live SNI map on this host: cluster name -> scheduler address."""
    out = host.run("echo 'show map /var/lib/gatewayha/maps/sni.map' | socat stdio /run/haproxy/admin.sock")
    assert out.rc == 0, out.stderr
    routes = {}
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1].startswith("daskgateway-"):
            routes[parts[1].removeprefix("daskgateway-")] = parts[2]
    return routes


def haproxy_servers(host) -> dict[str, str]:
    """be_api server -> status as HAProxy's `show stat` reports it (UP, DOWN, DRAIN, MAINT ...)."""
    out = host.run("echo 'show stat' | socat stdio /run/haproxy/admin.sock")
    assert out.rc == 0, out.stderr
    servers = {}
    for line in out.stdout.splitlines():
        f = line.split(",")
        if len(f) > 17 and f[0] == "be_api" and f[1] not in ("FRONTEND", "BACKEND"):
            servers[f[1]] = f[17]
    return servers


# --------------------------------------------------------------------------- docker


def docker(*args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed: {proc.stderr}")
    return proc


def vips_on(container: str) -> set[str]:
    """The VIPs a container holds right now (empty when it is down): one docker exec, ~50 ms."""
    proc = docker("exec", container, "ip", "-4", "-o", "addr", "show", timeout=10, check=False)
    if proc.returncode != 0:
        return set()
    held = set(re.findall(r"inet (\d+\.\d+\.\d+\.\d+)/", proc.stdout))
    return held & {VIP_A, VIP_B}


PARTITION_RULE_PRIORITY = 90  # before the main table's rule (32766)


def _blackhole(container: str, to: str, verb: str) -> None:
    docker("exec", container, "ip", "rule", verb, "priority", str(PARTITION_RULE_PRIORITY), "to", NODE_IP[to],
           "blackhole", timeout=10, check=verb == "add")  # fmt: skip


def partition(container: str, peers: Iterable[str]) -> None:
    """Cut `container` off from `peers` in both directions, VRRP (unicast here) included.

    A policy-routing blackhole rule on each side for the other's address: neither sends a
    packet to the other (an input rule would not do: the local table's rule, priority 0,
    delivers first). Unlike `docker network disconnect` the interface stays (it keeps its
    name, so keepalived and HAProxy carry on) and the host, where the test clients run,
    still reaches both sides: a partition between the nodes."""
    for peer in peers:
        _blackhole(container, peer, "add")
        _blackhole(peer, container, "add")


def heal(container: str, peers: Iterable[str]) -> None:
    """Undo partition(); safe after a partial one (a rule that is not there is skipped)."""
    for peer in peers:
        _blackhole(container, peer, "del")
        _blackhole(peer, container, "del")


def partitioned(container: str) -> bool:
    rules = docker("exec", container, "ip", "rule", "show", "priority", str(PARTITION_RULE_PRIORITY), timeout=10)
    return bool(rules.stdout.strip())


def running(container: str) -> bool:
    proc = docker("inspect", "-f", "{{.State.Running}}", container, check=False)
    return proc.stdout.strip() == "true"


if __name__ == "__main__":  # pragma: no cover - a manual probe
    log(json.dumps({g: sorted(vips_on(g)) for g in GATEWAYS}))
    sys.exit(0)
