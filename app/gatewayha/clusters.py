"""Cluster state in Postgres: create, stop, heartbeat, scale limits.

Every function here takes a connection, changes state in one transaction, and
enqueues the background work that follows; none starts a process or talks to
HAProxy. Status changes are gatewayha.lifecycle's (which NOTIFYs the cluster-changed channel).
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import psycopg
from cryptography.exceptions import InvalidTag
from psycopg.types.json import Jsonb

from gatewayha import lifecycle, tls, warm_pool
from gatewayha.auth import secrets as sec
from gatewayha.config import Settings
from gatewayha.errors import Conflict, Forbidden, InvalidValue, LimitExceeded, NotFound, Unprocessable
from gatewayha.jobs import queue
from gatewayha.lifecycle import WorkerStatus
from gatewayha.options import (
    ClusterConfig,
    cluster_config,
    environment_patterns,
    option_specs,
    split_environment,
    validate_options,
)
from gatewayha.validate import ADDRESS_SCHEMES, is_cluster_name, reported_address

log = logging.getLogger("gatewayha.clusters")


@dataclass
class Usage:
    clusters: int
    cores: float
    memory_gib: float


def _usage(conn: psycopg.Connection, user: str, exclude: str | None = None) -> Usage:
    """Resources held by a user's active clusters: each scheduler plus its live workers."""
    row = conn.execute(
        """
        SELECT count(*) AS clusters,
               coalesce(sum((c.config->>'scheduler_cores')::float8
                            + w.n * (c.config->>'worker_cores')::float8), 0) AS cores,
               coalesce(sum((c.config->>'scheduler_memory_gib')::float8
                            + w.n * (c.config->>'worker_memory_gib')::float8), 0) AS memory
        FROM clusters c
        CROSS JOIN LATERAL (
            SELECT count(*) AS n FROM workers
            WHERE cluster = c.name AND status = ANY(%(live_workers)s)
        ) w
        WHERE c.owner = %(user)s AND c.status = ANY(%(active)s)
          AND c.name IS DISTINCT FROM %(exclude)s
        """,
        {
            "user": user,
            "exclude": exclude,
            "active": lifecycle.names(lifecycle.ACTIVE),
            "live_workers": lifecycle.names(lifecycle.LIVE_WORKERS),
        },
    ).fetchone()
    return Usage(row["clusters"], row["cores"], row["memory"])


def _lock_user(conn: psycopg.Connection, user: str) -> None:
    # All limit checks of one user serialise on this row lock, whichever API
    # instance or node runs them, so concurrent creates cannot overshoot.
    if conn.execute("SELECT 1 FROM users WHERE name = %s FOR UPDATE", (user,)).fetchone() is None:
        raise NotFound("Unknown user")


