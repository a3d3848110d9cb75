"""The cluster lifecycle against the real Postgres, in this process: stops end at the stop
target stored when the stop was requested, the job handlers and the dead-node sweep call the
lifecycle (no job runner subprocess), illegal transitions write nothing, every change is
NOTIFYed on both cluster-changed channels, and the schema upgrades expand-then-contract."""

from __future__ import annotations

import threading
from pathlib import Path

import psycopg
import pytest
from inprocess import RecordingBackend, emptied_db
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
    with emptied_db(db_dsn, ("jobs", "job_log", "clusters", "nodes", "api_instances")) as conn:
        yield conn


@pytest.fixture
def ctx(db_dsn, tmp_path):
    """Handlers' context for node-a, with a backend that records calls (node timeout 4 s,
    heartbeat timeout 3 s, start timeout 30 s, queue timeout 600 s)."""
    settings = make_settings(
        db_dsn,
        tmp_path,
        jobs={"node_timeout": 4},
        cluster={"heartbeat_period": 1, "heartbeat_timeout": 3, "start_timeout": 30, "queue_timeout": 600},
    )
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


def nodes(db, steady: str, lost: str) -> None:
    """``steady`` up for an hour (it may judge others), ``lost`` unseen for an hour."""
    db.execute(
        "INSERT INTO nodes (name, host, last_seen, up_since) VALUES"
        " (%s, '127.0.0.1', now(), now() - interval '1 hour'),"
        " (%s, '10.9.9.9', now() - interval '1 hour', now() - interval '2 hours')",
        (steady, lost),
    )


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
    nodes(db, steady="node-a", lost="gone")
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


# --- the periodic judgements (check_clusters, sweep_nodes), each run here once -----------------


def heard(db, name: str, seconds_ago: float) -> None:
    db.execute("UPDATE clusters SET last_heartbeat = now() - make_interval(secs => %s) WHERE name = %s",
               (seconds_ago, name))  # fmt: skip


def test_silent_cluster_fails_after_the_heartbeat_timeout_with_a_reason(db, ctx):
    fresh, silent = create(db, node="node-a", status=C.RUNNING), create(db, node="node-a", status=C.RUNNING)
    heard(db, fresh, -3600)  # heard from "in the future": stays up
    heard(db, silent, 60)
    handlers.check_clusters(ctx, None)
    assert state(db, silent) == (C.STOPPING, C.FAILED, "no heartbeat for 3 s")
    assert state(db, fresh) == (C.RUNNING, None, None)


def test_start_timeout_counts_from_the_launch_and_a_queued_start_from_the_create(db, ctx):
    """start_timeout (30 s here) judges a launched scheduler; a start still waiting for a launch
    slot is judged by queue_timeout (600 s) from the create, not failed at 30 s."""

    def pending(created_ago: float, launched_ago: float | None) -> str:
        name = create(db)
        db.execute(
            "UPDATE clusters SET created_at = now() - make_interval(secs => %s),"
            " launched_at = now() - make_interval(secs => %s), node = CASE WHEN %s THEN 'node-a' END"
            " WHERE name = %s",
            (created_ago, launched_ago, launched_ago is not None, name),
        )
        return name

    silent_launch, fresh_launch = pending(60, 45), pending(60, 5)
    queued, queued_too_long = pending(60, None), pending(700, None)
    for _ in range(3):  # judged again and again: the same two, and only they, fail
        handlers.check_clusters(ctx, None)
        assert state(db, silent_launch) == (C.STOPPING, C.FAILED, "did not start within 30 s")
        assert state(db, queued_too_long) == (C.FAILED, C.FAILED, "no node could start it within 600 s")
        assert state(db, fresh_launch) == state(db, queued) == (C.PENDING, None, None)


def test_silence_while_every_api_instance_was_down_is_not_held_against_a_cluster(db, ctx):
    """No heartbeat can arrive while no API instance is up: the cluster is judged only once
    an instance has been up, without a gap, for the heartbeat timeout (gatewayha.liveness)."""
    db.execute(  # the only API instance stopped reporting an hour ago: the API tier is down
        "INSERT INTO api_instances (name, up_since, last_seen) VALUES ('gw1:1', now() - interval '2 hours',"
        " now() - interval '1 hour')"
    )
    silent = create(db, node="node-a", status=C.RUNNING)
    heard(db, silent, 60)
    handlers.check_clusters(ctx, None)
    assert state(db, silent)[0] == C.RUNNING
    # The API is back, but only just: still no judgement.
    db.execute("UPDATE api_instances SET up_since = now(), last_seen = now()")
    handlers.check_clusters(ctx, None)
    assert state(db, silent)[0] == C.RUNNING
    # Up for longer than the heartbeat timeout (3 s here) and the cluster is still silent: it fails.
    db.execute("UPDATE api_instances SET up_since = now() - interval '10 s', last_seen = now()")
    handlers.check_clusters(ctx, None)
    assert state(db, silent) == (C.STOPPING, C.FAILED, "no heartbeat for 3 s")


def test_dead_nodes_clusters_fail_and_its_queued_jobs_are_cancelled(db, ctx):
    nodes(db, steady="node-a", lost="ghost")
    name = create(db, node="ghost", status=C.RUNNING)
    heard(db, name, -3600)
    jid = queue.enqueue(db, "stop_worker", {"cluster": name, "worker": name + "-abc"}, queue="node:ghost")
    handlers.sweep_nodes(ctx, None)
    assert state(db, name) == (C.FAILED, C.FAILED, "node ghost lost (unseen for 4 s)")
    log = db.execute("SELECT outcome FROM job_log WHERE id = %s", (jid,)).fetchone()
    assert log == {"outcome": "cancelled"}


def test_a_node_that_is_not_steady_itself_judges_no_other(db, ctx):
    """After every job runner was down, every node looks unseen: a node not up for a node
    timeout without a gap leaves the others alone."""
    db.execute(
        "INSERT INTO nodes (name, host, last_seen, up_since) VALUES ('node-a', '127.0.0.1', now(), now()),"
        " ('ghost', '10.9.9.9', now() - interval '1 hour', now() - interval '2 hours')"
    )
    name = create(db, node="ghost", status=C.RUNNING)
    handlers.sweep_nodes(ctx, None)
    assert state(db, name) == (C.RUNNING, None, None)
    db.execute("UPDATE nodes SET up_since = now() - interval '5 s' WHERE name = 'node-a'")
    handlers.sweep_nodes(ctx, None)
    assert state(db, name)[0] == C.FAILED


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
        assert migrations.migrate(conn) == ["0009_stop_target.sql", "0010_backend_state.sql"]
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
