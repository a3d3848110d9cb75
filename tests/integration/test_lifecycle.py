"""The cluster lifecycle against the real Postgres, in this process: stops end at the stop
target stored when the stop was requested, the job handlers and the dead-node sweep call the
lifecycle (no job runner subprocess), illegal transitions write nothing, every change is
NOTIFYed on both cluster-changed channels, and the schema upgrades expand-then-contract."""

from __future__ import annotations

import threading
from pathlib import Path

import psycopg
import pytest
from inprocess import RecordingBackend
from psycopg.rows import dict_row

from conftest import SECRET, make_settings, new_database
from gatewayha import clusters, lifecycle
from gatewayha.api.watch import ClusterWatch
from gatewayha.auth import users
from gatewayha.db import migrate as migrations
from gatewayha.db.pool import make_pool
from gatewayha.jobs import handlers, queue
from gatewayha.lifecycle import ClusterStatus as C
from gatewayha.lifecycle import IllegalTransition
from gatewayha.lifecycle import WorkerStatus as W


@pytest.fixture
def db(db_dsn):
    with psycopg.connect(db_dsn, autocommit=True, row_factory=dict_row) as conn:
        conn.execute("DELETE FROM jobs; DELETE FROM job_log; DELETE FROM clusters; DELETE FROM nodes")
        users.ensure_user(conn, "carol")
        yield conn


@pytest.fixture
def ctx(db_dsn, tmp_path):
    """Handlers' context for node-a, with a backend that records calls."""
    settings = make_settings(db_dsn, tmp_path, worker={"node_timeout": 4})
    pool = make_pool(settings.database, "test-lifecycle", open_wait=True)
    try:
        yield handlers.Context(settings, pool, RecordingBackend(), "node-a")
    finally:
        pool.close()


def create(db, node: str | None = None, status: C = C.PENDING, workers: int = 0) -> str:
    settings = make_settings("postgresql://unused/x", Path("/tmp"))
    settings.server.secret = SECRET
    name = clusters.create_cluster(db, settings, "carol", {})
    db.execute("DELETE FROM jobs WHERE cluster = %s", (name,))  # nothing to start: we play the node
    if node is not None:
        db.execute("UPDATE clusters SET node = %s WHERE name = %s", (node, name))
    if status == C.RUNNING:
        with db.transaction():
            lifecycle.mark_running(
                db,
                name,
                C.PENDING,
                {"scheduler_address": "tls://127.0.0.1:1", "dashboard_address": "", "api_address": None},
            )
    for i in range(workers):
        db.execute("INSERT INTO workers (cluster, name, node) VALUES (%s, %s, %s)", (name, f"{name}-{i:04x}", node))
    return name


def state(db, name: str) -> tuple:
    row = db.execute("SELECT status, stop_target, reason FROM clusters WHERE name = %s", (name,)).fetchone()
    return row["status"], row["stop_target"], row["reason"]


def worker_statuses(db, name: str) -> list[str]:
    return [r["status"] for r in db.execute("SELECT status FROM workers WHERE cluster = %s", (name,)).fetchall()]


def run_queued(ctx, db, kind: str, cluster: str) -> None:
    """Run the queued job of ``kind`` for ``cluster`` with its handler, here and now."""
    row = db.execute(
        "SELECT id, kind, queue, payload, cluster, attempts, max_attempts FROM jobs WHERE kind = %s AND cluster = %s",
        (kind, cluster),
    ).fetchone()
    assert row is not None, f"no {kind} job queued for {cluster}"
    handlers.HANDLERS[kind](ctx, queue.Job(**row))
    db.execute("DELETE FROM jobs WHERE id = %s", (row["id"],))


def test_a_cluster_not_yet_placed_ends_at_once_at_its_stop_target(db):
    plain, failing = create(db, workers=2), create(db)
    assert clusters.stop_cluster(db, plain, "Shut down by user carol")
    assert clusters.stop_cluster(db, failing, "no node could start it", failed=True)
    assert state(db, plain) == (C.STOPPED, C.STOPPED, "Shut down by user carol")
    assert state(db, failing) == (C.FAILED, C.FAILED, "no node could start it")
    assert worker_statuses(db, plain) == [W.STOPPED, W.STOPPED]
    assert db.execute("SELECT count(*) AS n FROM jobs").fetchone()["n"] == 0  # no node to ask
    assert not clusters.stop_cluster(db, plain, "again")  # ended: nothing changes
    assert state(db, plain) == (C.STOPPED, C.STOPPED, "Shut down by user carol")


