"""What each job kind does. A handler returns normally when the job is done,
raises Defer to hand it back unharmed, raises MalformedJob (before doing anything) when its
payload is not one it can run, which fails the job at once for good, and raises anything else
to retry it with backoff. Handlers are idempotent: a job re-run after a crash finds the
work done (or half done) and finishes it without doing it twice.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from psycopg.types.json import Jsonb

from gatewayha import clusters, lifecycle, liveness, tls, validate, warm_pool
from gatewayha.backends.base import Backend, SchedulerSpec, WorkerSpec
from gatewayha.config import Settings
from gatewayha.errors import BackendRefused, BackendUnavailable, GatewayError, InvalidValue, MalformedJob
from gatewayha.jobs import queue
from gatewayha.jobs.queue import Job
from gatewayha.lifecycle import ClusterStatus, WorkerStatus
from gatewayha.options import ClusterConfig

log = logging.getLogger("gatewayha.jobs")


class Defer(Exception):
    """Put the job back without counting a failure (optionally on another queue)."""

    def __init__(self, delay: float = 0.0, queue: str | None = None):
        super().__init__(f"deferred {delay}s to {queue}")
        self.delay = delay
        self.queue = queue


@dataclass
class Context:
    settings: Settings
    pool: object
    backend: Backend
    node: str
    sync_routes: Callable[[], None] | None = None
    stopping: threading.Event = field(default_factory=threading.Event)

    @property
    def secrets(self) -> tuple[str, ...]:
        """The key ring: what was encrypted under the current or a previous server secret."""
        return self.settings.server.secrets


T = TypeVar("T")


def _field(job: Job, key: str, check: Callable[[object], T]) -> T:
    """``job.payload[key]`` as ``check`` accepts it; MalformedJob (failed at once, never retried)
    when it is missing or not of its kind: running the job again would not change it."""
    try:
        return check(job.payload.get(key))
    except InvalidValue as exc:
        raise MalformedJob(f"{key}: {exc}") from None


def _cluster_name(job: Job) -> str:
    return _field(job, "cluster", validate.cluster_name)


def _worker_name(job: Job, cluster: str) -> str:
    return _field(job, "worker", lambda w: validate.worker_name(w, cluster))


def _one_of(*allowed: object) -> Callable[[object], object]:
    def check(value: object) -> object:
        if value not in allowed:
            raise InvalidValue(f"one of {allowed}, got {value!r}")
        return value

    return check


def _optional_text(value: object) -> str | None:
    if value is not None and not isinstance(value, str):
        raise InvalidValue(f"a string, got {value!r}")
    return value


def _seconds(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidValue(f"a number, got {value!r}")
    return float(value)


def _node_alive(conn, node: str, timeout: float) -> bool:
    row = conn.execute(
        "SELECT last_seen > now() - make_interval(secs => %s) AS alive FROM nodes WHERE name = %s",
        (timeout, node),
    ).fetchone()
    return bool(row and row["alive"])


def start_cluster(ctx: Context, job: Job) -> None:
    name = _cluster_name(job)
    with ctx.pool.connection() as conn, conn.transaction():
        row = conn.execute(
            "SELECT name, owner, status, node, config, tls_cert, tls_key_enc, token_enc FROM clusters"
            " WHERE name = %s FOR UPDATE",
            (name,),
        ).fetchone()
        if row is None or row["status"] != ClusterStatus.PENDING:
            return  # stopped (or gone) before it started: nothing to do
        bound = ctx.backend.node_bound
        if bound and row["node"] not in (None, ctx.node):
            # Placed on another node by an earlier claim. While that node lives,
            # only it may start (or find running) the scheduler: no second copy.
            if _node_alive(conn, row["node"], ctx.settings.jobs.node_timeout):
                raise Defer(queue=queue.node_queue(row["node"]))
            log.warning("cluster %s: node %s is gone, starting here instead", name, row["node"])
        # Placement is committed before the launch, so a crash after the launch
        # leaves a record of where the scheduler may be running. No gateway node owns the
        # processes of a backend that is not node-bound: node stays NULL, any node stops it.
        # A cluster of a backend that is not node-bound keeps its first launch time: a start
        # that waits for an unavailable backend still ends at cluster.start_timeout.
        conn.execute(
            "UPDATE clusters SET node = %s, launched_at = CASE WHEN %s THEN now() ELSE coalesce(launched_at, now()) END"
            " WHERE name = %s",
            (ctx.node if bound else None, bound, name),
        )
    spec = SchedulerSpec(
        cluster_name=name,
        token=clusters.cluster_token(ctx.secrets, row),
        api_url=ctx.settings.server.api_url,
        tls_cert=row["tls_cert"],
        tls_key=tls.decrypt_key(ctx.secrets, row["tls_key_enc"], name),
        config=ClusterConfig.from_json(row["config"]),
        user=row["owner"],
    )
    try:
        state = ctx.backend.start_scheduler(spec)
    except BackendRefused as exc:
        _refused(ctx, name, exc)
        return
    except BackendUnavailable as exc:
        log.warning("cluster %s: waiting for the backend: %s", name, exc)
        raise Defer(UNAVAILABLE_RETRY_S) from None
    with ctx.pool.connection() as conn:
        conn.execute("UPDATE clusters SET scheduler_state = %s WHERE name = %s", (Jsonb(state), name))
    log.info("cluster %s: scheduler started by %s", name, ctx.node)
    if bound:
        _hold_launch_slot(
            ctx,
            f"cluster {name}: scheduler",
            "SELECT status = %s AS starting FROM clusters WHERE name = %s",
            (ClusterStatus.PENDING, name),
            lambda: ctx.backend.scheduler_running(name, state),
        )


STARTED_POLL_S = 0.1
# How soon a start the backend could not take (its controller down) is tried again.
UNAVAILABLE_RETRY_S = 2.0


def _hold_launch_slot(ctx: Context, what: str, starting_sql: str, params: tuple, running: Callable[[], bool]) -> None:
    """Return once the launched process has reported (``starting_sql`` no longer says so), has
    died, or the start timeout ran out (check_clusters then gives up on it): until then this
    job keeps one of the node's launch slots (jobs.launch_slots), so launches queue instead
    of piling up on the CPU."""
    deadline = time.monotonic() + ctx.settings.cluster.start_timeout
    polls = 0
    while not ctx.stopping.is_set() and time.monotonic() < deadline:
        with ctx.pool.connection() as conn:
            row = conn.execute(starting_sql, params).fetchone()
        if row is None or not row["starting"]:
            return
        # The process check may be a `systemctl` call: once a second is enough.
        if polls % 10 == 9 and not running():
            log.warning("%s exited before it reported", what)
            return
        polls += 1
        ctx.stopping.wait(STARTED_POLL_S)


def stop_cluster(ctx: Context, job: Job) -> None:
    name = _cluster_name(job)
    # The stop target is on the cluster's row; "final" is only read for a stop a node of the
    # previous release requested (it stored no target).
    final = _field(job, "final", _one_of(None, *lifecycle.names(lifecycle.STOP_TARGETS))) or ClusterStatus.STOPPED
    reason = _field(job, "reason", _optional_text)
    with ctx.pool.connection() as conn:
        row = conn.execute("SELECT scheduler_state FROM clusters WHERE name = %s", (name,)).fetchone()
        workers = conn.execute("SELECT name, state FROM workers WHERE cluster = %s", (name,)).fetchall()
    ctx.backend.stop_cluster(name, row and row["scheduler_state"], {w["name"]: w["state"] for w in workers})
    with ctx.pool.connection() as conn:
        ended = lifecycle.finish_stop(conn, name, final, reason)
    log.info("cluster %s: %s (%s)", name, ended or "ended already", reason)


def _refused(ctx: Context, name: str, exc: Exception) -> None:
    """The backend refused the cluster's start for good (BackendRefused): it fails now, with the
    backend's words, instead of being retried."""
    log.warning("cluster %s: the backend refused it: %s", name, exc)
    with ctx.pool.connection() as conn:
        lifecycle.stop_cluster(conn, name, str(exc)[:500], failed=True)


