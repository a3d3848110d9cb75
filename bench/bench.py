"""The benchmark driver: gatewayha and dask-gateway-server 2026.3.0 side by side, same client code.

Run by bench/run.sh with the bench venv (dask-gateway 2026.3.0 client), which starts both
servers and describes them in the environment (see common.targets_from_env). Every phase
alternates the two sides (anchor first on even repetitions, gatewayha first on odd ones)
and each side's ratio is computed per repetition, then the median of the ratios is reported.

  bench.py --out results.json [--phases a,sentinel,d,b20,b100,c,e,f,g,https,scale] [--tag warm]

Phases:
  a     sequential create -> RUNNING (new_cluster returns; then shutdown), N per repetition
  d     authenticated GET /api/v1/clusters/{name}: throughput and p99 at fixed concurrency
  b20   20 concurrent creates;  b100: 100 concurrent creates, with /api/health and GET-cluster
        probes (idle vs storm) and service memory sampled during the storm
  c     20 concurrent create + scale(1) + a small compute
  e     task round trip and 1000-task batches: through the gateway's proxy vs direct to the scheduler
  f     route publish latency (gatewayha): HAProxy's sni.map polled every 2 ms vs clusters.started_at
  g     job queue claims/s (gatewayha.jobs.queue against the stack's Postgres, app venv)
  https HTTPS vs HTTP on gatewayha (the plain stack and a second one with GATEWAYHA_TLS=1):
        GET throughput (wrk), create -> RUNNING, task round trip (bench/run.sh runs it apart,
        with SSL_CERT_FILE set)
  scale scale(10**12) on a running cluster: /api/health p99 right after, on each side (last:
        the anchor is killed after it, if it no longer answers)
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import multiprocessing as mp
import operator
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import traceback
from contextlib import contextmanager

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import (  # noqa: E402
    Target,
    cpu_seconds,
    dask_procs,
    machine_busy,
    median,
    memory,
    pct,
    pidfile,
    rss_kib,
    summary,
    targets_from_env,
    tls_target_from_env,
    tree,
    wait_gone,
    write_json,
)

PY = sys.executable
APP_PY = os.environ.get("BENCH_APP_PYTHON", "/work/main/.venv/bin/python")
REPS = int(os.environ.get("BENCH_REPS", "3"))
REPS_B100 = int(os.environ.get("BENCH_REPS_B100", "1"))
REPS_C = int(os.environ.get("BENCH_REPS_C", "1"))
REPS_B20 = int(os.environ.get("BENCH_REPS_B20", "2"))
N_SEQ = int(os.environ.get("BENCH_N_SEQ", "10"))
N_ROUTES = int(os.environ.get("BENCH_N_ROUTES", "20"))
STORM_TIMEOUT = float(os.environ.get("BENCH_STORM_TIMEOUT", "240"))
MIN_AVAILABLE_MIB = int(os.environ.get("BENCH_MIN_AVAILABLE_MIB", "2048"))
T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[bench {time.monotonic() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def order(rep: int, targets: dict[str, Target]) -> list[Target]:
    return [targets["anchor"], targets["gatewayha"]] if rep % 2 == 0 else [targets["gatewayha"], targets["anchor"]]


def err(exc: BaseException) -> str:
    """A short description of a client error (aiohttp's repr carries every header)."""
    status = getattr(exc, "status", None)
    if status is not None:
        url = str(getattr(getattr(exc, "request_info", None), "real_url", ""))
        return f"{type(exc).__name__}: HTTP {status} {getattr(exc, 'message', '')} {url}"[:300]
    return repr(exc)[:300]


def ratio(a, b):
    return None if a in (None, 0) or b is None else b / a


def mem_available_mib() -> int:
    for line in open("/proc/meminfo"):
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) // 1024
    return 0


async def stop_strays(t: Target, keep: set[str]) -> list[str]:
    """Stop every PENDING/RUNNING cluster of this side except `keep` (e.g. after client timeouts)."""
    gw = t.gateway(asynchronous=True)
    names = []
    try:
        for rep in await gw.list_clusters():
            if rep.name not in keep:
                await gw.stop_cluster(rep.name)
                names.append(rep.name)
    finally:
        await gw.close()
    return names


def ensure_sentinels(targets, sentinels: dict) -> None:
    """One RUNNING cluster per side, for the GET measurements (re-created if it died, e.g. in a storm)."""
    for t in targets.values():
        gw = t.gateway()
        try:
            name = sentinels.get(t.key)
            ok = False
            if name:
                try:
                    ok = gw.get_cluster(name).status.name == "RUNNING"
                except Exception:  # noqa: BLE001
                    ok = False
            if not ok:
                c = gw.new_cluster()
                sentinels[t.key] = c.name
                c.close(shutdown=False)
                if name:
                    log(f"{t.key}: sentinel {name} was gone, now {c.name}")
        finally:
            gw.close()


# ---------------------------------------------------------------- probes and samplers