def test_a_placed_cluster_stops_through_its_node_and_ends_at_the_stored_target(db, ctx):
    name = create(db, node="node-a", status=C.RUNNING, workers=2)
    assert clusters.stop_cluster(db, name, "no heartbeat for 3 s", failed=True)
    assert state(db, name) == (C.STOPPING, C.FAILED, "no heartbeat for 3 s")
    job = db.execute("SELECT queue, payload FROM jobs WHERE kind = 'stop_cluster'").fetchone()
    assert job["queue"] == queue.node_queue("node-a")
    assert job["payload"]["final"] == "FAILED"  # for a job runner of the previous release

    run_queued(ctx, db, "stop_cluster", name)
    assert ctx.backend.calls == [("stop_cluster", name)]
    assert state(db, name) == (C.FAILED, C.FAILED, "no heartbeat for 3 s")
    assert worker_statuses(db, name) == [W.STOPPED, W.STOPPED]


def test_a_failure_while_a_plain_stop_is_queued_ends_the_cluster_failed(db, ctx):
    """The stop job's dedupe key keeps the first payload ("final": STOPPED): the failure that
    came after it was lost when the target lived only there."""
    name = create(db, node="node-a", status=C.RUNNING)
    assert clusters.stop_cluster(db, name, "reached the maximum lifetime of 60 s")
    assert clusters.stop_cluster(db, name, "no heartbeat for 3 s", failed=True)
    assert state(db, name) == (C.STOPPING, C.FAILED, "reached the maximum lifetime of 60 s")
    payloads = [r["payload"] for r in db.execute("SELECT payload FROM jobs WHERE cluster = %s", (name,))]
    assert [p["final"] for p in payloads] == ["STOPPED"]  # one job, its first payload
    run_queued(ctx, db, "stop_cluster", name)
    assert state(db, name)[:2] == (C.FAILED, C.FAILED)
    # A plain stop after a failure does not lower the target.
    other = create(db, node="node-a", status=C.RUNNING)
    assert clusters.stop_cluster(db, other, "no heartbeat", failed=True)
    assert clusters.stop_cluster(db, other, "Shut down by user carol")
    assert state(db, other) == (C.STOPPING, C.FAILED, "no heartbeat")


def test_a_stop_requested_by_the_previous_release_ends_at_its_jobs_final(db, ctx):
    """A node of the previous release stores no stop target; its stop job's payload says it."""
    name = create(db, node="node-a", status=C.RUNNING)
    db.execute("UPDATE clusters SET status = 'STOPPING', reason = 'no heartbeat' WHERE name = %s", (name,))
    queue.enqueue(db, "stop_cluster", {"cluster": name, "final": "FAILED", "reason": "no heartbeat"}, cluster=name)
    run_queued(ctx, db, "stop_cluster", name)
    assert state(db, name) == (C.FAILED, C.FAILED, "no heartbeat")


def test_a_stop_job_for_a_cluster_that_ended_already_changes_nothing(db, ctx):
    name = create(db, node="node-a", status=C.RUNNING)
    assert clusters.stop_cluster(db, name, "Shut down by user carol")
    run_queued(ctx, db, "stop_cluster", name)
    queue.enqueue(db, "stop_cluster", {"cluster": name, "final": "FAILED"}, cluster=name)  # a re-run
    run_queued(ctx, db, "stop_cluster", name)
    assert state(db, name) == (C.STOPPED, C.STOPPED, "Shut down by user carol")