_WORKER_ROW = (
    "SELECT c.name, c.owner, c.status, c.node, c.config, c.tls_cert, c.tls_key_enc, c.token_enc,"
    " c.scheduler_address, w.name AS worker, w.status AS wstatus"
    " FROM clusters c JOIN workers w ON w.cluster = c.name"
)


def _worker_spec(ctx: Context, row: dict) -> WorkerSpec:
    name = row["name"]
    return WorkerSpec(
        cluster_name=name,
        worker_name=row["worker"],
        scheduler_address=row["scheduler_address"],
        token=clusters.cluster_token(ctx.secrets, row),
        tls_cert=row["tls_cert"],
        tls_key=tls.decrypt_key(ctx.secrets, row["tls_key_enc"], name),
        config=ClusterConfig.from_json(row["config"]),
        user=row["owner"],
    )


def _start_workers_together(ctx: Context, name: str, worker: str) -> None:
    """A backend that is not node-bound starts the workers of one scale-up together (one job
    array on Slurm): the first start_worker job of the cluster takes every pending worker not
    launched yet, under a lock per cluster; the others find theirs launched and return."""
    with ctx.pool.connection() as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('gatewayha.start_workers'), hashtext(%s))", (name,))
        rows = conn.execute(
            _WORKER_ROW + " WHERE c.name = %s AND c.status = %s AND w.status = %s AND w.state IS NULL ORDER BY w.name",
            (name, ClusterStatus.RUNNING, WorkerStatus.PENDING),
        ).fetchall()
        if worker not in {r["worker"] for r in rows}:
            return  # launched by another job's batch, stopped, or the cluster ended
        try:
            states = ctx.backend.start_workers([_worker_spec(ctx, r) for r in rows])
        except BackendRefused as exc:
            refused = exc
        except BackendUnavailable as exc:
            log.warning("cluster %s: workers wait for the backend: %s", name, exc)
            raise Defer(UNAVAILABLE_RETRY_S) from None
        else:
            refused = None
            # Saved in the transaction that holds the lock: the next job sees them launched.
            for r, state in zip(rows, states, strict=True):
                conn.execute(
                    "UPDATE workers SET state = %s WHERE cluster = %s AND name = %s", (Jsonb(state), name, r["worker"])
                )
    if refused is not None:
        _refused(ctx, name, refused)
        return
    log.info("cluster %s: %d workers started together by %s", name, len(rows), ctx.node)


