"""Local stacks of their own (plain: ports 18000/18101/18102; TLS: +200; state in temp dirs) for the e2e tests."""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import make_environment

ROOT = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"  # a zombie is gone


def _processes_mentioning(text: str) -> list[str]:
    """Live processes whose command line or environment names this stack's state dir."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            env = (d / "environ").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if (text in cmd or text in env) and _alive(int(d.name)):
            out.append(f"{d.name}: {cmd[:120]}")
    return out


def _free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@dataclass
class Stack:
    state: Path
    port: int
    api_ports: list[int]
    env: dict
    up_output: str = ""

    @property
    def tls(self) -> bool:
        return self.env.get("GATEWAYHA_TLS") == "1"

    @property
    def address(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def run(self, *args: str, check: bool = True, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(ROOT / "scripts" / "stack.sh"), *args],
            env={**self.env, **env},
            check=check,
            capture_output=True,
            text=True,
            timeout=300,  # up's own waits are bounded; this bounds anything else
        )

    def served_by(self, port: int) -> str:
        """The Server header (granian, gunicorn) of an API instance's answer, asked directly."""
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", "/api/version")
            response = conn.getresponse()
            response.read()
            return response.getheader("Server", "")
        finally:
            conn.close()

    def pid(self, name: str) -> int:
        return int((self.state / "run" / f"{name}.pid").read_text())

    def pids(self) -> list[int]:
        """The PIDs in the stack's own pidfiles (API instances, job runners, HAProxy)."""
        return [int(p.read_text()) for p in (self.state / "run").glob("*.pid") if p.read_text().strip().isdigit()]

    def assert_down(self, down: subprocess.CompletedProcess, started: list[int]) -> None:
        """`stack.sh down` succeeded and stopped everything `up` started (schedulers and
        workers included, and any process left behind by a killed one): none alive, ports free."""
        assert down.returncode == 0, f"{down.stdout}\n{down.stderr}"
        alive = [pid for pid in started if _alive(pid)]
        assert alive == [], f"still running after stack.sh down: {alive}"
        leftovers = _processes_mentioning(str(self.state))
        assert leftovers == [], f"processes of this stack still running after down: {leftovers}"
        busy = [p for p in [self.port, *self.api_ports] if not _free(p)]
        assert busy == [], f"ports still in use after down: {busy}"

    def db(self):
        import tomllib

        import psycopg
        from psycopg.rows import dict_row

        dsn = tomllib.loads((self.state / "gatewayha.toml").read_text())["database"]["dsn"]
        return psycopg.connect(dsn, autocommit=True, row_factory=dict_row)

    def credentials(self) -> tuple[str, str]:
        return "demo", (self.state / "demo-password").read_text().strip()

    def haproxy(self, command: str) -> str:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(self.state / "run" / "haproxy.sock"))
            s.sendall(command.encode() + b"\n")
            out = b""
            while chunk := s.recv(65536):
                out += chunk
        return out.decode()


@contextlib.contextmanager
def _running_stack(tmp_path_factory, base: int, label: str, **extra_env: str):
    ports = [base, base + 101, base + 102]
    busy = [p for p in ports if not _free(p)]
    if busy:
        pytest.fail(f"ports {busy} are in use; set GATEWAYHA_E2E_PORT")
    state = tmp_path_factory.mktemp(label)
    env = {
        **os.environ,
        "GATEWAYHA_STATE": str(state),
        "GATEWAYHA_PORT": str(ports[0]),
        "GATEWAYHA_API_PORTS": f"{ports[1]} {ports[2]}",
        "GATEWAYHA_EXAMPLE": "0",
        # Faster full route resync, so drift repair is observable in a test.
        "GATEWAYHA_HAPROXY__RESYNC_INTERVAL": "2",
        # One pre-started scheduler per node: creates with default options take it,
        # others (custom options) start a scheduler; the e2e tests cover both paths.
        "GATEWAYHA_CLUSTER__WARM_POOL_SIZE": "1",
        "GATEWAYHA_WSGI": "granian",  # whatever the caller's shell says; the TLS stack: gunicorn
        **extra_env,
    }
    s = Stack(state, ports[0], ports[1:], env)
    up = s.run("up", check=False)
    s.up_output = up.stdout
    if up.returncode != 0:
        s.run("down", check=False)
        pytest.fail(f"stack up failed:\n{up.stdout}\n{up.stderr}")
    try:
        yield s
    finally:
        started = s.pids()
        down = s.run("down", check=False)
        for f in sorted((state / "log").glob("*.log")):
            text = f.read_text(errors="replace")
            if "Traceback" in text:
                print(f"--- {f.name} contains a traceback:\n{text[-4000:]}")
        s.assert_down(down, started)


def e2e_base_port() -> int:
    return int(os.environ.get("GATEWAYHA_E2E_PORT", "18000"))


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    """The plain-HTTP stack (make up): most e2e tests use it. Two software environments are
    declared: "default", the project's venv (what node.python would be), and "alt", a venv of its
    own (helpers.make_environment) that clusters may pick."""
    alt = tmp_path_factory.mktemp("envs") / "alt"
    make_environment(alt)
    environments = {
        "GATEWAYHA_ENVIRONMENTS__DEFAULT__PREFIX": sys.prefix,
        "GATEWAYHA_ENVIRONMENTS__ALT__PREFIX": str(alt),
    }
    with _running_stack(tmp_path_factory, e2e_base_port(), "stack", **environments) as s:
        yield s


@pytest.fixture(scope="session")
def tls_stack(tmp_path_factory):
    """A second stack as `make up TLS=1 WSGI=gunicorn` starts it: HTTPS with a CA of its own under
    its state dir, and the API instances under gunicorn (the plain stack's run granian): the
    stock client's tests over HTTPS exercise gunicorn."""
    base = e2e_base_port() + 200
    with _running_stack(tmp_path_factory, base, "tls-stack", GATEWAYHA_TLS="1", GATEWAYHA_WSGI="gunicorn") as s:
        yield s


@pytest.fixture
def gateway(stack):
    from dask_gateway import BasicAuth, Gateway

    user, password = stack.credentials()
    gw = Gateway(stack.address, auth=BasicAuth(user, password))
    yield gw
    for report in gw.list_clusters():
        gw.stop_cluster(report.name)
    gw.close()
