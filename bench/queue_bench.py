"""(g) Claims per second of gatewayha's job queue alone (run with the app venv).

Jobs go to a queue named 'bench' that no gatewayha-jobs claims from, so the stack's workers
never take them. For each configuration, 20,000 `probe` jobs ({"seconds": 0}) are inserted, then
T threads, each with its own connection, loop on queue.claim(batch) + queue.complete(job) (one
statement each, autocommit, as the worker does) until the queue is empty or the time bound.
Prints JSON: {"enqueue_per_s", "configs": [{"threads", "batch", "jobs", "seconds", "claims_per_s"}]}.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from gatewayha.jobs import queue

QUEUE = "bench"
CONFIGS = [(1, 1), (4, 1), (4, 10), (8, 50)]


def connect(dsn: str) -> psycopg.Connection:
    return psycopg.connect(dsn, autocommit=True, row_factory=dict_row)


def cleanup(conn: psycopg.Connection) -> None:
    conn.execute("DELETE FROM jobs WHERE queue = %s", (QUEUE,))
    conn.execute("DELETE FROM job_log WHERE queue = %s", (QUEUE,))


def fill(conn: psycopg.Connection, n: int) -> None:
    conn.execute(
        "INSERT INTO jobs (kind, queue, payload) SELECT 'probe', %s, %s FROM generate_series(1, %s)",
        (QUEUE, Jsonb({"seconds": 0}), n),
    )


def enqueue_rate(dsn: str, n: int = 2000) -> float:
    """queue.enqueue itself (insert + NOTIFY), one connection, one transaction per job."""
    with connect(dsn) as conn:
        t0 = time.perf_counter()
        for _ in range(n):
            queue.enqueue(conn, "probe", {"seconds": 0}, queue=QUEUE)
        dt = time.perf_counter() - t0
        cleanup(conn)
    return n / dt


def run_config(dsn: str, threads: int, batch: int, jobs: int, bound: float) -> dict:
    with connect(dsn) as conn:
        cleanup(conn)
        fill(conn, jobs)
    conns = [connect(dsn) for _ in range(threads)]
    counts = [0] * threads
    ends = [0.0] * threads
    barrier = threading.Barrier(threads + 1)

    def work(i: int) -> None:
        conn, owner = conns[i], f"bench-{i}"
        barrier.wait()
        deadline = time.monotonic() + bound
        n = 0
        while time.monotonic() < deadline:
            claimed = queue.claim(conn, owner, [QUEUE], batch, 30.0)
            if not claimed:
                break
            for job in claimed:
                if queue.complete(conn, job, owner):
                    n += 1
        counts[i] = n
        ends[i] = time.perf_counter()

    ths = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in ths:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in ths:
        t.join()
    seconds = max(ends) - t0
    for c in conns:
        c.close()
    with connect(dsn) as conn:
        left = conn.execute("SELECT count(*) AS n FROM jobs WHERE queue = %s", (QUEUE,)).fetchone()["n"]
        done = conn.execute(
            "SELECT count(*) AS n FROM job_log WHERE queue = %s AND outcome = 'done'", (QUEUE,)
        ).fetchone()["n"]
        cleanup(conn)
    total = sum(counts)
    return {
        "threads": threads,
        "batch": batch,
        "jobs": total,
        "logged_done": done,
        "left": left,
        "seconds": seconds,
        "claims_per_s": total / seconds if seconds > 0 else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dsn", required=True)
    ap.add_argument("--jobs", type=int, default=20_000)
    ap.add_argument("--bound", type=float, default=10.0, help="seconds per configuration at most")
    args = ap.parse_args()
    out = {"enqueue_per_s": enqueue_rate(args.dsn), "configs": []}
    for threads, batch in CONFIGS:
        r = run_config(args.dsn, threads, batch, args.jobs, args.bound)
        print(f"queue_bench: {r}", file=sys.stderr, flush=True)
        out["configs"].append(r)
    with connect(args.dsn) as conn:
        conn.execute("VACUUM jobs")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