def start_worker(ctx: Context, job: Job) -> None:
    name = _cluster_name(job)
    worker = _worker_name(job, name)
    if not ctx.backend.node_bound:
        _start_workers_together(ctx, name, worker)
        return
    with ctx.pool.connection() as conn:
        row = conn.execute(_WORKER_ROW + " WHERE c.name = %s AND w.name = %s", (name, worker)).fetchone()
    if row is None or row["status"] != ClusterStatus.RUNNING or row["wstatus"] != WorkerStatus.PENDING:
        return
    if row["node"] is not None and row["node"] != ctx.node:
        raise Defer(queue=queue.node_start_queue(row["node"]))
    state = ctx.backend.start_worker(_worker_spec(ctx, row))
    with ctx.pool.connection() as conn:
        conn.execute("UPDATE workers SET state = %s WHERE cluster = %s AND name = %s", (Jsonb(state), name, worker))
    # Running once its scheduler lists it (gatewayha's scheduler preload reports a join at once).
    _hold_launch_slot(
        ctx,
        f"cluster {name}: worker {worker}",
        "SELECT w.status = %s AND c.status = %s AS starting"
        " FROM workers w JOIN clusters c ON c.name = w.cluster WHERE w.cluster = %s AND w.name = %s",
        (WorkerStatus.PENDING, ClusterStatus.RUNNING, name, worker),
        lambda: ctx.backend.worker_running(name, worker, state),
    )