def test_a_lost_nodes_clusters_end_at_their_stored_targets_without_reading_jobs(db, ctx):
    db.execute(
        "INSERT INTO nodes (name, host, last_seen, up_since) VALUES"
        " ('node-a', '127.0.0.1', now(), now() - interval '1 hour'),"
        " ('gone', '10.9.9.9', now() - interval '1 hour', now() - interval '2 hours')"
    )
    running = create(db, node="gone", status=C.RUNNING, workers=1)
    pending = create(db, node="gone")
    failing = create(db, node="gone", status=C.RUNNING)
    stopping = create(db, node="gone", status=C.RUNNING)
    elsewhere = create(db, node="node-a", status=C.RUNNING)
    assert clusters.stop_cluster(db, failing, "no heartbeat for 3 s", failed=True)
    assert clusters.stop_cluster(db, stopping, "Shut down by user carol")
    db.execute("DELETE FROM jobs")  # the sweep goes by the rows alone

    handlers.sweep_nodes(ctx, None)
    lost = "node gone lost (unseen for 4 s)"
    assert state(db, running) == (C.FAILED, C.FAILED, lost)
    assert state(db, pending) == (C.FAILED, C.FAILED, lost)
    assert state(db, failing) == (C.FAILED, C.FAILED, "no heartbeat for 3 s")
    assert state(db, stopping) == (C.STOPPED, C.STOPPED, "Shut down by user carol")
    assert state(db, elsewhere) == (C.RUNNING, None, None)
    assert worker_statuses(db, running) == [W.STOPPED]


def test_end_all_ends_every_active_cluster_through_legal_transitions(db, db_dsn):
    """The local stack's `make down` (gatewayha-admin clusters end-all): the whole gateway and
    its clusters' processes are stopped; a failing stop under way stays FAILED."""
    unplaced, running = create(db), create(db, node="node-a", status=C.RUNNING, workers=1)
    failing, ended = create(db, node="node-a", status=C.RUNNING), create(db)
    assert clusters.stop_cluster(db, failing, "no heartbeat for 3 s", failed=True)
    assert clusters.stop_cluster(db, ended, "Shut down by user carol")
    ended_row = db.execute("SELECT stopped_at FROM clusters WHERE name = %s", (ended,)).fetchone()
    got = lifecycle.end_all(db, lifecycle.reasons.gateway_shut_down("local stack stopped"))
    assert sorted((r["name"], r["status"]) for r in got) == sorted(
        [(unplaced, C.STOPPED), (running, C.STOPPED), (failing, C.FAILED)]
    )
    assert state(db, unplaced) == state(db, running) == (C.STOPPED, C.STOPPED, "local stack stopped")
    assert state(db, failing) == (C.FAILED, C.FAILED, "no heartbeat for 3 s")
    assert db.execute("SELECT stopped_at FROM clusters WHERE name = %s", (ended,)).fetchone() == ended_row
    assert worker_statuses(db, running) == [W.STOPPED]


def test_an_illegal_transition_is_refused_and_writes_nothing(db):
    name = create(db, node="node-a", status=C.RUNNING, workers=1)
    worker = f"{name}-0000"
    with pytest.raises(IllegalTransition), db.transaction():
        lifecycle.mark_running(db, name, C.RUNNING, {"scheduler_address": "tls://127.0.0.1:2",
                                                     "dashboard_address": "", "api_address": None})  # fmt: skip
    assert (
        db.execute("SELECT scheduler_address FROM clusters WHERE name = %s", (name,)).fetchone()["scheduler_address"]
        == "tls://127.0.0.1:1"
    )
    assert lifecycle.stop_workers(db, name) == 1
    with pytest.raises(IllegalTransition):
        lifecycle.set_worker_status(db, name, worker, W.STOPPED, W.RUNNING)
    assert worker_statuses(db, name) == [W.STOPPED]
    # The SQL itself moves only rows in a status the table allows (here: the row says STOPPED).
    assert not lifecycle.set_worker_status(db, name, worker, W.RUNNING, W.STOPPING)
    assert worker_statuses(db, name) == [W.STOPPED]
    with pytest.raises(IllegalTransition):
        lifecycle.finish_stop(db, name, C.RUNNING, None)
    assert state(db, name)[0] == C.RUNNING


def test_every_change_is_notified_on_the_new_and_the_old_channel(db, db_dsn):
    name = create(db, node="node-a")
    with psycopg.connect(db_dsn, autocommit=True) as listener:
        for channel in lifecycle.CHANNELS:
            listener.execute(f"LISTEN {channel}")
        assert clusters.stop_cluster(db, name, "Shut down by user carol")
        got = {(n.channel, n.payload) for n in listener.notifies(timeout=10, stop_after=2)}
    assert got == {("gatewayha_cluster_changed", name), ("gatewayha_routes", name)}


