"""The SKIP LOCKED job queue against a real Postgres."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from psycopg.rows import dict_row

from gatewayha.db.migrate import migrate
from gatewayha.jobs import queue


@pytest.fixture
def conn(db_dsn):
    with psycopg.connect(db_dsn, autocommit=True, row_factory=dict_row) as c:
        c.execute("DELETE FROM jobs; DELETE FROM job_log; DELETE FROM periodic")
        yield c


def connect(dsn):
    return psycopg.connect(dsn, autocommit=True, row_factory=dict_row)


def test_concurrent_claimers_never_share_a_job(db_dsn, conn):
    for i in range(200):
        queue.enqueue(conn, "probe", {"i": i})
    got: dict[str, list[int]] = {}

    ready = threading.Barrier(6)

    def claimer(name):
        ids = []
        with connect(db_dsn) as c:
            ready.wait(30)  # all connected before anyone claims: one fast thread cannot take all
            while True:
                jobs = queue.claim(c, name, ["any"], 7, 30)
                if not jobs:
                    break
                ids += [j.id for j in jobs]
        got[name] = ids

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    all_ids = [i for ids in got.values() for i in ids]
    assert len(all_ids) == 200
    assert len(set(all_ids)) == 200
    assert sum(1 for ids in got.values() if ids) >= 2  # the work really was spread


def test_claim_takes_only_its_queues_and_ready_jobs(conn):
    a = queue.enqueue(conn, "probe", queue="node:a")
    queue.enqueue(conn, "probe", queue="node:b")
    queue.enqueue(conn, "probe", delay=60)
    jobs = queue.claim(conn, "x", ["any", "node:a"], 10, 30)
    assert [j.id for j in jobs] == [a]


def test_claim_takes_the_oldest_ready_jobs_across_its_queues(conn):
    ids = []
    for i in range(6):  # interleaved over two queues, oldest first
        ids.append(queue.enqueue(conn, "probe", {"i": i}, queue="node:a" if i % 2 else "any"))
    conn.execute("UPDATE jobs SET run_at = timestamptz '2026-01-01' + make_interval(secs => id)")
    first = queue.claim(conn, "x", ["node:a", "any"], 4, 30)
    assert [j.id for j in first] == ids[:4]
    rest = queue.claim(conn, "x", ["any", "node:a"], 4, 30)
    assert [j.id for j in rest] == ids[4:]


def test_claim_reads_the_ready_index_in_order_however_long_the_backlog(conn):
    """One index scan per queue, no sort of the whole backlog (docs/benchmarks.md, queue)."""
    conn.execute(
        "INSERT INTO jobs (kind, queue, payload) SELECT 'probe', 'backlog', '{}' FROM generate_series(1, 20000)"
    )
    conn.execute("ANALYZE jobs")
    plan = "\n".join(
        r["QUERY PLAN"]
        for r in conn.execute(
            "EXPLAIN " + queue.sql("claim_jobs"),
            {"owner": "x", "queues": ["backlog", "any"], "limit": 1, "lease": 30},
        ).fetchall()
    )
    assert "jobs_ready" in plan, plan
    assert "Seq Scan on jobs" not in plan, plan


def test_dead_claimers_job_is_claimed_again_after_its_lease_and_completed_once(conn):
    jid = queue.enqueue(conn, "probe")
    [first] = queue.claim(conn, "dead-worker", ["any"], 1, lease=0.5)
    assert queue.claim(conn, "other", ["any"], 1, lease=30) == []  # leased: invisible
    time.sleep(0.7)
    [again] = queue.claim(conn, "other", ["any"], 1, lease=30)
    assert again.id == jid and again.attempts == 2
    # The dead claimer coming back cannot complete or fail what it lost.
    assert queue.complete(conn, first, "dead-worker") is False
    assert queue.fail(conn, first, "dead-worker", "late") == "lost"
    assert queue.complete(conn, again, "other") is True
    rows = conn.execute("SELECT outcome, finished_by, attempts FROM job_log WHERE id = %s", (jid,)).fetchall()
    assert rows == [{"outcome": "done", "finished_by": "other", "attempts": 2}]


def test_renewed_lease_keeps_the_job(conn):
    queue.enqueue(conn, "probe")
    [job] = queue.claim(conn, "w", ["any"], 1, lease=0.5)
    for _ in range(3):
        time.sleep(0.3)
        assert queue.renew(conn, "w", [job.id], 0.5) == {job.id}
    assert queue.claim(conn, "thief", ["any"], 1, lease=30) == []


def test_failures_back_off_then_the_job_is_dead(conn):
    jid = queue.enqueue(conn, "probe", max_attempts=2)
    [job] = queue.claim(conn, "w", ["any"], 1, 30)
    assert queue.fail(conn, job, "w", "boom", base=0.2, cap=0.2) == "retry"
    row = conn.execute("SELECT run_at > now() AS later, last_error FROM jobs WHERE id = %s", (jid,)).fetchone()
    assert row == {"later": True, "last_error": "boom"}
    deadline = time.monotonic() + 5
    while not (jobs := queue.claim(conn, "w", ["any"], 1, 30)):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert jobs[0].attempts == 2
    assert queue.fail(conn, jobs[0], "w", "boom again") == "dead"
    assert conn.execute("SELECT outcome FROM job_log WHERE id = %s", (jid,)).fetchone() == {"outcome": "dead"}


def test_backoff_grows_and_is_capped():
    assert all(queue.backoff(1, 1.0, 60) <= 1.5 for _ in range(50))
    assert all(queue.backoff(30, 1.0, 60) <= 60.5 for _ in range(50))
    assert max(queue.backoff(6, 1.0, 60) for _ in range(200)) > 8  # jittered, but grows


def test_dedupe_key_allows_one_pending_job(conn):
    assert queue.enqueue(conn, "probe", dedupe_key="k") is not None
    assert queue.enqueue(conn, "probe", dedupe_key="k") is None
    [job] = queue.claim(conn, "w", ["any"], 5, 30)
    queue.complete(conn, job, "w")
    assert queue.enqueue(conn, "probe", dedupe_key="k") is not None


def test_defer_moves_job_without_counting_an_attempt(conn):
    queue.enqueue(conn, "probe")
    [job] = queue.claim(conn, "w", ["any"], 1, 30)
    assert queue.defer(conn, job, "w", 0, queue="node:n1")
    assert queue.claim(conn, "w", ["any"], 1, 30) == []
    [moved] = queue.claim(conn, "w", ["node:n1"], 1, 30)
    assert moved.attempts == 1


def test_enqueue_notifies_listeners_on_commit(db_dsn, conn):
    with connect(db_dsn) as listener:
        listener.execute(f"LISTEN {queue.CHANNEL}")
        queue.enqueue(conn, "probe", queue="node:z")
        got = [n.payload for n in listener.notifies(timeout=2, stop_after=1)]
    assert got == ["node:z"]


def test_periodic_tick_fires_once_across_concurrent_claimers(db_dsn, conn):
    queue.ensure_periodic(conn, {"tick": 3600})
    fired = []

    def claimer(i):
        with connect(db_dsn) as c:
            fired.extend(queue.claim_periodic(c, f"n{i}"))

    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert fired == ["tick"]
    assert queue.claim_periodic(conn, "late") == []  # next tick is an hour away


def test_migrations_run_concurrently_are_applied_once(pg_server):
    from conftest import new_database

    dsn = new_database(pg_server)
    results = []

    def run():
        with connect(dsn) as c:
            results.append(migrate(c))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 4
    assert sum(1 for r in results if r) == 1  # one runner applied everything, the others found it done
    applied = [name for r in results for name in r]
    assert len(applied) == len(set(applied))  # no migration applied twice
    with connect(dsn) as c:
        assert c.execute("SELECT count(*) AS n FROM schema_migrations").fetchone()["n"] == len(set(applied))
