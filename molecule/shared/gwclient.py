"""The stock dask-gateway client against the molecule appliance, one step per call.

Run with the app venv (it has dask-gateway; .venv-ops does not):

    .venv/bin/python molecule/shared/gwclient.py [--address URL] COMMAND ...

Every command prints exactly one JSON object on the last line of stdout (logs go to
stderr) and exits 0 on success, 1 on a failed check. The verifiers call it as a
subprocess and assert on that JSON. Every wait is bounded.

Commands
    create   [--options JSON] [--workers N]   new cluster, scale, compute; leaves it running
    compute  NAME [--workers N]               connect by name, wait for N workers, compute
    scale    NAME N
    dashboard NAME                            GET the dashboard link through the gateway
    status   NAME                             the cluster report's status
    stop     NAME                             gateway.stop_cluster, wait until STOPPED
    hold     NAME --seconds S [--stop-file F]  one connected Client computing (until F exists)
    apiloop  --stop-file F --out F            GET /api/health + /api/v1/clusters/ until F exists
    reads    NAME --stop-file F                the stock client's reads (get_cluster, list_clusters)
    storm    --count N [--users a,b] [--addresses u,v] [--retrying]
                                              N concurrent creates until RUNNING (asyncio)
    attack   NAME --targets JSON              tests/tenant_attack.py on a worker and on the
                                              scheduler of NAME, then compute, scale, adapt
"""

from __future__ import annotations

import argparse
import base64
import http.cookiejar
import json
import logging
import os
import sys
import threading
import time
import urllib.error
import urllib.request

DEFAULT_ADDRESS = os.environ.get("GWHA_ADDRESS", "https://172.30.0.100:8000")
USER = os.environ.get("GWHA_USER", "demo")
PASSWORD = os.environ.get("GWHA_PASSWORD", "demo-password")

log = logging.getLogger("gwclient")


def out(obj: dict, ok: bool = True) -> int:
    print(json.dumps(obj, sort_keys=True), flush=True)
    return 0 if ok else 1


def gateway(address: str):
    from dask_gateway import BasicAuth, Gateway

    return Gateway(address=address, auth=BasicAuth(USER, PASSWORD))


def square_sum(client, n: int = 50) -> int:
    futures = client.map(lambda x: x * x, range(n), pure=False)
    return client.submit(sum, futures).result(timeout=60)


def expected(n: int = 50) -> int:
    return sum(x * x for x in range(n))


def wait_workers(client, n: int, timeout: float = 120) -> int:
    if n > 0:
        client.wait_for_workers(n, timeout=timeout)
    return len(client.scheduler_info()["workers"])


def cmd_create(args) -> int:
    t0 = time.monotonic()
    gw = gateway(args.address)
    options = json.loads(args.options) if args.options else {}
    cluster = gw.new_cluster(shutdown_on_close=False, **options)
    created = time.monotonic() - t0
    result = {"name": cluster.name, "created_s": round(created, 2), "dashboard_link": cluster.dashboard_link}
    if args.workers:
        cluster.scale(args.workers)
        client = cluster.get_client(set_as_default=False)
        result["workers"] = wait_workers(client, args.workers)
        result["result"] = square_sum(client)
        client.close()
    cluster.close(shutdown=False)
    result["elapsed_s"] = round(time.monotonic() - t0, 2)
    return out(result, result.get("result", expected()) == expected())


def cmd_compute(args) -> int:
    t0 = time.monotonic()
    gw = gateway(args.address)
    cluster = gw.connect(args.name)
    client = cluster.get_client(set_as_default=False)
    workers = wait_workers(client, args.workers)
    value = square_sum(client)
    client.close()
    cluster.close(shutdown=False)
    ok = value == expected()
    return out(
        {"name": args.name, "workers": workers, "result": value, "elapsed_s": round(time.monotonic() - t0, 2)}, ok
    )


def cmd_scale(args) -> int:
    gw = gateway(args.address)
    gw.scale_cluster(args.name, args.count)
    return out({"name": args.name, "scaled": args.count})


def cmd_dashboard(args) -> int:
    gw = gateway(args.address)
    cluster = gw.connect(args.name)
    link = cluster.dashboard_link
    cluster.close(shutdown=False)
    status, length, error = None, 0, None
    # Dashboards are their owner's: the login sets the token cookie HAProxy checks, then redirects.
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
    login = urllib.request.Request(link, headers=gw.auth.pre_request(None)[0])
    try:
        with opener.open(login, timeout=20) as r:
            status, length = r.status, len(r.read())
    except urllib.error.HTTPError as e:
        status, error = e.code, str(e)
    except OSError as e:
        error = repr(e)
    return out({"name": args.name, "link": link, "status": status, "bytes": length, "error": error}, status == 200)