class Prober:
    """load.py probe in its own process: /api/health and GET cluster at a fixed interval."""

    def __init__(
        self,
        t: Target,
        cluster: str | None,
        interval=0.05,
        timeout=5.0,
        seconds=600.0,
        health_only=False,
        baseline: str | None = None,
    ):
        urls = ["--url", f"{t.address}/api/health"]
        if cluster and not health_only:
            urls += ["--url", f"{t.address}/api/v1/clusters/{cluster}"]
        self.urls = {"health": f"{t.address}/api/health", "get": f"{t.address}/api/v1/clusters/{cluster}"}
        if baseline:
            urls += ["--url", baseline]
            self.urls["baseline"] = baseline
        self.p = subprocess.Popen(
            [
                PY,
                os.path.join(HERE, "load.py"),
                "probe",
                *urls,
                f"--user={t.user}",
                f"--password={t.password}",
                "--interval",
                str(interval),
                "--timeout",
                str(timeout),
                "--seconds",
                str(seconds),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.p.stderr.readline()  # "ready"

    def stop(self) -> dict:
        self.p.send_signal(signal.SIGTERM)
        out, errout = self.p.communicate(timeout=60)
        if not out.strip():
            log(f"prober printed nothing (rc {self.p.returncode}): {errout[-1500:]}")
        res = json.loads(out) if out.strip() else {}
        return {k: res.get(u) for k, u in self.urls.items() if u in res}


class BaselineServer:
    """`load.py serve`: a trivial HTTP server in its own process, probed beside the gateway during a
    storm, so the tables show what the machine does to any process's latency meanwhile."""

    def __init__(self, seconds=3600.0):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/"
        self.p = subprocess.Popen(
            [PY, os.path.join(HERE, "load.py"), "serve", "--url", self.url, "--seconds", str(seconds)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.p.stderr.readline()  # "ready"

    def stop(self) -> None:
        self.p.send_signal(signal.SIGTERM)
        try:
            self.p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()


# 600 samples per endpoint: with 10 s (200 samples) the idle p99 was the second-slowest request
# and varied 3.0-7.9 ms between runs on this machine, which moved the storm's ratio more than
# the storm did.
STORM_IDLE_S = 30


class StormProbes:
    """The storm's latency windows, each with the baseline server probed alongside: *idle* (the
    STORM_IDLE_S before; measured on construction), *storm* (from the first create until every create
    has returned: the start storm; ended by `started`) and *cleanup* (stopping every cluster
    until its processes are gone; ended by `finish`). Results go into `out`."""

    def __init__(self, t: Target, cluster: str | None, out: dict):
        self.t, self.cluster, self.out = t, cluster, out
        self.baseline = BaselineServer()
        time.sleep(2)
        self.pr = self._prober()
        time.sleep(STORM_IDLE_S)
        out["idle"] = self.pr.stop()
        out["mem_rest"] = memory(t)
        self.pr = self._prober()

    def _prober(self) -> Prober:
        return Prober(self.t, self.cluster, baseline=self.baseline.url)

    def started(self) -> None:
        self.out["storm"] = self.pr.stop()
        self.pr = self._prober()

    def finish(self) -> None:
        self.out["cleanup"] = self.pr.stop()
        self.baseline.stop()


PSS_EVERY = 10  # sweeps (every 5 s at the default period)


class MemSampler(threading.Thread):
    """Peak RSS per service component, the side's Dask processes, and the machine's MemAvailable."""

    def __init__(self, t: Target, period=0.5, guard=None):
        super().__init__(daemon=True)
        self.t, self.period, self.guard = t, period, guard
        self.stop_ev = threading.Event()
        self.peak: dict = {}
        self.dask_peak = {"procs": 0, "rss_mib": 0.0}
        self.min_available = mem_available_mib()

    def run(self):
        # The sampler must not show in the latency the probes measure. Sampling everything every
        # 0.5 s at nice 0 raised a trivial HTTP server's p99 in a 100-cluster storm from 4.5 to
        # 19.6 ms: PSS (smaps_rollup) walks each process's page tables holding its mmap lock,
        # and every sweep read every Dask process's environment. Now: nice 19, PSS every
        # PSS_EVERY sweeps, each Dask process classified once.
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        seen: dict = {}
        sweep = 0
        while not self.stop_ev.wait(self.period):
            for comp, m in memory(self.t, pss=sweep % PSS_EVERY == 0).items():
                cur = self.peak.setdefault(comp, {"rss_mib": 0.0, "pss_mib": 0.0, "procs": 0})
                for k in ("rss_mib", "pss_mib", "procs"):
                    if m[k] is not None:
                        cur[k] = max(cur[k], m[k])
            sweep += 1
            procs = dask_procs(self.t.marker, seen)
            pids = procs["scheduler"] + procs["worker"]
            rss = sum(rss_kib(p) for p in pids) / 1024
            if rss > self.dask_peak["rss_mib"]:
                self.dask_peak = {"procs": len(pids), "schedulers": len(procs["scheduler"]), "rss_mib": rss}
            avail = mem_available_mib()
            self.min_available = min(self.min_available, avail)
            if self.guard and avail < MIN_AVAILABLE_MIB:
                self.guard.set()

    def stop(self) -> dict:
        self.stop_ev.set()
        self.join(timeout=10)
        return {"peak": self.peak, "dask_peak": self.dask_peak, "min_mem_available_mib": self.min_available}


# ---------------------------------------------------------------- (a) sequential creates


async def one_create(t: Target) -> float | str:
    """One new Gateway's new_cluster() until it returns (seconds), or the error; then shutdown()
    and a wait until the scheduler process is gone."""
    gw = t.gateway(asynchronous=True)
    t0 = time.perf_counter()
    try:
        cluster = await asyncio.wait_for(gw.new_cluster(), 120)
    except Exception as exc:  # noqa: BLE001
        await gw.close()
        return err(exc)
    dt = time.perf_counter() - t0
    name = cluster.name
    await cluster.shutdown()
    await gw.close()
    await asyncio.to_thread(wait_gone, t, [name], 30)
    return dt


async def seq_creates(t: Target, n: int, warmup: bool) -> dict:
    times, errors = [], []
    for i in range(n + (1 if warmup else 0)):
        r = await one_create(t)
        if isinstance(r, str):
            errors.append(r)
        elif i > 0 or not warmup:
            times.append(r)
    await stop_strays(t, set())
    return {"times": times, "errors": errors, **summary(times)}


def phase_a(targets, results, tag=""):
    key = "a" + tag
    runs = {k: [] for k in targets}
    ratios = []
    for rep in range(REPS):
        per = {}
        for t in order(rep, targets):
            r = asyncio.run(seq_creates(t, N_SEQ, warmup=(rep < 2)))
            log(f"(a{tag}) rep {rep} {t.key}: median {r['median']} p95 {r['p95']} errors {len(r['errors'])}")
            runs[t.key].append(r)
            per[t.key] = r["median"]
        ratios.append(ratio(per["anchor"], per["gatewayha"]))
    out = {k: pooled(v) for k, v in runs.items()}
    out["ratio_median"] = median([x for x in ratios if x is not None])
    out["ratios"] = ratios
    results[key] = out


def pooled(runs: list[dict]) -> dict:
    times = [x for r in runs for x in r["times"]]
    return {
        **summary(times),
        "run_medians": [r["median"] for r in runs],
        "errors": sum(len(r["errors"]) for r in runs),
        "error_samples": [e for r in runs for e in r["errors"]][:3],
    }


# ---------------------------------------------------------------- (b)/(c) concurrent creates


async def storm(
    t: Target, n: int, work: bool, keep: set[str], guard: threading.Event | None = None, on_started=None
) -> dict:
    """n concurrent new_cluster() calls (and with `work`, scale + compute); then the clean-up.
    `on_started` (blocking) runs between the two, when every call has returned."""
    start = time.perf_counter()
    clusters, clients = [], []

    async def one(i):
        gw = t.gateway(asynchronous=True)
        try:
            cluster = await asyncio.wait_for(gw.new_cluster(), STORM_TIMEOUT)
        except Exception as exc:  # noqa: BLE001
            await gw.close()
            return None, None, err(exc)
        created = time.perf_counter() - start
        clusters.append(cluster)
        await gw.close()
        if not work:
            return created, None, None
        try:

            async def compute():
                await cluster.scale(1)
                client = await cluster.get_client(set_as_default=False)
                clients.append(client)
                await client.wait_for_workers(1)
                assert await client.submit(sum, [1, 2, 3]) == 6

            await asyncio.wait_for(compute(), STORM_TIMEOUT)
        except Exception as exc:  # noqa: BLE001
            return created, None, "compute: " + err(exc)
        return created, time.perf_counter() - start, None

    tasks = [asyncio.ensure_future(one(i)) for i in range(n)]
    if guard is not None:

        async def watch():
            while not all(x.done() for x in tasks):
                if guard.is_set():
                    log(f"memory guard: MemAvailable < {MIN_AVAILABLE_MIB} MiB, cancelling the storm")
                    for x in tasks:
                        x.cancel()
                    return
                await asyncio.sleep(0.2)

        asyncio.ensure_future(watch())
    outs = await asyncio.gather(*tasks, return_exceptions=True)
    total = time.perf_counter() - start
    if on_started is not None:
        await asyncio.to_thread(on_started)
    created = [o[0] for o in outs if isinstance(o, tuple) and o[0] is not None]
    done = [o[1] for o in outs if isinstance(o, tuple) and o[1] is not None]
    errors = [o[2] if isinstance(o, tuple) else err(o) for o in outs if not isinstance(o, tuple) or o[2]]
    # clean up: every client, every cluster; wait until the processes are gone
    for c in clients:
        try:
            await asyncio.wait_for(c.close(), 30)
        except Exception:  # noqa: BLE001
            pass
    t_stop = time.perf_counter()
    names = [c.name for c in clusters]
    await asyncio.gather(*(asyncio.wait_for(c.shutdown(), 60) for c in clusters), return_exceptions=True)
    names += await stop_strays(t, keep)
    left = await asyncio.to_thread(wait_gone, t, names, 180)
    return {
        "n": n,
        "create": summary(created),
        "done": summary(done) if work else None,
        "total_s": total,
        "errors": len(errors),
        "error_samples": errors[:3],
        "stop_all_s": time.perf_counter() - t_stop,
        "procs_left": left,
    }


def phase_storm(targets, results, n: int, work: bool, reps: int, sentinels: dict, probes=False):
    key = f"c{n}" if work else f"b{n}"
    runs = {k: [] for k in targets}
    ratios = []
    for rep in range(reps):
        per = {}
        for t in order(rep, targets):
            extra = {}
            windows = StormProbes(t, sentinels.get(t.key), extra) if probes else None
            guard = threading.Event()
            sampler = MemSampler(t, guard=guard)
            sampler.start()
            on_started = windows.started if windows else None
            r = asyncio.run(storm(t, n, work, keep={sentinels.get(t.key)}, guard=guard, on_started=on_started))
            mem = sampler.stop()
            if windows:
                windows.finish()
            r.update(extra, mem=mem)
            runs[t.key].append(r)
            per[t.key] = r["create"]["median"]
            log(
                f"({key}) rep {rep} {t.key}: create median {r['create']['median']} max {r['create']['max']} "
                f"total {r['total_s']:.1f}s errors {r['errors']} {r['error_samples'][:1]}"
            )
        ratios.append(ratio(per["anchor"], per["gatewayha"]))
    results[key] = {"runs": runs, "ratio_median": median([x for x in ratios if x is not None]), "ratios": ratios}


# ---------------------------------------------------------------- (d) GET throughput


WRK_CONNECTIONS = 16


def session_cookie(url: str, user: str, password: str) -> str:
    """Log in once with Basic credentials and return the session cookie the server sets (what the
    stock client's cookie jar sends from then on)."""
    import base64
    import urllib.request

    basic = base64.b64encode(f"{user}:{password}".encode()).decode()
    req = urllib.request.Request(url, headers={"Authorization": f"Basic {basic}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        cookie = r.headers.get("Set-Cookie")
    if not cookie:
        raise RuntimeError(f"{url}: no session cookie after Basic authentication")
    return cookie.split(";", 1)[0]


def _load(url: str, seconds: float, cookie: str | None = None) -> dict:
    """wrk: 16 keep-alive connections on 2 threads for `seconds`, every request with the same
    session cookie (over https://, one TLS handshake per connection: wrk does not verify the
    certificate). A load generator in C: the earlier Python one (http.client, 16 threads) used
    most of a core itself and saturated before the anchor did (bench/profile.md, finding 16)."""
    if not url.startswith(("http://127.0.0.1:", "https://127.0.0.1:")):
        raise ValueError(f"load only goes to 127.0.0.1, not {url}")
    cmd = ["wrk", "-t2", f"-c{WRK_CONNECTIONS}", f"-d{seconds:g}s", "-s", os.path.join(HERE, "wrk_report.lua")]
    if cookie:
        cmd += ["-H", f"Cookie: {cookie}"]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, timeout=seconds + 60)
    line = next((x for x in out.stdout.splitlines() if x.startswith("{")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary (rc {out.returncode}): {out.stdout[-800:]} {out.stderr[-800:]}")
    w = json.loads(line)
    bad = w["errors"] + w["status_errors"]
    return {
        "n": w["n"],
        "errors": bad,
        "seconds": w["seconds"],
        "rps": (w["n"] - w["status_errors"]) / w["seconds"] if w["seconds"] > 0 else None,
        "p50_ms": w["p50_us"] / 1000,
        "p99_ms": w["p99_us"] / 1000,
        "max_ms": w["max_us"] / 1000,
        "concurrency": WRK_CONNECTIONS,
    }


def phase_d(targets, results, sentinels, seconds=5.0):
    """GET cluster at fixed concurrency; then, as a ceiling, `/api/version` (no authentication, no
    database, a constant answer): what the server stack itself serves on this machine."""
    runs = {k: [] for k in targets}
    ceiling = {k: [] for k in targets}
    ratios = []
    for rep in range(REPS):
        per = {}
        for t in order(rep, targets):
            url = f"{t.address}/api/v1/clusters/{sentinels[t.key]}"
            r = _load(url, seconds, session_cookie(url, t.user, t.password))
            runs[t.key].append(r)
            per[t.key] = r["rps"]
            log(f"(d) rep {rep} {t.key}: {r['rps']:.0f} req/s p99 {r['p99_ms']:.1f} ms errors {r['errors']}")
            c = _load(f"{t.address}/api/version", seconds)
            ceiling[t.key].append(c)
            log(f"(d) rep {rep} {t.key} /api/version: {c['rps']:.0f} req/s errors {c['errors']}")
        ratios.append(ratio(per["anchor"], per["gatewayha"]))
    results["d"] = {
        k: {
            "rps": median([r["rps"] for r in v]),
            "p50_ms": median([r["p50_ms"] for r in v]),
            "p99_ms": median([r["p99_ms"] for r in v]),
            "errors": sum(r["errors"] for r in v),
            "runs": v,
            "version_rps": median([c["rps"] for c in ceiling[k]]),
            "version_errors": sum(c["errors"] for c in ceiling[k]),
        }
        for k, v in runs.items()
    }
    results["d"]["ratio_median"] = median([x for x in ratios if x is not None])
    results["d"]["ratios"] = ratios


# ---------------------------------------------------------------- (e) task round trips


@contextmanager
def direct_client(addr: str, security):
    from distributed import Client
    from distributed.security import Security

    with tempfile.TemporaryDirectory() as d:
        cert, key = os.path.join(d, "tls.crt"), os.path.join(d, "tls.key")
        with open(cert, "w") as f:
            f.write(security.tls_cert)
        with open(key, "w") as f:
            f.write(security.tls_key)
        sec = Security(tls_ca_file=cert, tls_client_cert=cert, tls_client_key=key, require_encryption=True)
        client = Client(addr, security=sec, set_as_default=False, timeout=30)
        try:
            yield client
        finally:
            client.close()


E_RTT_PAIRS = 300


def task_rtt(client, n=200) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        client.submit(operator.add, i, 1, pure=False).result()
        out.append(time.perf_counter() - t0)
    return out


def task_batch(client, n=1000) -> float:
    t0 = time.perf_counter()
    futs = client.map(operator.add, range(n), [1] * n, pure=False)
    client.gather(futs)
    dt = time.perf_counter() - t0
    del futs
    return dt


def phase_e(targets, results, sentinels):
    out = {}
    for t in targets.values():
        gw = t.gateway()
        cluster = gw.new_cluster()
        cluster.scale(1)
        proxied = cluster.get_client(set_as_default=False)
        proxied.wait_for_workers(1, timeout=120)
        addr = proxied.scheduler_info()["address"]
        rtt = {"proxy": [], "direct": []}
        batch = {"proxy": [], "direct": []}
        with direct_client(addr, cluster.security) as direct:
            clients = {"proxy": proxied, "direct": direct}
            for c in clients.values():  # warm up
                task_rtt(c, 20)
                task_batch(c, 200)
            # Round trips interleave one by one (proxy, direct, direct, proxy, …): the
            # machine's load drifts over seconds, and in blocks of 100 that drift (±10 %
            # between runs) was larger than the ~0.1 ms HAProxy adds to a ~13 ms round trip.
            for i in range(E_RTT_PAIRS):
                for via in ("proxy", "direct") if i % 2 == 0 else ("direct", "proxy"):
                    rtt[via].extend(task_rtt(clients[via], 1))
            for rep in range(2):
                for via in ("proxy", "direct") if rep % 2 == 0 else ("direct", "proxy"):
                    batch[via].append(task_batch(clients[via], 1000))
        proxied.close()
        name = cluster.name
        cluster.shutdown()
        gw.close()
        wait_gone(t, [name], 60)
        r = {}
        for via in ("proxy", "direct"):
            r[via] = {
                "rtt_median_ms": median(rtt[via]) * 1000,
                "rtt_p99_ms": pct(rtt[via], 99) * 1000,
                "batch_median_s": median(batch[via]),
                "batch_tasks_per_s": 1000 / median(batch[via]),
            }
        r["rtt_overhead"] = r["proxy"]["rtt_median_ms"] / r["direct"]["rtt_median_ms"] - 1
        r["batch_overhead"] = r["proxy"]["batch_median_s"] / r["direct"]["batch_median_s"] - 1
        r["scheduler_address"] = addr
        out[t.key] = r
        log(
            f"(e) {t.key}: rtt proxy {r['proxy']['rtt_median_ms']:.2f} ms direct {r['direct']['rtt_median_ms']:.2f} ms"
            f" ({r['rtt_overhead']:+.1%}); batch proxy {r['proxy']['batch_median_s']:.3f}s direct "
            f"{r['direct']['batch_median_s']:.3f}s ({r['batch_overhead']:+.1%})"
        )
    results["e"] = out


# ---------------------------------------------------------------- (f) route publish latency


def show_map_keys(sock_path: str, map_path: str) -> set[str]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(2)
    s.connect(sock_path)
    s.sendall(f"show map {map_path}\n".encode())
    buf = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    s.close()
    keys = set()
    for line in buf.decode(errors="replace").splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0].startswith("0x"):
            keys.add(parts[1])
    return keys


def _poll_map(sock: str, sni: str, stop, out) -> None:
    """Poll HAProxy's live SNI map until `stop` (at most 600 s); put (first seen per key, polls)."""
    first_seen: dict[str, float] = {}
    polls = 0
    end = time.monotonic() + 600
    while not stop.is_set() and time.monotonic() < end:
        try:
            keys = show_map_keys(sock, sni)
        except OSError:
            keys = set()
        now = time.time()
        polls += 1
        for k in keys:
            first_seen.setdefault(k, now)
        time.sleep(0.002)
    out.put((first_seen, polls))


def phase_f(targets, results):
    t = targets["gatewayha"]
    state = os.environ["BENCH_GHA_STATE"]
    sock = os.path.join(state, "run", "haproxy.sock")
    sni = os.path.join(state, "haproxy", "maps", "sni.map")
    # The poller is a process of its own: as a thread it shared the GIL with the client driving
    # the creates, whose first TLS connection to a scheduler (imports, SSL contexts) held it for
    # up to ~0.7 s and delayed the poll that should have seen the route (1–2 outliers in 20).
    ctx = mp.get_context("fork")
    stop = ctx.Event()
    out = ctx.Queue()
    poller = ctx.Process(target=_poll_map, args=(sock, sni, stop, out), daemon=True)
    poller.start()
    time.sleep(0.5)
    names = []

    async def run():
        for _ in range(N_ROUTES):
            gw = t.gateway(asynchronous=True)
            try:
                cluster = await asyncio.wait_for(gw.new_cluster(), 120)
            except Exception as exc:  # noqa: BLE001
                log(f"(f) create failed: {exc!r}")
                await gw.close()
                continue
            names.append(cluster.name)
            await asyncio.sleep(0.2)
            await cluster.shutdown()
            await gw.close()
            await asyncio.to_thread(wait_gone, t, [cluster.name], 30)

    t_start = time.monotonic()
    asyncio.run(run())
    stop.set()
    first_seen, polls = out.get(timeout=30)
    poller.join(timeout=5)
    poll_hz = polls / (time.monotonic() - t_start)
    started = db_started_at(state, names)
    lat = []
    for name in names:
        k = f"daskgateway-{name}"
        if k in first_seen and started.get(name):
            lat.append((first_seen[k] - started[name]) * 1000)
    results["f"] = {"gatewayha": {**summary(lat), "samples_ms": lat, "poll_hz": poll_hz, "clusters": len(names)}}
    log(f"(f) route latency ms: p50 {pct(lat, 50)} p99 {pct(lat, 99)} over {len(lat)} (polls {poll_hz:.0f}/s)")


def db_dsn(state: str) -> str:
    with open(os.path.join(state, "gatewayha.toml"), "rb") as f:
        return tomllib.load(f)["database"]["dsn"]


def db_started_at(state: str, names: list[str]) -> dict[str, float]:
    if not names:
        return {}
    q = f"SELECT name, extract(epoch from started_at) FROM clusters WHERE name = ANY('{{{','.join(names)}}}')"
    out = subprocess.run(["psql", db_dsn(state), "-AtF,", "-c", q], capture_output=True, text=True, timeout=30)
    res = {}
    for line in out.stdout.splitlines():
        name, _, ts = line.partition(",")
        if ts:
            res[name] = float(ts)
    return res


# ---------------------------------------------------------------- (g) job queue


def phase_g(targets, results):
    state = os.environ["BENCH_GHA_STATE"]
    out = subprocess.run(
        [APP_PY, os.path.join(HERE, "queue_bench.py"), "--dsn", db_dsn(state)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if out.returncode != 0:
        log(f"(g) failed: {out.stderr[-2000:]}")
        results["g"] = {"error": out.stderr[-2000:]}
        return
    results["g"] = json.loads(out.stdout)
    for r in results["g"]["configs"]:
        log(f"(g) {r['threads']} threads, batch {r['batch']}: {r['claims_per_s']:.0f} claims/s")


# ---------------------------------------------------------------- https: HTTPS vs HTTP


# Many short runs rather than a few long ones: on this shared machine the other work's load moves
# within seconds, and runs next to each other see more of the same (5 runs of 5 s: 0.84-1.02x).
HTTPS_REPS = int(os.environ.get("BENCH_HTTPS_REPS", "9"))
HTTPS_CREATE_PAIRS = int(os.environ.get("BENCH_HTTPS_CREATE_PAIRS", "15"))
HTTPS_SECONDS = float(os.environ.get("BENCH_HTTPS_SECONDS", "3"))
HTTPS_WARMUP = 1.0
HTTPS_RTT_PAIRS = int(os.environ.get("BENCH_HTTPS_RTT_PAIRS", "300"))


def get_status(url: str, cookie: str) -> int:
    """One GET, redirects not followed (https: verified against SSL_CERT_FILE, as the client does)."""
    import http.client
    import ssl
    import urllib.parse

    u = urllib.parse.urlsplit(url)
    if u.scheme == "https":
        conn = http.client.HTTPSConnection(u.hostname, u.port, timeout=10, context=ssl.create_default_context())
    else:
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    try:
        conn.request("GET", u.path, headers={"Cookie": cookie})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def tls_session_info(address: str) -> dict:
    """The protocol and cipher the public port negotiates with a default (OpenSSL) client."""
    import ssl
    import urllib.parse

    u = urllib.parse.urlsplit(address)
    with socket.create_connection((u.hostname, u.port), timeout=10) as raw:
        ctx = ssl.create_default_context()
        ctx.set_alpn_protocols(["h2", "http/1.1"])
        with ctx.wrap_socket(raw, server_hostname=u.hostname) as tls:
            name, version, bits = tls.cipher()
            return {"version": tls.version(), "cipher": name, "bits": bits, "alpn": tls.selected_alpn_protocol()}


def _load_cpu(t: Target, url: str, seconds: float, cookie: str) -> dict:
    """_load, and the CPU seconds each of the stack's components and wrk itself used meanwhile
    (/proc and getrusage), with the machine's busy fraction: where an HTTPS request's cost goes."""
    import resource

    pids = {comp: fn() for comp, fn in t.service_pids.items() if comp != "worker"}
    before = {comp: sum(cpu_seconds(p) for p in ps) for comp, ps in pids.items()}
    ch0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    m0 = machine_busy()
    r = _load(url, seconds, cookie)
    m1 = machine_busy()
    ch1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = {comp: sum(cpu_seconds(p) for p in ps) - before[comp] for comp, ps in pids.items()}
    cpu["wrk"] = ch1.ru_utime + ch1.ru_stime - ch0.ru_utime - ch0.ru_stime
    r["cpu_s"] = cpu
    r["cpu_ms_per_req"] = {k: v * 1000 / r["n"] for k, v in cpu.items()} if r["n"] else {}
    r["machine_busy"] = (m1[0] - m0[0]) / max(m1[1] - m0[1], 1)
    return r


def _sentinel(t: Target) -> str:
    gw = t.gateway()
    try:
        c = gw.new_cluster()
        c.close(shutdown=False)
        return c.name
    finally:
        gw.close()


def _stop(t: Target, names: list[str]) -> None:
    gw = t.gateway()
    try:
        for name in names:
            gw.stop_cluster(name)
    finally:
        gw.close()
    wait_gone(t, names, 60)


def https_throughput(plain: Target, tls: Target, http_tls: Target) -> dict:
    """The (d) request (wrk, 16 keep-alive connections, a session cookie) on the TLS stack over
    https:// and over http:// (loopback: its plain GET of /api/v1/clusters/<id> is what the
    schedulers' own calls use, so HAProxy answers it instead of redirecting; checked first), and
    on the plain stack over http:// as a cross-check, alternating every run."""
    names = {plain.key: _sentinel(plain), tls.key: _sentinel(tls)}
    try:
        urls = {
            "http": f"{http_tls.address}/api/v1/clusters/{names[tls.key]}",
            "https": f"{tls.address}/api/v1/clusters/{names[tls.key]}",
            "plain": f"{plain.address}/api/v1/clusters/{names[plain.key]}",
        }
        stack = {"http": tls, "https": tls, "plain": plain}
        tls_cookie = session_cookie(urls["https"], tls.user, tls.password)
        cookies = {"http": tls_cookie, "https": tls_cookie}
        cookies["plain"] = session_cookie(urls["plain"], plain.user, plain.password)
        for k, url in urls.items():
            status = get_status(url, cookies[k])
            if status != 200:  # wrk counts a 308 as success: it must not measure redirects
                raise RuntimeError(f"GET {url} answered {status}, not 200")
        runs = {k: [] for k in urls}
        ratios, plain_ratios = [], []
        keys = ["http", "https", "plain"]
        for rep in range(HTTPS_REPS):
            for k in keys if rep % 2 == 0 else keys[::-1]:
                # Every run follows HTTPS_WARMUP s of its own request, unmeasured, so none starts on an
                # API that sat idle while the other stack ran (in one run without it, the https runs
                # right after the plain stack's were 0.76-0.93x, the others 0.97-1.01x; with it the
                # pattern did not recur, the spread did: it is the machine's other work).
                _load(urls[k], HTTPS_WARMUP, cookies[k])
                r = _load_cpu(stack[k], urls[k], HTTPS_SECONDS, cookies[k])
                runs[k].append(r)
                cpu = " ".join(f"{c} {v:.3f}" for c, v in r["cpu_ms_per_req"].items())
                log(
                    f"(https) rep {rep} {k}: {r['rps']:.0f} req/s p99 {r['p99_ms']:.1f} ms errors {r['errors']}; "
                    f"CPU ms/request: {cpu}; machine {r['machine_busy']:.0%} busy"
                )
            ratios.append(ratio(runs["http"][-1]["rps"], runs["https"][-1]["rps"]))
            plain_ratios.append(ratio(runs["plain"][-1]["rps"], runs["http"][-1]["rps"]))
    finally:
        for t in (plain, tls):
            _stop(t, [names[t.key]])
    out = {}
    for k, v in runs.items():
        comps = v[0]["cpu_ms_per_req"].keys() if v else []
        out[k] = {
            "url": urls[k],
            "rps": median([r["rps"] for r in v]),
            "p50_ms": median([r["p50_ms"] for r in v]),
            "p99_ms": median([r["p99_ms"] for r in v]),
            "errors": sum(r["errors"] for r in v),
            "cpu_ms_per_req": {c: median([r["cpu_ms_per_req"][c] for r in v]) for c in comps},
            "machine_busy": median([r["machine_busy"] for r in v]),
            "runs": v,
        }
    out["seconds"] = HTTPS_SECONDS
    out["warmup_seconds"] = HTTPS_WARMUP
    out["ratio_median"] = median([x for x in ratios if x is not None])
    out["ratios"] = ratios
    out["http_vs_plain_median"] = median([x for x in plain_ratios if x is not None])
    out["http_vs_plain"] = plain_ratios
    return out


HTTPS_BLOCKS = 3


def paired(times: dict[str, list[float]]) -> dict:
    """HTTPS / HTTP of interleaved samples: the ratio of the medians, and the same ratio in
    HTTPS_BLOCKS consecutive blocks of the pairs (how much it moves by itself: the noise)."""
    step = max(len(times["http"]) // HTTPS_BLOCKS, 1)
    blocks = [(times["http"][i : i + step], times["https"][i : i + step]) for i in range(0, len(times["http"]), step)]
    return {
        "ratio": ratio(median(times["http"]), median(times["https"])),
        "block_ratios": [ratio(median(h), median(s)) for h, s in blocks[:HTTPS_BLOCKS] if h and s],
    }


def https_creates(plain: Target, tls: Target) -> dict:
    """(a) on both stacks: a new Gateway's new_cluster() over http:// (the plain stack) and https://
    (the TLS stack), no warm pool on either, one create of each side after the other (order
    alternating), so the machine's drift (other work, Postgres checkpoints) falls on both."""
    sides = {"http": plain, "https": tls}
    times = {k: [] for k in sides}
    errors = {k: [] for k in sides}

    async def run():
        for t in sides.values():  # warm-up, unmeasured
            await one_create(t)
        for i in range(HTTPS_CREATE_PAIRS):
            for k in ("http", "https") if i % 2 == 0 else ("https", "http"):
                r = await one_create(sides[k])
                (errors if isinstance(r, str) else times)[k].append(r)
        for t in sides.values():
            await stop_strays(t, set())

    asyncio.run(run())
    out = {
        k: {**summary(times[k]), "times": times[k], "errors": len(errors[k]), "error_samples": errors[k][:3]}
        for k in sides
    }
    out.update(paired(times))
    log(
        f"(https) create: http median {out['http']['median']} https {out['https']['median']}; "
        f"ratio {out['ratio']} blocks {out['block_ratios']}; errors {len(errors['http'])} / {len(errors['https'])}"
    )
    return out


def https_rtt(tls: Target, http_tls: Target) -> dict:
    """One cluster on the TLS stack with one worker; one client through an https:// Gateway (the
    one that created it) and one through an http:// Gateway's connect(); submit().result()
    interleaved one by one. Both reach the scheduler the same way (TLS by SNI through HAProxy,
    gateway://<host>:<port>/<name>): only the Gateway's scheme differs."""
    gw = tls.gateway()
    cluster = gw.new_cluster()
    gw_http = http_tls.gateway()
    clients, cl_http = {}, None
    try:
        cluster.scale(1)
        clients["https"] = cluster.get_client(set_as_default=False)
        clients["https"].wait_for_workers(1, timeout=120)
        cl_http = gw_http.connect(cluster.name)
        clients["http"] = cl_http.get_client(set_as_default=False)
        addrs = {"https": cluster.scheduler_address, "http": cl_http.scheduler_address}
        for c in clients.values():  # warm up
            task_rtt(c, 20)
        rtt = {"http": [], "https": []}
        for i in range(HTTPS_RTT_PAIRS):
            for k in ("http", "https") if i % 2 == 0 else ("https", "http"):
                rtt[k].extend(task_rtt(clients[k], 1))
    finally:
        for c in clients.values():
            c.close()
        if cl_http is not None:
            cl_http.close()
        gw_http.close()
        name = cluster.name
        cluster.shutdown()
        gw.close()
        wait_gone(tls, [name], 60)
    out = {k: {"n": len(v), "median_ms": median(v) * 1000, "p99_ms": pct(v, 99) * 1000} for k, v in rtt.items()}
    out.update(paired(rtt))
    out["scheduler_addresses"] = addrs
    return out


def phase_https(targets, results):
    """HTTPS vs HTTP on gatewayha: the TLS stack (bench/run.sh: GATEWAYHA_TLS=1, ports 194xx) and
    the plain bench stack. Run with SSL_CERT_FILE naming the TLS stack's CA bundle (run.sh sets
    it for this phase's process: aiohttp reads it when imported), as local.env does for users."""
    plain = targets["gatewayha"]
    tls = tls_target_from_env()
    http_tls = dataclasses.replace(tls, key="gatewayha_tls_http", address=tls.address.replace("https:", "http:", 1))
    out = {
        "stacks": {"plain": plain.address, "tls": tls.address},
        "tls": tls_session_info(tls.address),
        "ssl_cert_file": os.environ.get("SSL_CERT_FILE"),
    }
    results["https"] = out
    for part, fn in (
        ("throughput", lambda: https_throughput(plain, tls, http_tls)),
        ("create", lambda: https_creates(plain, tls)),
        ("rtt", lambda: https_rtt(tls, http_tls)),
    ):
        try:
            out[part] = fn()
        except Exception as exc:  # noqa: BLE001  (one part failing must not lose the others)
            log(f"(https) {part} failed: {exc!r}")
            print(traceback.format_exc(), file=sys.stderr, flush=True)
            out.setdefault("failed", {})[part] = repr(exc)[:500]
            for t in (plain, tls):
                try:
                    wait_gone(t, asyncio.run(stop_strays(t, set())), 60)
                except Exception:  # noqa: BLE001
                    pass
    th, cr, rt = out.get("throughput", {}), out.get("create", {}), out.get("rtt", {})
    log(
        f"(https) throughput https/http {th.get('ratio_median')} {th.get('ratios')}; create https/http "
        f"{cr.get('ratio')} {cr.get('block_ratios')}; round trip https/http {rt.get('ratio')} "
        f"{rt.get('block_ratios')}"
    )


# ---------------------------------------------------------------- scale(10**12)


def phase_scale(targets, results):
    out = {}
    for t in (targets["gatewayha"], targets["anchor"]):
        gw = t.gateway()
        cluster = gw.new_cluster()
        name = cluster.name
        cluster.close(shutdown=False)
        pr = Prober(t, None, interval=0.05, timeout=2.0, health_only=True)
        time.sleep(5)
        idle = pr.stop().get("health")
        pr = Prober(t, None, interval=0.05, timeout=2.0, health_only=True)
        ret = {}

        def do_scale(gw=gw, name=name, ret=ret):
            t0 = time.perf_counter()
            try:
                gw.scale_cluster(name, 10**12)
                ret["outcome"] = "ok"
            except Exception as exc:  # noqa: BLE001
                ret["outcome"] = err(exc)
            ret["seconds"] = time.perf_counter() - t0

        th = threading.Thread(target=do_scale, daemon=True)
        th.start()
        peak_rss = 0.0
        server_pids = [p for fn in t.service_pids.values() for p in fn()]
        end = time.monotonic() + 15
        killed = False
        while time.monotonic() < end:
            rss = sum(rss_kib(p) for p in server_pids) / 1024
            peak_rss = max(peak_rss, rss)
            if rss > 4096 or mem_available_mib() < MIN_AVAILABLE_MIB:
                log(f"(scale) {t.key}: server RSS {rss:.0f} MiB, stopping early")
                break
            time.sleep(0.25)
        after = pr.stop().get("health")
        th.join(timeout=1)
        r = {
            "idle": idle,
            "after_scale": after,
            "scale_call": dict(ret) or {"outcome": "no answer"},
            "server_peak_rss_mib": peak_rss,
            "dask_procs": len(sum(dask_procs(t.marker).values(), [])),
        }
        if t.key == "anchor":
            killed = kill_anchor(t)
            r["anchor_killed_after"] = killed
        else:
            gw.stop_cluster(name)
            wait_gone(t, [name], 60)
        gw.close()
        out[t.key] = r
        log(
            f"(scale) {t.key}: health p99 idle {fmt(idle, 'p99_ms')} ms, after scale {fmt(after, 'p99_ms')} ms, "
            f"errors {after and after['errors']}/{after and after['n']}, call {r['scale_call']}, "
            f"peak RSS {peak_rss:.0f} MiB"
        )
    results["scale"] = out


def fmt(d, k):
    return "n/a" if not d or d.get(k) is None else f"{d[k]:.1f}"


def kill_anchor(t: Target) -> bool:
    """End the anchor (our own process, by its pid) and the Dask processes it started."""
    pid = pidfile(os.environ["BENCH_ANCHOR_STATE"] + "/anchor.pid")
    victims = (tree(pid) if pid else []) + sum(dask_procs(t.marker).values(), [])
    for p in set(victims):
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return bool(pid)


# ---------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--phases", default="a,sentinel,d,b20,b100,c,e,f,g")
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    targets = targets_from_env()
    results = json.load(open(args.out)) if os.path.exists(args.out) else {}
    results.setdefault("timings", {})
    phases = args.phases.split(",")
    sentinels: dict[str, str] = {}
    for ph in phases:
        t0 = time.monotonic()
        log(f"phase {ph}{args.tag}")
        try:
            if ph == "a":
                phase_a(targets, results, args.tag)
            elif ph == "sentinel":
                ensure_sentinels(targets, sentinels)
                time.sleep(3)
                results["mem_rest"] = {t.key: memory(t) for t in targets.values()}
                results["sched_rss_mib"] = {
                    t.key: median([rss_kib(p) / 1024 for p in dask_procs(t.marker)["scheduler"]])
                    for t in targets.values()
                }
            elif ph == "d":
                ensure_sentinels(targets, sentinels)
                phase_d(targets, results, sentinels)
            elif ph == "b20":
                phase_storm(targets, results, 20, False, REPS_B20, sentinels)
            elif ph == "b100":
                ensure_sentinels(targets, sentinels)
                phase_storm(targets, results, 100, False, REPS_B100, sentinels, probes=True)
            elif ph == "c":
                phase_storm(targets, results, 20, True, REPS_C, sentinels)
            elif ph == "e":
                for t in targets.values():  # the sentinels are not needed any more
                    wait_gone(t, asyncio.run(stop_strays(t, set())), 60)
                phase_e(targets, results, sentinels)
            elif ph == "f":
                phase_f(targets, results)
            elif ph == "g":
                phase_g(targets, results)
            elif ph == "https":
                phase_https(targets, results)
            elif ph == "scale":
                phase_scale(targets, results)
        except Exception as exc:  # noqa: BLE001  (one phase failing must not lose the others)
            log(f"phase {ph}{args.tag} failed: {exc!r}")
            print(traceback.format_exc(), file=sys.stderr, flush=True)
            results.setdefault("failed_phases", {})[ph + args.tag] = repr(exc)[:500]
            for t in targets.values():
                if not (t.key == "anchor" and ph == "scale"):
                    try:
                        wait_gone(t, asyncio.run(stop_strays(t, set(sentinels.values()))), 60)
                    except Exception:  # noqa: BLE001
                        pass
        results["timings"][ph + args.tag] = time.monotonic() - t0
        write_json(args.out, results)
    for t in targets.values():
        if t.key == "anchor" and "scale" in phases:
            continue
        asyncio.run(stop_strays(t, set()))


if __name__ == "__main__":
    main()