def stop_worker(ctx: Context, job: Job) -> None:
    name = _cluster_name(job)
    worker = _worker_name(job, name)
    with ctx.pool.connection() as conn:
        row = conn.execute("SELECT state FROM workers WHERE cluster = %s AND name = %s", (name, worker)).fetchone()
    ctx.backend.stop_worker(name, worker, row and row["state"])
    with ctx.pool.connection() as conn:
        lifecycle.stop_workers(conn, name, worker)


# --- periodic tasks: each tick runs once across all nodes -------------------


def check_clusters(ctx: Context, job: Job) -> None:
    """Fail clusters whose scheduler went silent or never started; end overlong ones."""
    c = ctx.settings.cluster
    with ctx.pool.connection() as conn:
        # After an outage of every API instance no heartbeat could arrive: wait until one
        # has been back for a full heartbeat timeout before judging silence (gatewayha.liveness).
        reliable = liveness.heartbeats_reliable(conn, c.heartbeat_timeout)
        rows = conn.execute(
            """
            SELECT name,
                   CASE
                     WHEN status = %(running)s AND %(reliable)s
                          AND last_heartbeat < now() - make_interval(secs => %(hb)s)
                       THEN 'no_heartbeat'
                     WHEN status = %(pending)s AND launched_at < now() - make_interval(secs => %(start)s)
                       THEN 'did_not_start'
                     WHEN status = %(pending)s AND launched_at IS NULL
                          AND created_at < now() - make_interval(secs => %(queued)s)
                       THEN 'never_placed'
                   END AS failure,
                   %(life)s > 0 AND created_at < now() - make_interval(secs => %(life)s) AS expired,
                   scheduler_state->>'waiting' AS waiting
            FROM clusters
            WHERE status = ANY(%(live)s)
            """,
            {
                "running": ClusterStatus.RUNNING,
                "pending": ClusterStatus.PENDING,
                "live": lifecycle.names(lifecycle.LIVE),
                "hb": c.heartbeat_timeout,
                "start": c.start_timeout,
                "queued": c.queue_timeout,
                "life": c.max_lifetime,
                "reliable": reliable,
            },
        ).fetchall()
        failures = {
            "no_heartbeat": lifecycle.reasons.no_heartbeat(c.heartbeat_timeout),
            "did_not_start": lifecycle.reasons.did_not_start(c.start_timeout),
            "never_placed": lifecycle.reasons.never_placed(c.queue_timeout),
        }
        for r in rows:
            if r["failure"]:
                reason = failures[r["failure"]]
                if r["failure"] == "did_not_start" and r["waiting"]:
                    reason = lifecycle.reasons.did_not_start(c.start_timeout, r["waiting"])
                log.warning("cluster %s failed: %s", r["name"], reason)
                clusters.stop_cluster(conn, r["name"], reason)
            elif r["expired"]:
                clusters.stop_cluster(conn, r["name"], lifecycle.reasons.max_lifetime(c.max_lifetime))
    if not ctx.backend.node_bound:
        check_processes(ctx)


