"""Small helpers shared by the test modules (importable as ``helpers``: tests/ is on sys.path)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition", interval: float = 0.1):
    """Poll ``predicate`` until it returns something truthy, and return that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def make_environment(prefix: Path) -> Path:
    """A software environment at ``prefix`` (gatewayha.environments): a venv of its own
    (``python -m venv --without-pip``: its own prefix and bin/python) that imports the project's
    packages (Dask, dask-gateway, gatewayha_preload) after its own through a ``.pth`` file.
    Returns its site dir (packages installed there shadow the project's)."""
    import sysconfig

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(prefix)], check=True, timeout=60)
    site = prefix / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    project_site = sysconfig.get_paths()["purelib"]
    # addsitedir, not a plain path line: the project's own .pth files (the editable gatewayha) run too.
    (site / "zz-project.pth").write_text(f"import site; site.addsitedir({project_site!r})\n")
    return site


def alive(pid: int) -> bool:
    """A process that exists and is not a zombie (a zombie is gone, only not yet reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


def children(pid: int) -> list[int]:
    """The PIDs of a process's live children (its main thread's), in the order the kernel lists
    them. The kernel also lists a child that exited and is not yet reaped: left out (a gunicorn
    master reaps its old worker a moment after a reload; under load that moment was seen)."""
    try:
        listed = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    return [int(c) for c in listed if alive(int(c))]


def plain_http_comm(host: str, port: int, token: str, msg: dict) -> int | None:
    """POST ``msg`` with ``token`` to a scheduler's ``/api/comm`` in plain HTTP (what the gateway
    sent before the control API was TLS): the HTTP status, or None when no HTTP answer came."""
    import http.client
    import json

    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request(
            "POST",
            "/api/comm",
            body=json.dumps(msg),
            headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
        )
        return conn.getresponse().status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def datagrams(sock, seconds: float) -> list[bytes]:
    """Every datagram ``sock`` (a socket with a short timeout) receives within ``seconds``."""
    got, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            got.append(sock.recv(256))
        except TimeoutError:
            pass
    return got


@contextlib.contextmanager
def real_api(tmp_path: Path, bind: str, *args: str, **env: str) -> Iterator[subprocess.Popen]:
    """A real gatewayha-api (granian, or what ``args`` such as ``--wsgi gunicorn`` choose, + the
    app) on ``bind``, configured by ``env`` only (nothing of this process's GATEWAYHA_* settings),
    its output in ``tmp_path/api.log``; stopped (TERM, then KILL) with its whole process group at
    the end."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAYHA_")}
    full.update(env)
    with open(tmp_path / "api.log", "wb") as log:
        api = subprocess.Popen(
            [sys.executable, "-m", "gatewayha.api.serve", "--bind", bind, *args],
            env=full,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield api
        finally:
            try:
                os.killpg(api.pid, signal.SIGTERM)
                api.wait(30)
            except ProcessLookupError:
                pass  # stopped already (by the test)
            except subprocess.TimeoutExpired:
                os.killpg(api.pid, signal.SIGKILL)
                api.wait(10)
