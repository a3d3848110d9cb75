"""Enqueue, claim, renew, complete and retry jobs.

Every function takes a connection and runs short statements: a claim commits
before the work starts, and no transaction is held across the work itself.
State changes are fenced on ``lease_owner`` so a claimer that lost its lease
cannot complete or reschedule a job another claimer now holds.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import cache
from importlib import resources

import psycopg
from psycopg.types.json import Jsonb

CHANNEL = "gatewayha_jobs"


@cache
def sql(name: str) -> str:
    return resources.files("gatewayha.db").joinpath("sql", f"{name}.sql").read_text()


@dataclass
class Job:
    id: int
    kind: str
    queue: str
    payload: dict
    cluster: str | None
    attempts: int
    max_attempts: int


# Launches: scheduler starts (any node) and worker starts (the cluster's node) are claimed by
# a node only while it has a launch slot free (jobs.launch_slots), not by the general claim.
START_QUEUE = "start"


def node_queue(node: str) -> str:
    return f"node:{node}"


def node_start_queue(node: str) -> str:
    return f"start:{node}"


def start_queues(node: str) -> list[str]:
    """The queues a node claims launches from, in one FIFO: a scheduler start enqueued before a
    worker start is launched first."""
    return [START_QUEUE, node_start_queue(node)]


def enqueue(
    conn: psycopg.Connection,
    kind: str,
    payload: dict | None = None,
    *,
    queue: str = "any",
    cluster: str | None = None,
    dedupe_key: str | None = None,
    delay: float = 0.0,
    max_attempts: int = 5,
) -> int | None:
    """Insert a job and wake the workers (NOTIFY is delivered on commit).

    With a dedupe_key, a second job with the same key is not added while the
    first is pending; returns None then.
    """
    # One round trip: the insert and the wake-up (NOTIFY is delivered on commit, and only
    # when a row was inserted).
    row = conn.execute(
        """
        WITH j AS (
            INSERT INTO jobs (kind, queue, payload, cluster, dedupe_key, run_at, max_attempts)
            VALUES (%s, %s, %s, %s, %s, now() + make_interval(secs => %s), %s)
            ON CONFLICT (dedupe_key) WHERE dedupe_key IS NOT NULL DO NOTHING
            RETURNING id
        )
        SELECT j.id, pg_notify(%s, %s) FROM j
        """,
        (kind, queue, Jsonb(payload or {}), cluster, dedupe_key, delay, max_attempts, CHANNEL, queue),
    ).fetchone()
    if row is None:
        return None
    return row["id"]


def claim(conn: psycopg.Connection, owner: str, queues: list[str], limit: int, lease: float) -> list[Job]:
    if limit <= 0:
        return []
    rows = conn.execute(
        sql("claim_jobs"), {"owner": owner, "queues": queues, "limit": limit, "lease": lease}
    ).fetchall()
    return [
        Job(r["id"], r["kind"], r["queue"], r["payload"], r["cluster"], r["attempts"], r["max_attempts"]) for r in rows
    ]


def renew(conn: psycopg.Connection, owner: str, ids: list[int], lease: float) -> set[int]:
    """Extend the leases still held; return the ids we still hold."""
    if not ids:
        return set()
    rows = conn.execute(
        "UPDATE jobs SET lease_until = now() + make_interval(secs => %s)"
        " WHERE id = ANY(%s) AND lease_owner = %s RETURNING id",
        (lease, ids, owner),
    ).fetchall()
    return {r["id"] for r in rows}


def _finish(conn: psycopg.Connection, job_id: int, owner: str | None, outcome: str, error: str | None) -> bool:
    fence = "AND lease_owner = %(owner)s" if owner is not None else ""
    row = conn.execute(
        f"""
        WITH gone AS (
            DELETE FROM jobs WHERE id = %(id)s {fence}
            RETURNING id, kind, queue, payload, cluster, attempts, last_error, created_at
        )
        INSERT INTO job_log (id, kind, queue, payload, cluster, outcome, attempts, finished_by, last_error,
                             created_at)
        SELECT id, kind, queue, payload, cluster, %(outcome)s, attempts, %(owner)s,
               coalesce(%(error)s, last_error), created_at
        FROM gone
        RETURNING id
        """,
        {"id": job_id, "owner": owner, "outcome": outcome, "error": error},
    ).fetchone()
    return row is not None


def complete(conn: psycopg.Connection, job: Job, owner: str) -> bool:
    """Record success; False when the lease was lost (someone else holds the job)."""
    return _finish(conn, job.id, owner, "done", None)


def cancel(conn: psycopg.Connection, job_id: int, reason: str) -> bool:
    return _finish(conn, job_id, None, "cancelled", reason)


def backoff(attempts: int, base: float, cap: float) -> float:
    """Exponential backoff with full jitter."""
    return random.uniform(0, min(cap, base * 2 ** max(0, attempts - 1))) + base / 2


def fail(
    conn: psycopg.Connection,
    job: Job,
    owner: str,
    error: str,
    base: float = 1.0,
    cap: float = 60.0,
    *,
    permanent: bool = False,
) -> str:
    """Retry later with backoff, or move to the log as dead after max_attempts, or at once when
    ``permanent`` (a malformed job: another attempt would fail the same way)."""
    error = error[:2000]
    if permanent or job.attempts >= job.max_attempts:
        return "dead" if _finish(conn, job.id, owner, "dead", error) else "lost"
    row = conn.execute(
        "UPDATE jobs SET lease_owner = NULL, lease_until = NULL, last_error = %s,"
        " run_at = now() + make_interval(secs => %s) WHERE id = %s AND lease_owner = %s RETURNING id",
        (error, backoff(job.attempts, base, cap), job.id, owner),
    ).fetchone()
    return "retry" if row else "lost"


def defer(conn: psycopg.Connection, job: Job, owner: str, delay: float, queue: str | None = None) -> bool:
    """Put a job back unharmed (not a failure): its attempt is not counted."""
    row = conn.execute(
        "UPDATE jobs SET lease_owner = NULL, lease_until = NULL, attempts = greatest(attempts - 1, 0),"
        " queue = coalesce(%s, queue), run_at = now() + make_interval(secs => %s)"
        " WHERE id = %s AND lease_owner = %s RETURNING id",
        (queue, delay, job.id, owner),
    ).fetchone()
    if row and queue:
        conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, queue))
    return row is not None


def claim_periodic(conn: psycopg.Connection, node: str) -> list[str]:
    return [r["name"] for r in conn.execute(sql("claim_periodic"), {"node": node}).fetchall()]


def ensure_periodic(conn: psycopg.Connection, tasks: dict[str, float]) -> None:
    """Create periodic rows; keep intervals equal to this node's config."""
    for name, interval in tasks.items():
        conn.execute(
            "INSERT INTO periodic (name, interval_s) VALUES (%s, %s)"
            " ON CONFLICT (name) DO UPDATE SET interval_s = excluded.interval_s"
            " WHERE periodic.interval_s IS DISTINCT FROM excluded.interval_s",
            (name, interval),
        )
