"""Shared helpers of the benchmark: targets, statistics, processes and memory from /proc.

Runs under the bench venv (dask-gateway 2026.3.0 client) and, for the queue benchmark,
under the app venv: only the standard library here.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field


@dataclass
class Target:
    key: str  # "gatewayha" or "anchor"
    label: str
    address: str  # what users give Gateway()
    user: str
    password: str
    marker: str  # a path that appears in the cmdline/environment of this side's Dask processes
    service_pids: dict = field(default_factory=dict)  # component -> callable returning pids

    def gateway(self, asynchronous: bool = False):
        from dask_gateway import BasicAuth, Gateway

        return Gateway(self.address, auth=BasicAuth(self.user, self.password), asynchronous=asynchronous)


def gatewayha_target(key: str, label: str, state: str, port: str, api_ports: list[str], scheme="http") -> Target:
    """A gatewayha local stack (scripts/stack.sh) with its state dir and ports."""
    t = Target(
        key=key,
        label=label,
        address=f"{scheme}://127.0.0.1:{port}",
        user="demo",
        password=open(os.path.join(state, "demo-password")).read().strip(),
        marker=state.rstrip("/") + "/",
    )
    run = os.path.join(state, "run")
    t.service_pids = {
        "api": lambda: [p for port in api_ports for p in tree(pidfile(os.path.join(run, f"api-{port}.pid")))],
        "worker": lambda: [p for n in (1, 2) for p in tree(pidfile(os.path.join(run, f"worker-{n}.pid")))],
        "haproxy": lambda: tree(pidfile(os.path.join(run, "haproxy.pid"))),
        "postgres": lambda: tree(postmaster_pid(os.path.join(state, "pg", "data"))),
    }
    return t


def tls_target_from_env() -> Target:
    """The second gatewayha stack bench/run.sh starts with GATEWAYHA_TLS=1 for the https phase."""
    e = os.environ
    return gatewayha_target(
        "gatewayha_tls",
        "gatewayha (GATEWAYHA_TLS=1)",
        e["BENCH_TLS_STATE"],
        e["BENCH_TLS_PORT"],
        e["BENCH_TLS_API_PORTS"].split(),
        scheme="https",
    )


def targets_from_env() -> dict[str, Target]:
    """The two targets, described by bench/run.sh through the environment."""
    e = os.environ
    gha_state = e["BENCH_GHA_STATE"]
    anchor_dir = e["BENCH_ANCHOR_STATE"]
    gha = gatewayha_target("gatewayha", "gatewayha", gha_state, e["BENCH_GHA_PORT"], e["BENCH_GHA_API_PORTS"].split())
    anchor = Target(
        key="anchor",
        label="dask-gateway-server 2026.3.0",
        address=f"http://127.0.0.1:{e['BENCH_ANCHOR_PORT']}",
        user="demo",
        password=open(os.path.join(anchor_dir, "password")).read().strip(),
        marker=os.path.join(anchor_dir, "clusters") + "/",
    )
    anchor_pid = os.path.join(anchor_dir, "anchor.pid")
    anchor.service_pids = {
        # the server process itself and its Go proxy (its Dask children are counted apart)
        "server": lambda: [p for p in [pidfile(anchor_pid)] if p],
        "proxy": lambda: [c for c in children(pidfile(anchor_pid)) if b"dask-gateway-proxy" in cmdline(c)],
    }
    return {"gatewayha": gha, "anchor": anchor}


# ---------------------------------------------------------------- statistics


def pct(values, q: float) -> float | None:
    """Percentile with linear interpolation (q in 0..100); None for no values."""
    v = sorted(values)
    if not v:
        return None
    k = (len(v) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def median(values):
    return pct(values, 50)


def summary(values) -> dict:
    values = list(values)
    return {
        "n": len(values),
        "median": median(values),
        "p95": pct(values, 95),
        "p99": pct(values, 99),
        "max": max(values) if values else None,
        "min": min(values) if values else None,
    }


# ---------------------------------------------------------------- processes


def pidfile(path: str) -> int | None:
    try:
        pid = int(open(path).read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if os.path.exists(f"/proc/{pid}") else None


def postmaster_pid(datadir: str) -> int | None:
    return pidfile(os.path.join(datadir, "postmaster.pid"))


def _ppid(pid: int) -> int | None:
    try:
        stat = open(f"/proc/{pid}/stat").read()
        return int(stat[stat.rindex(")") + 2 :].split()[1])
    except (OSError, ValueError):
        return None


def all_pids() -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def children(pid: int | None) -> list[int]:
    if not pid:
        return []
    return [p for p in all_pids() if _ppid(p) == pid]


def is_dask(pid: int) -> bool:
    """A `dask scheduler` / `dask worker` process (started by a server, not part of it)."""
    parts = cmdline(pid).split(b"\0")
    return any(
        (a == b"dask" or a.endswith(b"/dask")) and b in (b"scheduler", b"worker")
        for a, b in zip(parts, parts[1:], strict=False)
    )


def tree(pid: int | None) -> list[int]:
    """pid and all its descendants, less Dask schedulers and workers (and theirs)."""
    if not pid:
        return []
    parents = {}
    for p in all_pids():
        pp = _ppid(p)
        if pp is not None:
            parents.setdefault(pp, []).append(p)
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        if p != pid and is_dask(p):
            continue
        out.append(p)
        todo.extend(parents.get(p, []))
    return out


def cmdline(pid: int) -> bytes:
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read()
    except OSError:
        return b""


def dask_procs(marker: str, seen: dict | None = None) -> dict[str, list[int]]:
    """This side's Dask scheduler and worker processes (found by a path in cmdline or environment).

    With ``seen`` (kept by the caller between calls), a process is classified once: a sampler
    does not read every Dask process's environment on every sweep."""
    out = {"scheduler": [], "worker": []}
    m = marker.encode()
    pids = all_pids()
    if seen is not None:
        for gone in set(seen) - set(pids):
            del seen[gone]
    for pid in pids:
        if seen is not None and pid in seen:
            if seen[pid]:
                out[seen[pid]].append(pid)
            continue
        kind = _dask_kind(pid, m)
        if kind is not False and seen is not None:
            seen[pid] = kind
        if kind:
            out[kind].append(pid)
    return out