def check_processes(ctx: Context) -> None:
    """A backend that is not node-bound: one batched check of every launched scheduler and
    worker no gateway node owns (node-bound clusters are judged by heartbeats and node
    liveness). A dead scheduler fails its cluster with the backend's reason; a dead worker is
    marked FAILED, and the scheduler's next heartbeat starts another if it still wants one.
    Only processes whose state was saved are checked: before that, the launch may not have
    happened yet ("did not start within" covers a start that never saves one)."""
    with ctx.pool.connection() as conn:
        scheds = conn.execute(
            "SELECT name, scheduler_state FROM clusters WHERE status = ANY(%s)"
            " AND node IS NULL AND scheduler_state IS NOT NULL ORDER BY name",
            (lifecycle.names(lifecycle.LIVE),),
        ).fetchall()
        workers = conn.execute(
            "SELECT w.cluster, w.name, w.state FROM workers w JOIN clusters c ON c.name = w.cluster"
            " WHERE w.status = ANY(%s) AND c.status = %s AND c.node IS NULL"
            " AND w.state IS NOT NULL ORDER BY w.cluster, w.name",
            (lifecycle.names(lifecycle.LIVE_WORKERS), ClusterStatus.RUNNING),
        ).fetchall()
    sched_status = ctx.backend.check_schedulers([(r["name"], r["scheduler_state"]) for r in scheds]) if scheds else []
    worker_status = (
        ctx.backend.check_workers([(r["cluster"], r["name"], r["state"]) for r in workers]) if workers else []
    )
    with ctx.pool.connection() as conn:
        for r, st in zip(scheds, sched_status, strict=True):
            if st.state is not None and st.state != r["scheduler_state"]:
                conn.execute("UPDATE clusters SET scheduler_state = %s WHERE name = %s", (Jsonb(st.state), r["name"]))
            if not st.alive:
                reason = lifecycle.reasons.scheduler_gone(st.reason)
                log.warning("cluster %s failed: %s", r["name"], reason)
                clusters.stop_cluster(conn, r["name"], reason)
        for r, st in zip(workers, worker_status, strict=True):
            if st.state is not None and st.state != r["state"]:
                conn.execute(
                    "UPDATE workers SET state = %s WHERE cluster = %s AND name = %s",
                    (Jsonb(st.state), r["cluster"], r["name"]),
                )
            if not st.alive:
                log.warning("cluster %s: worker %s gone: %s", r["cluster"], r["name"], st.reason or "not running")
                lifecycle.fail_worker(conn, r["cluster"], r["name"])


def sweep_nodes(ctx: Context, job: Job) -> None:
    """A node unseen for node_timeout is dead: its clusters fail, its queued jobs are dropped.

    Only clusters of a node-bound backend have a node (``clusters.node``): those of a backend
    whose processes outlive a gateway node (node stays NULL) are never failed here."""
    timeout = ctx.settings.jobs.node_timeout
    with ctx.pool.connection() as conn:
        # Only a node that has itself reported without a gap for node_timeout judges the
        # others: after a database outage or a restart of every worker, every node looks
        # unseen until it reports again (gatewayha.liveness).
        if not liveness.node_steady(conn, ctx.node, timeout):
            log.info("sweep_nodes: %s has not been up for %g s without a gap; not judging others", ctx.node, timeout)
            return
        dead = [
            r["name"]
            for r in conn.execute(
                "SELECT name FROM nodes WHERE last_seen < now() - make_interval(secs => %s)", (timeout,)
            ).fetchall()
        ]
        for node in dead:
            with conn.transaction():
                # Re-check under lock: the node may have come back meanwhile.
                row = conn.execute(
                    "SELECT last_seen < now() - make_interval(secs => %s) AS dead FROM nodes"
                    " WHERE name = %s FOR UPDATE",
                    (timeout, node),
                ).fetchone()
                if not row or not row["dead"]:
                    continue
                reason = lifecycle.reasons.node_lost(node, timeout).text
                # Its clusters end now: a stopping one at its stop target (a failing one stays
                # FAILED), any other FAILED (gatewayha.lifecycle).
                for r in lifecycle.end_node_clusters(conn, node, reason):
                    log.warning("cluster %s: %s (%s)", r["name"], r["status"], reason)
                conn.execute("DELETE FROM warm_pool WHERE node = %s", (node,))
                for j in conn.execute(
                    "SELECT id FROM jobs WHERE queue IN (%s, %s) FOR UPDATE SKIP LOCKED",
                    (queue.node_queue(node), queue.node_start_queue(node)),
                ).fetchall():
                    queue.cancel(conn, j["id"], reason)
        # Forget nodes gone for a day.
        conn.execute("DELETE FROM nodes WHERE last_seen < now() - interval '1 day'")
        conn.execute("DELETE FROM api_instances WHERE last_seen < now() - interval '1 day'")