@pytest.mark.parametrize("channel", lifecycle.CHANNELS)
def test_a_long_poll_is_woken_by_either_channel(db, db_dsn, tmp_path, channel):
    """During a rolling upgrade the nodes of the previous release NOTIFY only the old channel."""
    settings = make_settings(db_dsn, tmp_path)
    watch = ClusterWatch(settings.database).start()
    try:
        assert watch.listening.wait(10)
        with watch.watching("c1") as event:
            event.clear()
            db.execute("SELECT pg_notify(%s, %s)", (channel, "c2"))
            db.execute("SELECT pg_notify(%s, %s)", (channel, "c1"))
            assert event.wait(10)
    finally:
        watch.stop()


# --- expand, then contract ------------------------------------------------------------------


def _previous_release_schema(dsn: str) -> None:
    """The schema as the release before this one left it: every expand migration up to 0008."""
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        conn.execute(
            "CREATE TABLE schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for version, name, sql in migrations.available():
            if version <= 8:
                conn.execute(sql)
                conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (version, name))


def _columns(conn) -> set[str]:
    rows = conn.execute("SELECT column_name FROM information_schema.columns WHERE table_name = 'clusters'")
    return {r["column_name"] for r in rows.fetchall()}


def test_the_schema_upgrades_expand_then_contract_and_the_code_works_at_each_step(pg_server, tmp_path):
    dsn = new_database(pg_server)
    _previous_release_schema(dsn)
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        users.ensure_user(conn, "carol")
        # A failing stop queued by a node of the previous release: its target only in the job.
        failing = create(conn, node="node-a", status=C.RUNNING)
        conn.execute("UPDATE clusters SET status = 'STOPPING', generation = generation + 1 WHERE name = %s", (failing,))
        queue.enqueue(conn, "stop_cluster", {"cluster": failing, "final": "FAILED"}, cluster=failing)

        # Expand (each node's `gatewayha-admin migrate` as it is upgraded): the old column stays.
        assert migrations.migrate(conn) == ["0009_stop_target.sql"]
        assert migrations.pending_contract(conn) == ["0009_drop_generation.sql"]
        assert {"generation", "stop_target"} <= _columns(conn)
        assert state(conn, failing)[:2] == (C.STOPPING, C.FAILED)  # backfilled from its job
        # A node still on the previous release writes the old column: nothing refuses it.
        conn.execute("UPDATE clusters SET generation = generation + 1 WHERE name = %s", (failing,))
        # The new code works on the expanded schema.
        name = create(conn, node="node-a", status=C.RUNNING)
        assert clusters.stop_cluster(conn, name, "Shut down by user carol", failed=True)
        assert state(conn, name) == (C.STOPPING, C.FAILED, "Shut down by user carol")

        # Contract (once every node runs this release: playbooks/upgrade.yml's last play).
        assert migrations.migrate(conn, contract=True) == ["contract/0009_drop_generation.sql"]
        assert "generation" not in _columns(conn)
        assert migrations.pending_contract(conn) == []
        assert migrations.migrate(conn, contract=True) == []  # applied once
        assert migrations.current_version(conn) == max(v for v, _, _ in migrations.available())

        # ... and the code still works on the contracted schema.
        settings = make_settings(dsn, tmp_path)
        pool = make_pool(settings.database, "test-contract", open_wait=True)
        try:
            ctx = handlers.Context(settings, pool, RecordingBackend(), "node-a")
            run_queued(ctx, conn, "stop_cluster", failing)
            run_queued(ctx, conn, "stop_cluster", name)
        finally:
            pool.close()
        assert state(conn, failing)[:2] == (C.FAILED, C.FAILED)
        assert state(conn, name)[:2] == (C.FAILED, C.FAILED)
        other = create(conn)
        assert clusters.stop_cluster(conn, other, "Shut down by user carol")
        assert state(conn, other)[:2] == (C.STOPPED, C.STOPPED)


def test_migrate_contract_on_several_nodes_at_once_applies_each_migration_once(pg_server):
    """Concurrent `migrate --contract` on a fresh database: the expansions first, each contract
    migration once (the advisory lock), whichever node gets there first."""
    dsn = new_database(pg_server)
    results, errors = [], []

    def run():
        try:
            with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as c:
                results.append(migrations.migrate(c, contract=True))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    flat = sorted(name for r in results for name in r)
    assert flat.count("contract/0009_drop_generation.sql") == 1
    assert flat.count("0009_stop_target.sql") == 1
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as c:
        assert "generation" not in _columns(c) and "stop_target" in _columns(c)