def create_cluster(
    conn: psycopg.Connection,
    settings: Settings,
    user: str,
    options: object,
    idempotency_key: str | None = None,
) -> str:
    """Insert a PENDING cluster and enqueue its start, within the user's limits."""
    opts = validate_options(option_specs(settings), options)
    cfg = cluster_config(settings, opts)
    _, refused = split_environment(cfg.environment, environment_patterns(settings.cluster.environment_allow))
    if refused:
        raise Unprocessable(
            f"environment: {', '.join(sorted(refused)[:10])} may not be set"
            f" (allowed: {settings.cluster.environment_allow})"
        )
    name = secrets.token_hex(16)
    cert, key = tls.new_keypair(name)  # ~1 ms for ECDSA P-256: fine outside the lock
    key_enc = tls.encrypt_key(settings.server.secret, key, name)
    token, token_hash = sec.new_cluster_token()
    token_enc = tls.encrypt_token(settings.server.secret, token, name)
    limits = settings.limits
    with conn.transaction():
        _lock_user(conn, user)
        if idempotency_key is not None:
            row = conn.execute(
                "SELECT cluster FROM idempotency_keys WHERE user_name = %s AND key = %s",
                (user, idempotency_key),
            ).fetchone()
            if row:
                return row["cluster"]
        usage = _usage(conn, user)
        if limits.max_clusters and usage.clusters + 1 > limits.max_clusters:
            raise LimitExceeded(f"Cluster limit reached: {limits.max_clusters} active clusters per user")
        if limits.max_cores and usage.cores + cfg.scheduler_cores > limits.max_cores + 1e-9:
            raise LimitExceeded(f"Core limit reached: {limits.max_cores:g} cores per user")
        if limits.max_memory_gib and usage.memory_gib + cfg.scheduler_memory_gib > limits.max_memory_gib + 1e-9:
            raise LimitExceeded(f"Memory limit reached: {limits.max_memory_gib:g} GiB per user")
        pooled = warm_pool.claim(conn, settings, cfg)
        if pooled is not None:
            # A pre-started scheduler for these options: RUNNING at once, routes published now.
            name = pooled["name"]
            conn.execute(
                """
                INSERT INTO clusters (name, owner, options, config, tls_cert, tls_key_enc, token_hash,
                                      token_enc, node, last_heartbeat)
                VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, now())
                """,
                (
                    name,
                    user,
                    Jsonb(opts),
                    Jsonb(pooled["config"]),
                    pooled["tls_cert"],
                    pooled["tls_key_enc"],
                    pooled["token_hash"],
                    pooled["token_enc"],
                    pooled["node"],
                ),
            )
            lifecycle.mark_running(conn, name, lifecycle.ClusterStatus.PENDING, pooled)
            warm_pool.request_refill(conn, pooled["node"])
        else:
            conn.execute(
                """
                INSERT INTO clusters (name, owner, options, config, tls_cert, tls_key_enc, token_hash, token_enc)
                VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
                """,
                (name, user, Jsonb(opts), Jsonb(cfg.to_json()), cert, key_enc, token_hash, token_enc),
            )
        if idempotency_key is not None:
            conn.execute(
                "INSERT INTO idempotency_keys (user_name, key, cluster) VALUES (%s, %s, %s)",
                (user, idempotency_key, name),
            )
        if pooled is None:
            queue.enqueue(
                conn,
                "start_cluster",
                {"cluster": name},
                queue=queue.START_QUEUE,
                cluster=name,
                dedupe_key=f"start_cluster:{name}",
            )
    return name


CLUSTER_COLUMNS = (
    "name, owner, status, options, config, tls_cert, tls_key_enc, token_hash, token_enc, node,"
    " scheduler_address, dashboard_address, api_address, target_workers, reason, created_at, started_at, stopped_at,"
    " scheduler_state"
)


def cluster_token(secrets: str | Sequence[str], row: dict) -> str:
    """The token a cluster's scheduler holds (the API presents it to the scheduler's /api/comm,
    over TLS: gatewayha.control).

    ``secrets``: the key ring (current first). A legacy row's token is the HMAC under the
    secret of its day, taken to be the current one: rotate once such clusters are gone."""
    if row["token_enc"] is None:
        return sec.legacy_cluster_token(sec.ring(secrets)[0], row["name"])
    return tls.decrypt_token(secrets, row["token_enc"], row["name"])


def reencrypt(conn: psycopg.Connection, settings: Settings) -> dict[str, int]:
    """Move every stored TLS key and cluster token (clusters and warm pool, any status) to the
    current server secret; return counts {"checked", "moved", "unreadable"}. Idempotent, safe
    while the service runs (each row under its lock); after it, previous_secrets may go."""
    current, ring = settings.server.secret, settings.server.secrets
    counts = {"checked": 0, "moved": 0, "unreadable": 0}
    for table in ("clusters", "warm_pool"):  # fixed names, never input
        names = [r["name"] for r in conn.execute(f"SELECT name FROM {table}").fetchall()]
        for name in names:
            with conn.transaction():
                row = conn.execute(
                    f"SELECT tls_key_enc, token_enc FROM {table} WHERE name = %s FOR UPDATE",
                    (name,),
                ).fetchone()
                if row is None:
                    continue  # deleted meanwhile
                counts["checked"] += 1
                fields = {"tls_key_enc": name, "token_enc": f"{name}:token"}
                new = {}
                try:
                    for column, bound in fields.items():
                        blob = row[column]
                        if blob is not None and tls.needs_reencryption(current, blob, bound):
                            new[column] = tls.encrypt_key(current, tls.decrypt_key(ring, blob, bound), bound)
                except InvalidTag:
                    counts["unreadable"] += 1
                    log.error("%s %s: encrypted under a secret not in server.secret/previous_secrets", table, name)
                    continue
                if new:
                    sets = ", ".join(f"{c} = %({c})s" for c in new)
                    conn.execute(f"UPDATE {table} SET {sets} WHERE name = %(name)s", {**new, "name": name})
                    counts["moved"] += 1
    return counts