def cleanup(ctx: Context, job: Job) -> None:
    keep = ctx.settings.cluster.stopped_retention
    with ctx.pool.connection() as conn:
        conn.execute(
            "DELETE FROM clusters WHERE status = ANY(%s) AND stopped_at < now() - make_interval(secs => %s)",
            (lifecycle.names(lifecycle.ENDED), keep),
        )
        conn.execute("DELETE FROM job_log WHERE finished_at < now() - make_interval(secs => %s)", (keep,))


def _fan_out(ctx: Context, kind: str) -> None:
    """Enqueue `kind` once on every live node's own queue (node-local work: HAProxy, processes)."""
    with ctx.pool.connection() as conn:
        for r in conn.execute(
            "SELECT name FROM nodes WHERE last_seen > now() - make_interval(secs => %s)",
            (ctx.settings.jobs.node_timeout,),
        ).fetchall():
            queue.enqueue(conn, kind, {}, queue=queue.node_queue(r["name"]), dedupe_key=f"{kind}:{r['name']}")


def route_resync(ctx: Context, job: Job) -> None:
    """Full reconcile on every node: each keeps its own HAProxy and its own processes."""
    _fan_out(ctx, "node_reconcile")


def warm_pool_tick(ctx: Context, job: Job) -> None:
    """Every node tops up (or trims) its own warm pool (a node-bound backend's only: a pooled
    scheduler is claimed by the node it runs on)."""
    if ctx.settings.cluster.warm_pool_size <= 0 or not ctx.backend.node_bound:
        with ctx.pool.connection() as conn:
            if conn.execute("SELECT 1 FROM warm_pool LIMIT 1").fetchone() is None:
                return  # no pool configured and none left to drain
    _fan_out(ctx, "refill_pool")


def verify_pool(ctx: Context) -> list[str]:
    """Check this node's pooled schedulers left from before its worker started (see
    warm_pool): the live ones are claimable again, the dead ones are dropped (and their
    files removed). Returns the names dropped."""
    with ctx.pool.connection() as conn:
        names = warm_pool.unverified(conn, ctx.node)
    if not names:
        return []
    checked = ctx.backend.check_schedulers([(n, None) for n in names])  # one call; pooled: no state saved
    live = [n for n, st in zip(names, checked, strict=True) if st.alive]
    with ctx.pool.connection() as conn:
        dead = warm_pool.record_verified(conn, ctx.node, live, [n for n in names if n not in live])
    for name in dead:
        ctx.backend.stop_cluster(name)
    log.info("warm pool on %s: %d pooled scheduler(s) from before this start alive, %d dead (dropped)",
             ctx.node, len(live), len(dead))  # fmt: skip
    return dead


def refill_pool(ctx: Context, job: Job) -> None:
    verify_pool(ctx)
    settings = ctx.settings
    if not ctx.backend.node_bound:  # no warm pool: what is left of one (another backend's) is trimmed
        settings = dataclasses.replace(settings, cluster=dataclasses.replace(settings.cluster, warm_pool_size=0))
    with ctx.pool.connection() as conn:
        to_start, to_stop = warm_pool.plan_refill(conn, settings, ctx.node)
    for name in to_stop:
        ctx.backend.stop_cluster(name)
    for entry in to_start:
        ctx.backend.start_scheduler(
            SchedulerSpec(
                cluster_name=entry["name"],
                token=entry["token"],
                api_url=ctx.settings.server.api_url,
                tls_cert=entry["cert"],
                tls_key=entry["key"],
                config=entry["config"],
            )
        )
    if to_start or to_stop:
        log.info("warm pool on %s: started %d, stopped %d", ctx.node, len(to_start), len(to_stop))


