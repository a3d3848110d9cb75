"""Continuity of the watchers: API instances and job-worker nodes report every few seconds.

Each report keeps ``up_since`` unless the previous report is older than ``GAP_FACTOR``
intervals, in which case the run starts again now. Judgements that assume the watchers saw
everything — "no heartbeat for N s, the cluster is dead", "node unseen for N s, it is lost" —
are only made once the relevant watcher has been up, without a gap, for those N seconds.
A control-plane outage (every API instance down: no scheduler heartbeat can arrive; the
database down: nothing is recorded) therefore never fails healthy clusters when it ends.
"""

from __future__ import annotations

import logging
import os
import threading

import psycopg

log = logging.getLogger("gatewayha.liveness")

API_INTERVAL = 2.0  # seconds between an API instance's reports
GAP_FACTOR = 3  # a report later than this many intervals starts a new run

_REPORT_SQL = """
INSERT INTO {table} AS t (name{extra_cols}) VALUES (%(name)s{extra_vals})
ON CONFLICT (name) DO UPDATE SET
    up_since = CASE WHEN t.last_seen < now() - make_interval(secs => %(gap)s) THEN now() ELSE t.up_since END,
    last_seen = now(){extra_set}
"""
_API_SQL = _REPORT_SQL.format(table="api_instances", extra_cols="", extra_vals="", extra_set="")
_NODE_SQL = (
    _REPORT_SQL.format(table="nodes", extra_cols=", host", extra_vals=", %(host)s", extra_set=", host = excluded.host")
    + "RETURNING draining"
)


def report_node(conn: psycopg.Connection, node: str, host: str, interval: float) -> bool:
    """Report this node alive; returns whether an operator drains it (``gatewayha-admin nodes
    drain``: it starts no new scheduler and keeps no warm pool, its running clusters stay)."""
    row = conn.execute(_NODE_SQL, {"name": node, "host": host, "gap": GAP_FACTOR * interval}).fetchone()
    return bool(row["draining"])


def set_draining(conn: psycopg.Connection, node: str, draining: bool) -> bool:
    """Drain a node (or stop draining it); False when no such node ever reported."""
    return conn.execute("UPDATE nodes SET draining = %s WHERE name = %s", (draining, node)).rowcount == 1


def start_node(conn: psycopg.Connection, node: str, host: str, interval: float) -> None:
    """This node's worker (re)started: report the node and begin its new incarnation
    (``nodes.started_at``). Whatever the node ran before, it must show again that it lives
    (gatewayha.warm_pool: pooled schedulers are not handed out until verified)."""
    with conn.transaction():
        report_node(conn, node, host, interval)
        conn.execute("UPDATE nodes SET started_at = now() WHERE name = %s", (node,))


def report_api(conn: psycopg.Connection, name: str) -> None:
    conn.execute(_API_SQL, {"name": name, "gap": GAP_FACTOR * API_INTERVAL})


def node_steady(conn: psycopg.Connection, node: str, seconds: float) -> bool:
    """This node's worker has reported without a gap for at least ``seconds``."""
    row = conn.execute(
        "SELECT up_since <= now() - make_interval(secs => %s) AS steady FROM nodes WHERE name = %s",
        (seconds, node),
    ).fetchone()
    return bool(row and row["steady"])


def heartbeats_reliable(conn: psycopg.Connection, seconds: float) -> bool:
    """Scheduler heartbeats could have arrived during the last ``seconds``: some API instance
    is up now and has been up, without a gap, for that long. True when no instance ever
    reported (nothing to go by: trust the heartbeats)."""
    row = conn.execute(
        """
        SELECT NOT EXISTS (SELECT 1 FROM api_instances)
            OR EXISTS (SELECT 1 FROM api_instances
                       WHERE last_seen > now() - make_interval(secs => %(stale)s)
                         AND up_since <= now() - make_interval(secs => %(seconds)s)) AS reliable
        """,
        {"stale": GAP_FACTOR * API_INTERVAL, "seconds": seconds},
    ).fetchone()
    return bool(row["reliable"])


class ApiReporter:
    """A daemon thread in each API process: report this instance every API_INTERVAL seconds."""

    def __init__(self, pool, node: str):
        self.pool = pool
        self.name = f"{node}:{os.getpid()}"
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="gatewayha-liveness", daemon=True)

    def start(self) -> ApiReporter:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(5)

    def beat(self) -> None:
        with self.pool.connection(timeout=API_INTERVAL) as conn:
            report_api(conn, self.name)

    def _run(self) -> None:
        while not self.stopped.is_set():
            try:
                self.beat()
            except Exception as e:  # noqa: BLE001 - the database may be away; keep trying
                log.debug("liveness report failed: %s", e)
            self.stopped.wait(API_INTERVAL)