def _dask_kind(pid: int, marker: bytes) -> str | None | bool:
    """ "scheduler", "worker", None (not this side's Dask process) or False (could not tell yet)."""
    cmd = cmdline(pid)
    if not cmd:
        return False  # gone, or not exec'd yet
    if b"dask" not in cmd:
        return None
    parts = cmd.split(b"\0")
    kind = "scheduler" if b"scheduler" in parts else "worker" if b"worker" in parts else None
    if kind is None:
        return None
    try:
        env = open(f"/proc/{pid}/environ", "rb").read()
    except OSError:
        return False
    return kind if marker in cmd or marker in env else None


def procs_of(marker: str, names) -> list[int]:
    """This side's Dask processes that belong to any of the named clusters."""
    names = [n.encode() for n in names if n]
    if not names:
        return []
    out = []
    for pid in sum(dask_procs(marker).values(), []):
        try:
            blob = cmdline(pid) + open(f"/proc/{pid}/environ", "rb").read()
        except OSError:
            continue
        if any(n in blob for n in names):
            out.append(pid)
    return out


def wait_gone(target: Target, names, timeout: float = 60.0) -> int:
    """Wait until no Dask process of the named clusters is left; returns how many remain."""
    end = time.monotonic() + timeout
    while True:
        left = len(procs_of(target.marker, names))
        if left == 0 or time.monotonic() > end:
            return left
        time.sleep(0.1)


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (0 if gone)."""
    try:
        stat = open(f"/proc/{pid}/stat").read()
        fields = stat[stat.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, ValueError, IndexError):
        return 0.0


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat (busy = all but idle and iowait)."""
    fields = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    total = sum(fields[:8])  # guest time is already counted in user/nice
    return total - fields[3] - fields[4], total


def _proc_kib(path: str, key: str) -> int:
    """The kB value of the line starting with ``key`` in a /proc file (0 if gone)."""
    try:
        for line in open(path):
            if line.startswith(key):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_kib(pid: int) -> int:
    return _proc_kib(f"/proc/{pid}/status", "VmRSS:")


def pss_kib(pid: int) -> int:
    return _proc_kib(f"/proc/{pid}/smaps_rollup", "Pss:")


def memory(target: Target, pss: bool = True) -> dict:
    """RSS and PSS (MiB) of each service component of a target (PSS None unless ``pss``: it walks
    the process's page tables under its mmap lock)."""
    out = {}
    for comp, fn in target.service_pids.items():
        pids = fn()
        out[comp] = {
            "procs": len(pids),
            "rss_mib": sum(rss_kib(p) for p in pids) / 1024,
            "pss_mib": sum(pss_kib(p) for p in pids) / 1024 if pss else None,
        }
    return out


def wait_dask_procs(target: Target, at_most: int = 0, timeout: float = 60.0) -> int:
    """Wait until this side runs at most `at_most` Dask processes; returns how many remain."""
    end = time.monotonic() + timeout
    while True:
        procs = dask_procs(target.marker)
        n = len(procs["scheduler"]) + len(procs["worker"])
        if n <= at_most or time.monotonic() > end:
            return n
        time.sleep(0.2)


def write_json(path: str, data) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, default=str)
    os.replace(tmp, path)
