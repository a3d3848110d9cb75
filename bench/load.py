"""HTTP probes for the benchmark, run as its own process so the driver's event loop does not skew it.

  load.py probe --url URL[ --url URL2] [--user U --password P] --interval 0.05 --seconds 600
      one thread per URL, one request per interval, until the time is up or SIGTERM; prints a
      latency summary per URL. Requests time out after --timeout seconds (counted and reported).
  load.py serve --url http://127.0.0.1:PORT/ --seconds N
      a trivial HTTP/1.1 server (a constant JSON answer, no framework) for N seconds or until
      SIGTERM: probed beside the gateways, it shows what the machine itself does to the latency
      of any process (the *baseline* rows of the storm tables).

Only 127.0.0.1 is accepted as a host. Every loop is bounded in time and in count.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import signal
import sys
import threading
import time
import urllib.parse

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import pct  # noqa: E402


class Conn:
    """One keep-alive connection that authenticates like the stock client and keeps the cookie."""

    def __init__(self, url: str, user: str | None, password: str | None, timeout: float):
        u = urllib.parse.urlsplit(url)
        if u.hostname != "127.0.0.1":
            raise SystemExit(f"load.py: only 127.0.0.1 is a target, not {u.hostname}")
        self.host, self.port, self.timeout = u.hostname, u.port, timeout
        self.path = u.path + (f"?{u.query}" if u.query else "")
        self.basic = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode() if user else None
        self.cookie = None
        self.c = None

    def _connect(self):
        self.c = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def get(self) -> int:
        for attempt in (0, 1):
            if self.c is None:
                self._connect()
            headers = {}
            if self.cookie:
                headers["Cookie"] = self.cookie
            elif self.basic:
                headers["Authorization"] = self.basic
            try:
                self.c.request("GET", self.path, headers=headers)
                r = self.c.getresponse()
                r.read()
            except (OSError, http.client.HTTPException):
                self.c.close()
                self.c = None
                if attempt:
                    raise
                continue
            sc = r.getheader("Set-Cookie")
            if sc:
                self.cookie = sc.split(";", 1)[0]
            if r.status == 401 and self.cookie and not attempt:
                self.cookie = None  # expired or foreign cookie: authenticate again
                continue
            if r.getheader("Connection", "").lower() == "close":
                self.c.close()
                self.c = None
            return r.status
        return 0


def _ms(x):
    return None if x is None else x * 1000


def probe(args) -> dict:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    deadline = time.monotonic() + args.seconds
    results = {}

    def run(url):
        conn = Conn(url, args.user, args.password, args.timeout)
        try:
            conn.get()
        except Exception:
            pass
        lat, errors, timeouts, statuses = [], 0, 0, {}
        nxt = time.monotonic()
        for _ in range(int(args.seconds / args.interval) + 1):
            if stop.is_set() or time.monotonic() >= deadline:
                break
            t0 = time.perf_counter()
            try:
                status = conn.get()
            except TimeoutError:
                status, timeouts = "timeout", timeouts + 1
            except Exception as exc:  # noqa: BLE001
                status = type(exc).__name__
            ok = status == 200
            statuses[str(status)] = statuses.get(str(status), 0) + 1
            lat.append(time.perf_counter() - t0)
            errors += not ok
            nxt += args.interval
            delay = nxt - time.monotonic()
            if delay > 0:
                stop.wait(delay)
            else:
                nxt = time.monotonic()
        results[url] = {
            "n": len(lat),
            "errors": errors,
            "timeouts": timeouts,
            "statuses": statuses,
            "p50_ms": _ms(pct(lat, 50)),
            "p99_ms": _ms(pct(lat, 99)),
            "max_ms": _ms(max(lat) if lat else None),
        }

    threads = [threading.Thread(target=run, args=(u,)) for u in args.url]
    for t in threads:
        t.start()
    print("ready", file=sys.stderr, flush=True)
    for t in threads:
        t.join()
    return results


def serve(args) -> None:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    u = urllib.parse.urlsplit(args.url[0])
    if u.hostname != "127.0.0.1":
        raise SystemExit(f"load.py: only 127.0.0.1, not {u.hostname}")
    body = b'{"status": "pass"}'

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body in separate writes: no 40 ms delayed ACK

        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", u.port), Handler)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    timer = threading.Timer(args.seconds, server.shutdown)
    timer.daemon = True
    timer.start()
    print("ready", file=sys.stderr, flush=True)
    server.serve_forever()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["probe", "serve"])
    ap.add_argument("--url", action="append", required=True)
    ap.add_argument("--user")
    ap.add_argument("--password")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--interval", type=float, default=0.05)
    ap.add_argument("--timeout", type=float, default=5.0)
    args = ap.parse_args()
    if args.mode == "serve":
        serve(args)
    else:
        print(json.dumps(probe(args)))


if __name__ == "__main__":
    main()