def check_cluster_token(conn: psycopg.Connection, settings: Settings, name: str, token: str | None) -> None:
    """Raise Forbidden unless ``token`` is the token of ``name``, an active cluster or a pooled
    scheduler: a stopped cluster's token is refused."""
    row = None
    if token is not None and is_cluster_name(name):
        row = conn.execute(
            "SELECT token_hash FROM clusters WHERE name = %s AND status = ANY(%s)"
            " UNION ALL SELECT token_hash FROM warm_pool WHERE name = %s",
            (name, lifecycle.names(lifecycle.ACTIVE), name),
        ).fetchone()
    if row is None or not sec.cluster_token_ok(settings.server.secrets, name, token, row["token_hash"]):
        raise Forbidden("Invalid cluster token")


def reserved_ports(settings: Settings) -> set[int]:
    """Ports of gatewayha's own services, never accepted as a scheduler's."""
    ports = {int(p) for p in settings.server.reserved_ports.split(",") if p.strip()}
    for url in (settings.server.public_url, settings.server.api_url):
        parts = urlsplit(url)
        ports.add(parts.port or (443 if parts.scheme == "https" else 80))
    try:
        info = psycopg.conninfo.conninfo_to_dict(settings.database.dsn)
        ports.update(int(p) for p in str(info.get("port") or "5432").split(",") if p.strip())
    except (psycopg.ProgrammingError, ValueError):
        ports.add(5432)
    return ports


def check_addresses(settings: Settings, name: str, host: str | None, msg: dict) -> None:
    """Refuse addresses a scheduler placed on ``host`` cannot have: another host, a privileged
    port or one of gatewayha's own (a heartbeat must not turn the public port into a tunnel)."""
    reserved = reserved_ports(settings)
    for key in ADDRESS_SCHEMES:
        value = msg[key]
        if not value and key == "dashboard_address":
            continue
        try:
            addr = reported_address(key, value)
        except InvalidValue:
            addr = None
        if addr is None or host is None or addr.host != host:
            problem = f"{key} {value!r} is not on the host the cluster was placed on ({host})"
        elif addr.port < 1024 or addr.port in reserved:
            problem = f"{key} {value!r}: port {addr.port} is privileged or one of the gateway's own"
        else:
            continue
        log.warning("cluster %s: heartbeat refused: %s", name, problem)
        raise Unprocessable(problem)


def get_cluster(conn: psycopg.Connection, name: str, owner: str | None = None) -> dict | None:
    if not is_cluster_name(name):
        return None
    row = conn.execute(f"SELECT {CLUSTER_COLUMNS} FROM clusters WHERE name = %s", (name,)).fetchone()
    if row is None or (owner is not None and row["owner"] != owner):
        return None
    return row


def list_clusters(conn: psycopg.Connection, owner: str, statuses: list[str]) -> list[dict]:
    return conn.execute(
        f"SELECT {CLUSTER_COLUMNS} FROM clusters WHERE owner = %s AND status = ANY(%s) ORDER BY created_at",
        (owner, statuses),
    ).fetchall()


def _epoch_ms(ts) -> int | None:
    return None if ts is None else int(ts.timestamp() * 1000)