def cmd_status(args) -> int:
    gw = gateway(args.address)
    report = gw.get_cluster(args.name)
    return out({"name": args.name, "status": report.status.name})


def cmd_stop(args) -> int:
    gw = gateway(args.address)
    gw.stop_cluster(args.name)
    deadline = time.monotonic() + args.timeout
    status = None
    while time.monotonic() < deadline:
        status = gw.get_cluster(args.name).status.name
        if status in ("STOPPED", "FAILED"):
            break
        time.sleep(0.5)
    return out({"name": args.name, "status": status}, status == "STOPPED")


def cmd_hold(args) -> int:
    """One connected Client (one TCP/TLS connection through the VIP) computing in a loop."""
    gw = gateway(args.address)
    cluster = gw.connect(args.name)
    client = cluster.get_client(set_as_default=False)
    wait_workers(client, 1)
    rounds, failures, errors = 0, 0, []
    ready = args.ready_file
    if ready:
        with open(ready, "w") as f:
            f.write("ready\n")
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline and not (args.stop_file and os.path.exists(args.stop_file)):
        rounds += 1
        try:
            if square_sum(client, 20) != expected(20):
                raise RuntimeError("wrong result")
        except Exception as e:  # noqa: BLE001 - every failure counts, whatever it is
            failures += 1
            errors.append(repr(e)[:200])
            if failures >= 3:
                break
        time.sleep(0.3)
    client.close()
    cluster.close(shutdown=False)
    return out({"name": args.name, "rounds": rounds, "failures": failures, "errors": errors[:3]}, failures == 0)


def _json_error(body: str) -> bool:
    """A JSON object naming the failure: {"error": ...} or the health check's {"status": "fail"}."""
    try:
        obj = json.loads(body)
    except ValueError:
        return False
    return isinstance(obj, dict) and ("error" in obj or obj.get("status") == "fail")


class ApiLoop:
    """GET /api/health and GET /api/v1/clusters/ (Basic auth once, then the session cookie)."""

    def __init__(self, address: str, timeout: float, tolerate_503: bool = False):
        self.address = address.rstrip("/")
        self.timeout = timeout
        # A database outage: 503 with a JSON body is the promised answer, counted apart.
        self.tolerate_503 = tolerate_503
        self.unavailable = 0
        self.lock = threading.Lock()
        self.count = 0
        self.by_path: dict[str, int] = {}
        self.failures: list[dict] = []
        self.latencies: list[float] = []
        self.logins = 0

    def record(self, path: str, ok: bool, detail: dict | None, latency: float) -> None:
        with self.lock:
            self.count += 1
            self.latencies.append(latency)
            self.by_path[path] = self.by_path.get(path, 0) + 1
            if not ok:
                self.failures.append({"path": path, "t": round(time.time(), 3), **(detail or {})})

    def opener(self):
        jar = http.cookiejar.CookieJar()
        return urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar)), jar

    def login(self, opener) -> None:
        """Challenge first, as the stock client: 401 + WWW-Authenticate, then Basic."""
        url = self.address + "/api/v1/clusters/"
        try:
            opener.open(url, timeout=self.timeout)
            raise RuntimeError("anonymous request was not challenged")
        except urllib.error.HTTPError as e:
            if e.code != 401 or "WWW-Authenticate" not in e.headers:
                raise
        basic = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        req = urllib.request.Request(url, headers={"Authorization": f"Basic {basic}"})
        with opener.open(req, timeout=self.timeout) as r:
            json.load(r)
        with self.lock:
            self.logins += 1

    def one(self, opener, path: str, check) -> None:
        detail = None
        t = time.monotonic()
        try:
            with opener.open(self.address + path, timeout=self.timeout) as r:
                body = json.load(r)
                ok = r.status == 200 and check(body)
                if not ok:
                    detail = {"status": r.status, "body": str(body)[:200]}
        except urllib.error.HTTPError as e:
            body = e.read()[:2000].decode(errors="replace")
            ok, detail = False, {"status": e.code, "body": body[:200]}
            if e.code == 503 and self.tolerate_503 and _json_error(body):
                with self.lock:
                    self.unavailable += 1
                ok, detail = True, None
        except Exception as e:  # noqa: BLE001 - connection errors, timeouts, bad JSON: all failures
            ok, detail = False, {"error": repr(e)[:200]}
        latency = time.monotonic() - t
        if detail is not None:
            detail["elapsed_s"] = round(latency, 3)
        self.record(path, ok, detail, latency)

    def run(self, stop, max_seconds: float, pause: float) -> None:
        opener, jar = self.opener()
        self.login(opener)
        deadline = time.monotonic() + max_seconds
        while not stop() and time.monotonic() < deadline:
            self.one(opener, "/api/health", lambda b: b == {"status": "pass"})
            # Only the cookie authenticates these: a 401 here is a failure.
            self.one(opener, "/api/v1/clusters/", lambda b: isinstance(b, dict))
            time.sleep(pause)