def node_reconcile(ctx: Context, job: Job) -> None:
    """Make this node's HAProxy equal to Postgres and stop processes no active cluster owns."""
    if ctx.sync_routes is not None:
        ctx.sync_routes()
    reap_orphans(ctx)
    ctx.backend.prune_logs(ctx.settings.cluster.stopped_retention)


def reap_orphans(ctx: Context) -> list[str]:
    """Stop what this node runs for no active cluster of its own (a node-bound backend's only:
    elsewhere a cluster has no node, and another node may be starting it right now)."""
    if not ctx.backend.node_bound:
        return []
    local = ctx.backend.local_clusters()
    if not local:
        return []
    # One statement, one snapshot: a create that claims a pooled scheduler moves its name from
    # warm_pool to clusters in one transaction; two separate reads could miss it in both.
    with ctx.pool.connection() as conn:
        orphans = [
            r["name"]
            for r in conn.execute(
                """
                SELECT l.name FROM unnest(%(local)s::text[]) AS l(name)
                WHERE NOT EXISTS (SELECT 1 FROM clusters c WHERE c.name = l.name AND c.node = %(node)s
                                  AND c.status = ANY(%(active)s))
                  AND NOT EXISTS (SELECT 1 FROM warm_pool w WHERE w.name = l.name AND w.node = %(node)s)
                ORDER BY l.name
                """,
                {"local": sorted(local), "node": ctx.node, "active": lifecycle.names(lifecycle.ACTIVE)},
            ).fetchall()
        ]
    for name in orphans:
        log.warning("cluster %s: processes on %s that no active cluster owns; stopping them", name, ctx.node)
        ctx.backend.stop_cluster(name)
    return orphans


def probe(ctx: Context, job: Job) -> None:
    """An operator's end-to-end check of the queue: runs for `seconds` (at most 60), then is done."""
    seconds = _field(job, "seconds", lambda v: _seconds(0 if v is None else v))
    time.sleep(min(max(0.0, seconds), 60.0))
    log.info("probe job %s done by %s", job.id, ctx.node)


HANDLERS: dict[str, Callable[[Context, Job], None]] = {
    "start_cluster": start_cluster,
    "stop_cluster": stop_cluster,
    "start_worker": start_worker,
    "stop_worker": stop_worker,
    "check_clusters": check_clusters,
    "sweep_nodes": sweep_nodes,
    "cleanup": cleanup,
    "route_resync": route_resync,
    "node_reconcile": node_reconcile,
    "probe": probe,
    "warm_pool": warm_pool_tick,
    "refill_pool": refill_pool,
}


class UnknownJobKind(GatewayError, LookupError):
    """A kind this release has no handler for: during a rolling upgrade, one a newer node
    enqueued. Not malformed: retried with backoff like any failure, so a node that knows the
    kind takes it; dead after max_attempts if none does."""


def handler_for(job: Job) -> Callable[[Context, Job], None]:
    """The handler of ``job``; UnknownJobKind for a kind without one, MalformedJob for a payload
    that is not a JSON object (each handler checks its own keys before it does anything)."""
    fn = HANDLERS.get(job.kind)
    if fn is None:
        raise UnknownJobKind(f"unknown job kind {job.kind!r} (a newer release's?)")
    if not isinstance(job.payload, dict):
        raise MalformedJob(f"the payload must be a JSON object, got {job.payload!r:.200}")
    return fn


def periodic_tasks(settings: Settings) -> dict[str, float]:
    return {
        "check_clusters": max(1.0, settings.cluster.heartbeat_period),
        "sweep_nodes": max(1.0, settings.jobs.node_timeout / 3),
        "cleanup": 300.0,
        "route_resync": settings.haproxy.resync_interval,
        "warm_pool": max(2.0, settings.cluster.heartbeat_period),
    }