def cluster_model(row: dict, secrets: str | Sequence[str], full: bool = True) -> dict:
    """The wire form: exactly the keys ClusterReport(**msg) accepts."""
    running = row["status"] == lifecycle.ClusterStatus.RUNNING
    key = None
    if running and full:
        key = tls.decrypt_key(secrets, row["tls_key_enc"], row["name"])
    return {
        "name": row["name"],
        "dashboard_route": f"/clusters/{row['name']}/status" if running and row["dashboard_address"] else None,
        "status": row["status"],
        "start_time": _epoch_ms(row["created_at"]),
        "stop_time": _epoch_ms(row["stopped_at"]),
        "options": row["options"],
        "tls_cert": row["tls_cert"] if running and full else None,
        "tls_key": key,
    }


def stop_cluster(conn: psycopg.Connection, name: str, reason: lifecycle.StopReason | str, failed: bool = False) -> bool:
    """Move an active cluster towards STOPPED (or FAILED): gatewayha.lifecycle.stop_cluster."""
    return lifecycle.stop_cluster(conn, name, reason, failed=failed)


def worker_allowance(conn: psycopg.Connection, settings: Settings, row: dict, wanted: int) -> tuple[int, str | None]:
    """Clamp a worker count to the cluster's max and the owner's limits."""
    cfg = ClusterConfig.from_json(row["config"])
    allowed = min(wanted, cfg.max_workers)
    msg = None
    if allowed < wanted:
        msg = f"Total number of workers is limited to {cfg.max_workers}"
    limits = settings.limits
    if limits.max_cores or limits.max_memory_gib:
        usage = _usage(conn, row["owner"], exclude=row["name"])
        bounds = []
        if limits.max_cores:
            bounds.append((limits.max_cores - usage.cores - cfg.scheduler_cores) / cfg.worker_cores)
        if limits.max_memory_gib:
            bounds.append((limits.max_memory_gib - usage.memory_gib - cfg.scheduler_memory_gib) / cfg.worker_memory_gib)
        cap = max(0, math.floor(min(bounds) + 1e-9))
        if cap < allowed:
            allowed = cap
            msg = f"Adding {wanted} workers would exceed the user's resource limits; scaled to {cap}"
    return allowed, msg


def _worker_name(cluster: str) -> str:
    return f"{cluster}-{secrets.token_hex(5)}"


def _placed_host(conn: psycopg.Connection, row: dict) -> str | None:
    """The host a cluster's scheduler was placed on: its gateway node's, or, for a backend that
    is not node-bound (no node), the ``host`` of the backend's state record."""
    if row["node"] is None:
        state = row["scheduler_state"]
        host = state.get("host") if isinstance(state, dict) else None
        return host if isinstance(host, str) else None
    return _node_host(conn, row["node"])


def _node_host(conn: psycopg.Connection, node: str | None) -> str | None:
    if node is None:
        return None
    row = conn.execute("SELECT host FROM nodes WHERE name = %s", (node,)).fetchone()
    return row["host"] if row else None


def record_heartbeat(conn: psycopg.Connection, settings: Settings, name: str, msg: dict, token: str | None) -> None:
    """Apply a scheduler heartbeat: RUNNING + routes on the first, then reconcile workers.

    The token is checked against the row (a stopped cluster's is refused). The addresses of the
    first report must be on the host the cluster was placed on and are fixed after it: a
    different one later is refused (409) and logged, the routes unchanged."""
    with conn.transaction():
        row = conn.execute(f"SELECT {CLUSTER_COLUMNS} FROM clusters WHERE name = %s FOR UPDATE", (name,)).fetchone()
        if row is None:
            pooled = warm_pool.lock_entry(conn, name)
            if pooled is None or not sec.cluster_token_ok(settings.server.secrets, name, token, pooled["token_hash"]):
                raise Forbidden("Invalid cluster token")
            if pooled["scheduler_address"] is None:
                check_addresses(settings, name, _node_host(conn, pooled["node"]), msg)
            _check_fixed(name, pooled, msg)
            warm_pool.record_heartbeat(conn, name, msg)
            return
        if row["status"] not in lifecycle.ACTIVE or not sec.cluster_token_ok(
            settings.server.secrets, name, token, row["token_hash"]
        ):
            raise Forbidden("Invalid cluster token")
        if row["status"] == lifecycle.ClusterStatus.STOPPING:
            raise Conflict(f"Cluster {name} is {row['status']}")
        if row["scheduler_address"] is None:
            check_addresses(settings, name, _placed_host(conn, row), msg)
        _check_fixed(name, row, msg)
        if row["status"] == lifecycle.ClusterStatus.PENDING:
            lifecycle.mark_running(conn, name, row["status"], msg)
        conn.execute(
            "UPDATE clusters SET last_heartbeat = now(), target_workers = %s WHERE name = %s",
            (msg["count"], name),
        )
        _reconcile_workers(conn, settings, row, msg)


