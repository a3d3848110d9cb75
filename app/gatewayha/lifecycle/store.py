"""Every cluster and worker status change, in Postgres: each function runs its named SQL
(``sql/*.sql``) inside the caller's transaction, refuses a transition the table does not
allow (IllegalTransition), and NOTIFYs the cluster-changed channel where a change matters to
routes or long polls."""

from __future__ import annotations

import logging
from functools import cache
from importlib import resources

import psycopg

from gatewayha.jobs import queue
from gatewayha.lifecycle.reasons import StopReason
from gatewayha.lifecycle.status import (
    ACTIVE,
    STOP_TARGETS,
    ClusterStatus,
    IllegalTransition,
    WorkerStatus,
    check_cluster,
    check_worker,
    cluster_sources,
    names,
    worker_sources,
)

log = logging.getLogger("gatewayha.lifecycle")

# NOTIFYed with a cluster's name whenever it changed in a way HAProxy routes or a long poll
# care about. Until this release the channel was called "gatewayha_routes" (it never meant
# HAProxy routes alone); for one release both are NOTIFYed and listened on, so nodes of the
# previous release keep hearing nodes of this one and the other way round during a rolling
# upgrade. Drop LEGACY_CHANNEL in the release after.
CLUSTER_CHANGED = "gatewayha_cluster_changed"
LEGACY_CHANNEL = "gatewayha_routes"
CHANNELS = (CLUSTER_CHANGED, LEGACY_CHANNEL)


@cache
def sql(name: str) -> str:
    return resources.files("gatewayha.lifecycle").joinpath("sql", f"{name}.sql").read_text()


def notify_changed(conn: psycopg.Connection, cluster: str) -> None:
    conn.execute(
        sql("notify_cluster_changed"),
        {"channel": CLUSTER_CHANGED, "legacy_channel": LEGACY_CHANNEL, "cluster": cluster},
    )


def stop_target(failed: bool) -> ClusterStatus:
    """What a stop ends in: FAILED when the stop is a failure, else STOPPED."""
    return ClusterStatus.FAILED if failed else ClusterStatus.STOPPED


def stop_cluster(conn: psycopg.Connection, name: str, reason: StopReason | str, failed: bool = False) -> bool:
    """Move an active cluster towards its stop target (STOPPED, or FAILED when the reason is a
    failure: ``reason.failed``, or ``failed`` with a plain text); idempotent. False when the
    cluster is unknown or already ended.

    A cluster not yet launched (no node and no launched_at) ends at once (its start job sees
    it is no longer PENDING and does nothing); a launched one goes STOPPING, with the stop
    target stored on its row, and its node stops the processes (job stop_cluster; any node,
    for a backend that is not node-bound: then the cluster has no node). A failure while a
    plain stop is under way raises the target to FAILED.
    """
    if isinstance(reason, StopReason):
        reason, failed = reason.text, reason.failed
    target = stop_target(failed)
    with conn.transaction():
        row = conn.execute(sql("lock_cluster"), {"name": name}).fetchone()
        if row is None or row["status"] not in ACTIVE:
            return False
        status = row["status"]
        if status == ClusterStatus.STOPPING and (not failed or row["stop_target"] == ClusterStatus.FAILED):
            return True
        if row["node"] is None and row["launched_at"] is None:
            check_cluster(status, target)
            conn.execute(sql("end_cluster"), {"name": name, "target": target, "reason": reason, "from": [status]})
            stop_workers(conn, name)
        else:
            if status != ClusterStatus.STOPPING:
                check_cluster(status, ClusterStatus.STOPPING)
            conn.execute(
                sql("request_stop"),
                {"name": name, "stopping": ClusterStatus.STOPPING, "target": target, "reason": reason,
                 "from": [status]},
            )  # fmt: skip
            queue.enqueue(
                conn,
                "stop_cluster",
                # "final": what a job runner of the previous release reads (it has no stop_target).
                {"cluster": name, "final": str(target), "reason": reason},
                queue=queue.node_queue(row["node"]) if row["node"] else "any",
                cluster=name,
                dedupe_key=f"stop_cluster:{name}",
            )
        notify_changed(conn, name)
    return True