def cmd_apiloop(args) -> int:
    loop = ApiLoop(args.address, args.request_timeout, args.tolerate_503)
    t0 = time.monotonic()

    def stop() -> bool:
        return os.path.exists(args.stop_file)

    threads, errors = [], []

    def runner() -> None:
        try:
            loop.run(stop, args.max_seconds, args.pause)
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    for _ in range(args.threads):
        th = threading.Thread(target=runner, daemon=True)
        th.start()
        threads.append(th)
    if args.ready_file:
        with open(args.ready_file, "w") as f:
            f.write("ready\n")
    for th in threads:
        th.join(args.max_seconds + 60)
    lat = sorted(loop.latencies) or [0.0]
    result = {
        "requests": loop.count,
        "latency_s": {
            "median": round(lat[len(lat) // 2], 3),
            "p99": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 3),
            "max": round(lat[-1], 3),
        },
        "by_path": loop.by_path,
        "failed": len(loop.failures),
        "unavailable_503": loop.unavailable,
        "failures": loop.failures[:20],
        "logins": loop.logins,
        "thread_errors": errors,
        "stopped_by_file": stop(),
        "duration_s": round(time.monotonic() - t0, 1),
    }
    text = json.dumps(result, sort_keys=True)
    if args.out:
        with open(args.out + ".tmp", "w") as f:
            f.write(text + "\n")
        os.replace(args.out + ".tmp", args.out)
    ok = not loop.failures and not errors and loop.count > 0 and result["stopped_by_file"]
    return out(result, ok)


def cmd_reads(args) -> int:
    """The stock client's reads in a loop (threads x (get_cluster + list_clusters)) until the stop file."""
    count, failures, lock = [0], [], threading.Lock()
    deadline = time.monotonic() + args.max_seconds

    def run() -> None:
        gw = gateway(args.address)
        try:
            while time.monotonic() < deadline and not os.path.exists(args.stop_file):
                for call in (lambda: gw.get_cluster(args.name), gw.list_clusters):
                    try:
                        call()
                        ok, detail = True, None
                    except Exception as e:  # noqa: BLE001 - every failure counts
                        ok, detail = False, repr(e)[:200]
                    with lock:
                        count[0] += 1
                        if not ok:
                            failures.append({"t": round(time.time(), 3), "error": detail})
                time.sleep(args.pause)
        finally:
            gw.close()

    threads = [threading.Thread(target=run, daemon=True) for _ in range(args.threads)]
    for th in threads:
        th.start()
    if args.ready_file:
        with open(args.ready_file, "w") as f:
            f.write("ready\n")
    for th in threads:
        th.join(args.max_seconds + 60)
    result = {"requests": count[0], "failed": len(failures), "failures": failures[:20]}
    return out(result, not failures and count[0] > 0)


def cmd_storm(args) -> int:
    """``count`` concurrent creates, each its own Gateway (an independent session), spread over
    the users and addresses given; each until RUNNING (new_cluster returns). Clusters are left
    running. ``--retrying`` uses contrib/retrying_gateway.py (retries + Idempotency-Key)."""
    import asyncio

    from dask_gateway import BasicAuth, Gateway

    cls = Gateway
    if args.retrying:
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "contrib"))
        from retrying_gateway import RetryingGateway

        cls = RetryingGateway
    users = args.users.split(",") if args.users else [USER]
    addresses = args.addresses.split(",") if args.addresses else [args.address]
    password = args.password or PASSWORD

    async def one(i: int) -> dict:
        user, address = users[i % len(users)], addresses[i % len(addresses)]
        t0 = time.monotonic()
        async with cls(address, auth=BasicAuth(user, password), asynchronous=True) as gw:
            try:
                cluster = await asyncio.wait_for(gw.new_cluster(shutdown_on_close=False), args.timeout)
            except Exception as e:  # noqa: BLE001 - reported per create
                return {"i": i, "user": user, "error": f"{type(e).__name__}: {e}"[:300]}
            name = cluster.name
            await cluster.close(shutdown=False)
        return {"i": i, "user": user, "name": name, "seconds": round(time.monotonic() - t0, 2)}

    async def main() -> list[dict]:
        return await asyncio.gather(*(one(i) for i in range(args.count)))

    t0 = time.monotonic()
    results = asyncio.run(main())
    created = [r for r in results if "name" in r]
    errors = [r for r in results if "error" in r]
    return out(
        {
            "created": created,
            "errors": errors,
            "seconds": round(time.monotonic() - t0, 2),
        },
        True,
    )