def _check_fixed(name: str, row: dict, msg: dict) -> None:
    """Addresses are fixed by the first report; a scheduler never moves."""
    if row["scheduler_address"] is None:
        return
    for key in ADDRESS_SCHEMES:
        if msg[key] != row[key]:
            log.warning("cluster %s: heartbeat refused: %s changed from %r to %r", name, key, row[key], msg[key])
            raise Conflict(f"{key} is fixed by the cluster's first report")


def _enqueue_worker_job(conn: psycopg.Connection, kind: str, cluster: str, worker: str, node_q: str) -> None:
    queue.enqueue(
        conn,
        kind,
        {"cluster": cluster, "worker": worker},
        queue=node_q,
        cluster=cluster,
        dedupe_key=f"{kind}:{cluster}:{worker}",
    )


def _reconcile_workers(conn: psycopg.Connection, settings: Settings, row: dict, msg: dict) -> None:
    name = row["name"]
    node_q = queue.node_queue(row["node"]) if row["node"] else "any"
    # Worker launches take the node's launch slots like scheduler launches (one FIFO).
    start_q = queue.node_start_queue(row["node"]) if row["node"] else queue.START_QUEUE
    workers = {
        w["name"]: w
        for w in conn.execute(
            "SELECT name, status, created_at < now() - make_interval(secs => %s) AS overdue"
            " FROM workers WHERE cluster = %s AND status = ANY(%s)",
            (settings.cluster.start_timeout, name, lifecycle.names(lifecycle.LIVE_WORKERS)),
        ).fetchall()
    }
    active = set(msg["active_workers"])
    leaving = set(msg["closing_workers"]) | set(msg["closed_workers"])
    to_stop = []
    for wname, w in workers.items():
        if wname in leaving:
            to_stop.append(wname)
        elif wname in active and w["status"] == WorkerStatus.PENDING:
            lifecycle.set_worker_status(conn, name, wname, w["status"], WorkerStatus.RUNNING)
        elif w["status"] == WorkerStatus.PENDING and w["overdue"]:
            to_stop.append(wname)  # never joined: give up on it and start another
    # Pending workers beyond the target are not needed any more (newest first).
    live = [w for w in workers if w not in to_stop]
    pending = sorted(
        (w for w in live if workers[w]["status"] == WorkerStatus.PENDING and w not in active), reverse=True
    )
    excess = len(live) - msg["count"]
    for wname in pending[: max(0, excess)]:
        to_stop.append(wname)
    for wname in to_stop:
        lifecycle.set_worker_status(conn, name, wname, workers[wname]["status"], WorkerStatus.STOPPING)
        _enqueue_worker_job(conn, "stop_worker", name, wname, node_q)
    n_live = len(workers) - len(to_stop)
    need = msg["count"] - n_live
    if need <= 0:
        return
    _lock_user(conn, row["owner"])
    allowed, _ = worker_allowance(conn, settings, row, msg["count"])
    need = min(need, allowed - n_live)
    for _ in range(max(0, need)):
        wname = _worker_name(name)
        conn.execute("INSERT INTO workers (cluster, name, node) VALUES (%s, %s, %s)", (name, wname, row["node"]))
        _enqueue_worker_job(conn, "start_worker", name, wname, start_q)
