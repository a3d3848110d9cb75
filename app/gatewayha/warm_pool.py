"""Warm pool (JupyterHub's user-placeholder idea): pre-started schedulers for the default options.

Each pooled scheduler already holds its cluster name, cert, token and dashboard
prefix, and heartbeats like any scheduler. A create whose options give the same
cluster config claims one with FOR UPDATE SKIP LOCKED and the cluster is RUNNING
at once. Every node keeps ``cluster.warm_pool_size`` of its own; pooled
schedulers are never visible to users.

A pooled scheduler is handed out only while it is known to be alive: its node's worker
reports, the entry belongs to the node's current incarnation (created, or checked by
``verify``, since the worker last started: a restarted node's old schedulers may have died
with it), and it heartbeated within a few heartbeat periods. Declining a live one costs a
cold start; handing out a dead one costs the user a cluster that never answers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import socket

import psycopg
from psycopg.types.json import Jsonb

from gatewayha import liveness, tls, validate
from gatewayha.auth import secrets as sec
from gatewayha.config import Settings
from gatewayha.jobs import queue
from gatewayha.options import ClusterConfig, cluster_config, option_specs, validate_options

log = logging.getLogger("gatewayha.warm_pool")


def config_key(cfg: ClusterConfig) -> str:
    return hashlib.sha256(json.dumps(cfg.to_json(), sort_keys=True).encode()).hexdigest()[:32]


def default_config(settings: Settings) -> tuple[dict, ClusterConfig]:
    options = validate_options(option_specs(settings), {})
    return options, cluster_config(settings, options)


def _fresh_clause(settings: Settings, t: str = "") -> tuple[str, dict]:
    """A pooled scheduler's idle clock runs from its start: hand out only those with at
    least half of the idle timeout left, and only those still heartbeating (``t``: the
    table's alias with its dot). Only those whose control API is TLS, too: one started by an
    earlier release reports ``http://`` and could never be scaled (gatewayha.control)."""
    c = settings.cluster
    clause = (
        f"{t}ready_at IS NOT NULL AND {t}last_heartbeat > now() - make_interval(secs => %(hb)s)"
        f" AND {t}api_address LIKE 'https://%%'"
    )
    params: dict = {"hb": c.heartbeat_timeout}
    if c.idle_timeout > 0:
        clause += f" AND {t}created_at > now() - make_interval(secs => %(half_idle)s)"
        params["half_idle"] = c.idle_timeout / 2
    return clause, params


def _claimable_clause(settings: Settings) -> tuple[str, dict]:
    """Fresh (above), and known alive now: its node's worker reported within the liveness gap,
    the entry was created or verified in the node's current incarnation (``nodes.started_at``,
    set by each start of the node's worker), and it heartbeated within a few periods (not the
    whole heartbeat timeout, which is for judging a cluster dead, not for trusting one)."""
    c = settings.cluster
    fresh, params = _fresh_clause(settings, "w.")
    clause = (
        f"{fresh} AND w.last_heartbeat > now() - make_interval(secs => %(recent)s)"
        " AND n.last_seen > now() - make_interval(secs => %(node_gap)s)"
        " AND coalesce(w.verified_at, w.created_at) >= n.started_at"
        " AND NOT n.draining"
    )
    params["recent"] = min(c.heartbeat_timeout, liveness.GAP_FACTOR * c.heartbeat_period)
    params["node_gap"] = liveness.GAP_FACTOR * settings.jobs.node_heartbeat_interval
    return clause, params


# A claim connects to a candidate's API port before handing it out: this long at most.
PROBE_TIMEOUT_S = 0.25
CLAIM_CANDIDATES = 3


def answers(address: str | None, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether something accepts a TCP connection at ``https://host:port`` (a pooled scheduler's
    api_address: its HTTPS server, which a connection closed before the TLS handshake leaves
    without a log line)."""
    try:
        parsed = validate.reported_address("api_address", address)
        with socket.create_connection((parsed.host, parsed.port), timeout=timeout):
            return True
    except (OSError, ValueError, TypeError):
        return False


def claim(conn: psycopg.Connection, settings: Settings, cfg: ClusterConfig) -> dict | None:
    """Take one ready pooled scheduler for this config (inside the caller's transaction).

    The database says which are alive (``_claimable_clause``), but a scheduler killed a moment
    ago (its node restarting, an operator's kill) still looks alive there for a few seconds: so
    the claim also connects to the candidate's own port, and drops the ones that do not answer
    (their node's reconcile stops whatever is left of them)."""
    if settings.cluster.warm_pool_size <= 0:
        return None
    claimable, params = _claimable_clause(settings)
    candidates = conn.execute(
        f"""
        SELECT w.name, w.api_address FROM warm_pool w JOIN nodes n ON n.name = w.node
        WHERE w.config_key = %(key)s AND {claimable}
        ORDER BY w.created_at
        LIMIT {CLAIM_CANDIDATES}
        FOR UPDATE OF w SKIP LOCKED
        """,
        {"key": config_key(cfg), **params},
    ).fetchall()
    chosen, dead = None, []
    for c in candidates:
        if answers(c["api_address"]):
            chosen = c["name"]
            break
        dead.append(c["name"])
    if dead:
        log.warning("warm pool: %s did not answer; dropped", ", ".join(dead))
        conn.execute("DELETE FROM warm_pool WHERE name = ANY(%s)", (dead,))
    if chosen is None:
        return None
    return conn.execute(
        """
        DELETE FROM warm_pool WHERE name = %s
        RETURNING name, node, options, config, tls_cert, tls_key_enc, token_hash, token_enc,
                  scheduler_address, dashboard_address, api_address
        """,
        (chosen,),
    ).fetchone()


def lock_entry(conn: psycopg.Connection, name: str) -> dict | None:
    """A pooled scheduler's row, locked (inside the caller's transaction), or None."""
    return conn.execute(
        "SELECT name, node, token_hash, scheduler_address, dashboard_address, api_address"
        " FROM warm_pool WHERE name = %s FOR UPDATE",
        (name,),
    ).fetchone()


def record_heartbeat(conn: psycopg.Connection, name: str, msg: dict) -> bool:
    """A pooled scheduler's heartbeat (token and addresses checked by the caller): it is ready
    once its addresses are known."""
    row = conn.execute(
        "UPDATE warm_pool SET scheduler_address = %s, dashboard_address = %s, api_address = %s,"
        " ready_at = coalesce(ready_at, now()), last_heartbeat = now() WHERE name = %s RETURNING name",
        (msg["scheduler_address"], msg["dashboard_address"], msg["api_address"], name),
    ).fetchone()
    return row is not None


def unverified(conn: psycopg.Connection, node: str) -> list[str]:
    """This node's entries neither created nor verified since its worker last started."""
    return [
        r["name"]
        for r in conn.execute(
            "SELECT w.name FROM warm_pool w JOIN nodes n ON n.name = w.node"
            " WHERE w.node = %s AND coalesce(w.verified_at, w.created_at) < n.started_at ORDER BY w.name",
            (node,),
        ).fetchall()
    ]


def record_verified(conn: psycopg.Connection, node: str, live: list[str], dead: list[str]) -> list[str]:
    """Mark ``live`` entries as belonging to this incarnation; drop ``dead`` ones (returned)."""
    with conn.transaction():
        conn.execute(
            "UPDATE warm_pool SET verified_at = now() WHERE node = %s AND name = ANY(%s)",
            (node, live),
        )
        return [
            r["name"]
            for r in conn.execute(
                "DELETE FROM warm_pool WHERE node = %s AND name = ANY(%s) RETURNING name", (node, dead)
            ).fetchall()
        ]


def request_refill(conn: psycopg.Connection, node: str) -> None:
    queue.enqueue(conn, "refill_pool", {}, queue=queue.node_queue(node), dedupe_key=f"refill_pool:{node}")


def plan_refill(conn: psycopg.Connection, settings: Settings, node: str) -> tuple[list[dict], list[str]]:
    """Decide this node's pool changes: (entries to start, names to stop).

    Stale entries (silent, never ready within start_timeout, too old for the idle
    timeout, or of a config that is no longer the default) are dropped; the pool is
    then topped up to warm_pool_size, or trimmed when the size shrank (to nothing while the
    node is drained).
    """
    c = settings.cluster
    options, cfg = default_config(settings)
    key = config_key(cfg)
    fresh, params = _fresh_clause(settings)
    with conn.transaction():
        stale = [
            r["name"]
            for r in conn.execute(
                f"""
                DELETE FROM warm_pool
                WHERE node = %(node)s AND (
                    config_key <> %(key)s
                    OR (ready_at IS NULL AND created_at < now() - make_interval(secs => %(start)s))
                    OR (ready_at IS NOT NULL AND NOT ({fresh}))
                )
                RETURNING name
                """,
                {"node": node, "key": key, "start": c.start_timeout, **params},
            ).fetchall()
        ]
        rows = conn.execute(
            "SELECT name FROM warm_pool WHERE node = %s ORDER BY ready_at IS NULL DESC, created_at DESC FOR UPDATE",
            (node,),
        ).fetchall()
        draining = conn.execute("SELECT draining FROM nodes WHERE name = %s", (node,)).fetchone()
        extra = len(rows) - (0 if draining and draining["draining"] else c.warm_pool_size)
        trimmed = [r["name"] for r in rows[: max(0, extra)]]
        if trimmed:
            conn.execute("DELETE FROM warm_pool WHERE name = ANY(%s)", (trimmed,))
        to_start = []
        for _ in range(max(0, -extra)):
            name = secrets.token_hex(16)
            cert, key_pem = tls.new_keypair(name)
            token, token_hash = sec.new_cluster_token()
            conn.execute(
                "INSERT INTO warm_pool (name, node, config_key, options, config, tls_cert, tls_key_enc,"
                " token_hash, token_enc) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    name,
                    node,
                    key,
                    Jsonb(options),
                    Jsonb(cfg.to_json()),
                    cert,
                    tls.encrypt_key(settings.server.secret, key_pem, name),
                    token_hash,
                    tls.encrypt_token(settings.server.secret, token, name),
                ),
            )
            to_start.append({"name": name, "cert": cert, "key": key_pem, "token": token, "config": cfg})
    return to_start, stale + trimmed