def finish_stop(conn: psycopg.Connection, name: str, fallback: str, reason: str | None) -> str | None:
    """The node stopped a STOPPING cluster's processes: it ends at its stop target (``fallback``
    when the stop came from a release that stored none), its workers STOPPED. Returns the
    status it ended in, None when it was not STOPPING (ended already: nothing changes)."""
    if fallback not in STOP_TARGETS:
        raise IllegalTransition(f"a stop may not end in {fallback}")
    with conn.transaction():
        row = conn.execute(
            sql("finish_stop"),
            {"name": name, "fallback": fallback, "reason": reason, "stopping": ClusterStatus.STOPPING},
        ).fetchone()
        stop_workers(conn, name)
        notify_changed(conn, name)
    return None if row is None else row["status"]


def mark_running(conn: psycopg.Connection, name: str, status: str, addresses: dict) -> None:
    """PENDING → RUNNING at the scheduler's reported addresses (``scheduler_address``,
    ``dashboard_address``, ``api_address``); NOTIFYs. ``status``: the locked row's status."""
    check_cluster(status, ClusterStatus.RUNNING)
    conn.execute(
        sql("mark_running"),
        {
            "name": name,
            "running": ClusterStatus.RUNNING,
            "from": cluster_sources(ClusterStatus.RUNNING),
            "scheduler_address": addresses["scheduler_address"],
            "dashboard_address": addresses["dashboard_address"],
            "api_address": addresses["api_address"],
        },
    )
    notify_changed(conn, name)


def end_node_clusters(conn: psycopg.Connection, node: str, reason: str) -> list[dict]:
    """A lost node's active clusters end now: a STOPPING one at its stop target, any other
    FAILED; their workers STOPPED, each NOTIFYed. Returns [{name, status}]."""
    params = {"node": node, "active": names(ACTIVE)}
    conn.execute(sql("lock_node_clusters"), params)
    ended = conn.execute(
        sql("end_node_clusters"),
        {
            **params,
            "reason": reason,
            "stopping": ClusterStatus.STOPPING,
            "stopped": ClusterStatus.STOPPED,
            "failed": ClusterStatus.FAILED,
        },
    ).fetchall()
    for r in ended:
        stop_workers(conn, r["name"])
        notify_changed(conn, r["name"])
    return ended


def end_all(conn: psycopg.Connection, reason: StopReason) -> list[dict]:
    """Every active cluster ends now, its processes stopped with the whole gateway (the local
    stack's ``down``; never while job runners run): each not yet stopping is stopped
    (STOPPING, target STOPPED), then every STOPPING one ends at its target. Returns
    [{name, status}]."""
    with conn.transaction():
        conn.execute(
            sql("request_stop_all"),
            {"stopping": ClusterStatus.STOPPING, "stopped": ClusterStatus.STOPPED, "reason": reason.text,
             "from": cluster_sources(ClusterStatus.STOPPING)},
        )  # fmt: skip
        ended = conn.execute(
            sql("end_stopping"), {"stopping": ClusterStatus.STOPPING, "stopped": ClusterStatus.STOPPED}
        ).fetchall()
        for r in ended:
            stop_workers(conn, r["name"])
            notify_changed(conn, r["name"])
    return ended


def stop_workers(conn: psycopg.Connection, cluster: str, worker: str | None = None) -> int:
    """The one "stop every worker of a cluster" (or the one named): each active worker ends
    STOPPED (their processes went with the cluster, or were stopped). Returns how many."""
    cur = conn.execute(
        sql("stop_workers"),
        {
            "cluster": cluster,
            "worker": worker,
            "stopped": WorkerStatus.STOPPED,
            "from": worker_sources(WorkerStatus.STOPPED),
        },
    )
    return cur.rowcount


def set_worker_status(conn: psycopg.Connection, cluster: str, worker: str, current: str, new: WorkerStatus) -> bool:
    """One worker from ``current`` (as read under the caller's lock) to ``new``: RUNNING once
    its scheduler lists it, STOPPING when it must go. True when the row changed."""
    check_worker(current, new)
    cur = conn.execute(
        sql("set_worker_status"),
        {"cluster": cluster, "worker": worker, "new": new, "from": worker_sources(new)},
    )
    return cur.rowcount > 0


def fail_worker(conn: psycopg.Connection, cluster: str, worker: str) -> bool:
    """A live worker whose process its backend reports gone ends FAILED (the scheduler's next
    heartbeat asks for another if it still wants one). True when the row changed."""
    cur = conn.execute(
        sql("fail_worker"),
        {
            "cluster": cluster,
            "worker": worker,
            "failed": WorkerStatus.FAILED,
            "from": worker_sources(WorkerStatus.FAILED),
        },
    )
    return cur.rowcount > 0