def cmd_attack(args) -> int:
    """The tenant's code of tests/tenant_attack.py, run as NAME's owner: every probe must fail,
    and the cluster must still compute, scale and adapt afterwards."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests"))
    from tenant_attack import attack, check_refused

    targets = json.loads(args.targets)
    gw = gateway(args.address)
    cluster = gw.connect(args.name)
    cluster.scale(1)
    client = cluster.get_client(set_as_default=False)
    wait_workers(client, 1)
    result = {
        "worker": client.submit(lambda t: attack(t), targets, pure=False).result(timeout=60),
        "scheduler": client.run_on_scheduler(lambda t: attack(t), targets),
    }
    result["not_refused"] = {
        where: check_refused(result[where], targets["victim_pids"]) for where in ("worker", "scheduler")
    }
    result["result"] = square_sum(client)
    cluster.scale(2)
    result["workers"] = wait_workers(client, 2)
    cluster.adapt(minimum=1, maximum=2)
    result["after_adapt"] = client.submit(lambda: 6 * 7).result(timeout=60)
    client.close()
    cluster.close(shutdown=False)
    ok = not any(result["not_refused"].values()) and result["result"] == expected() and result["after_adapt"] == 42
    return out(result, ok)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--address", default=DEFAULT_ADDRESS)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("create")
    c.add_argument("--options", default="")
    c.add_argument("--workers", type=int, default=0)
    c = sub.add_parser("compute")
    c.add_argument("name")
    c.add_argument("--workers", type=int, default=1)
    c = sub.add_parser("scale")
    c.add_argument("name")
    c.add_argument("count", type=int)
    c = sub.add_parser("dashboard")
    c.add_argument("name")
    c = sub.add_parser("status")
    c.add_argument("name")
    c = sub.add_parser("stop")
    c.add_argument("name")
    c.add_argument("--timeout", type=float, default=60)
    c = sub.add_parser("hold")
    c.add_argument("name")
    c.add_argument("--seconds", type=float, required=True, help="at most this long")
    c.add_argument("--ready-file", default="")
    c.add_argument("--stop-file", default="", help="stop early when this file exists")
    c = sub.add_parser("apiloop")
    c.add_argument("--stop-file", required=True)
    c.add_argument("--out", default="")
    c.add_argument("--ready-file", default="")
    c.add_argument("--max-seconds", type=float, default=900)
    c.add_argument("--threads", type=int, default=2)
    c.add_argument("--pause", type=float, default=0.05)
    c.add_argument("--tolerate-503", action="store_true", help="503 + JSON error body is not a failure")
    # HAProxy's own "timeout server" is 1m (then it answers 504): wait as long as it does.
    c.add_argument("--request-timeout", type=float, default=65)
    c = sub.add_parser("reads")
    c.add_argument("name")
    c.add_argument("--stop-file", required=True)
    c.add_argument("--ready-file", default="")
    c.add_argument("--max-seconds", type=float, default=300)
    c.add_argument("--threads", type=int, default=2)
    c.add_argument("--pause", type=float, default=0.05)
    c = sub.add_parser("storm")
    c.add_argument("--count", type=int, required=True)
    c.add_argument("--users", default="", help="comma-separated; create i is by user i %% len")
    c.add_argument("--password", default="")
    c.add_argument("--addresses", default="", help="comma-separated; create i goes to address i %% len")
    c.add_argument("--retrying", action="store_true")
    c.add_argument("--timeout", type=float, default=180)
    c = sub.add_parser("attack")
    c.add_argument("name")
    c.add_argument("--targets", required=True, help="JSON: paths and pids tenant_attack.attack probes")
    args = p.parse_args(argv)
    return {
        "create": cmd_create,
        "compute": cmd_compute,
        "scale": cmd_scale,
        "dashboard": cmd_dashboard,
        "status": cmd_status,
        "stop": cmd_stop,
        "hold": cmd_hold,
        "apiloop": cmd_apiloop,
        "reads": cmd_reads,
        "storm": cmd_storm,
        "attack": cmd_attack,
    }[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
