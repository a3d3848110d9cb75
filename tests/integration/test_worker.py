"""Job runners (gatewayha-jobs) against a real Postgres: leases, periodic ticks, timeouts, dead nodes, orphans."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import dict_row

from conftest import SECRET, make_settings
from gatewayha import clusters
from gatewayha.auth import users
from gatewayha.jobs import queue
from helpers import wait_until

ROOT = Path(__file__).resolve().parents[2]


def node_a_settings(tmp_path: Path):
    """Settings of node-a as the `workers` fixture runs it (process launcher, state under tmp_path)."""
    return make_settings(
        "postgresql://unused/x",
        tmp_path,
        node={"name": "node-a", "state_dir": str(tmp_path / "node-a"), "launcher": "process"},
    )


def node_a_backend(tmp_path: Path):
    """node-a's backend, to see the processes its worker launched."""
    from gatewayha.backends import get_backend

    return get_backend(node_a_settings(tmp_path))


class Workers:
    def __init__(self, dsn, tmp):
        self.dsn = dsn
        self.tmp = tmp
        self.procs: dict[str, subprocess.Popen] = {}

    def env(self, node, **extra):
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAYHA_")}
        env.update(
            GATEWAYHA_DATABASE__DSN=self.dsn,
            GATEWAYHA_SERVER__SECRET=SECRET,
            GATEWAYHA_NODE__NAME=node,
            GATEWAYHA_NODE__STATE_DIR=str(self.tmp / node),
            GATEWAYHA_NODE__LAUNCHER="process",
            GATEWAYHA_WORKER__LEASE_SECONDS="2",
            GATEWAYHA_WORKER__POLL_INTERVAL="0.5",
            GATEWAYHA_WORKER__NODE_HEARTBEAT_INTERVAL="0.5",
            GATEWAYHA_WORKER__NODE_TIMEOUT="4",
            GATEWAYHA_CLUSTER__HEARTBEAT_PERIOD="1",
            GATEWAYHA_CLUSTER__HEARTBEAT_TIMEOUT="3",
            GATEWAYHA_CLUSTER__START_TIMEOUT="30",
        )
        env.update({k: str(v) for k, v in extra.items()})
        return env

    def start(self, node, **extra):
        log = open(self.tmp / f"{node}.log", "ab")
        p = subprocess.Popen(
            [sys.executable, "-m", "gatewayha.jobs.worker"],
            env=self.env(node, **extra),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs[node] = p
        return p

    def kill9(self, node):
        p = self.procs.pop(node)
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(10)

    def stop_all(self):
        for p in self.procs.values():
            p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        self.procs.clear()


@pytest.fixture
def db(db_dsn):
    with psycopg.connect(db_dsn, autocommit=True, row_factory=dict_row) as conn:
        conn.execute(
            "DELETE FROM jobs; DELETE FROM job_log; DELETE FROM periodic; DELETE FROM nodes; DELETE FROM clusters;"
            " DELETE FROM api_instances"
        )
        users.ensure_user(conn, "carol")
        yield conn


@pytest.fixture
def workers(db_dsn, tmp_path):
    w = Workers(db_dsn, tmp_path)
    yield w
    w.stop_all()


def test_killed_workers_leased_job_completes_exactly_once_on_the_other_worker(db, workers):
    workers.start("node-a", GATEWAYHA_WORKER__CONCURRENCY=1)
    jid = queue.enqueue(db, "probe", {"seconds": 3})
    owner = wait_until(
        lambda: (db.execute("SELECT lease_owner FROM jobs WHERE id = %s", (jid,)).fetchone() or {}).get("lease_owner"),
        15,
        "node-a to claim the probe",
    )
    assert owner.startswith("node-a/")
    workers.kill9("node-a")
    workers.start("node-b")
    done = wait_until(
        lambda: db.execute("SELECT * FROM job_log WHERE id = %s", (jid,)).fetchall(),
        30,
        "the probe to finish",
    )
    assert len(done) == 1
    assert done[0]["outcome"] == "done"
    assert done[0]["finished_by"].startswith("node-b/")
    assert done[0]["attempts"] == 2
    assert db.execute("SELECT count(*) AS n FROM jobs WHERE id = %s", (jid,)).fetchone()["n"] == 0


def test_a_restarted_worker_takes_its_dead_predecessors_jobs_back_at_once(db, workers):
    """kill -9 and restart (what systemd does) on the same node: the job leased by the dead
    process is run again right away, not after its 60 s lease."""
    slow_lease = {"GATEWAYHA_WORKER__LEASE_SECONDS": "60", "GATEWAYHA_WORKER__CONCURRENCY": "1"}
    workers.start("node-a", **slow_lease)
    jid = queue.enqueue(db, "probe", {"seconds": 2}, queue="node:node-a")
    first = wait_until(
        lambda: (db.execute("SELECT lease_owner FROM jobs WHERE id = %s", (jid,)).fetchone() or {}).get("lease_owner"),
        15,
        "node-a to claim the probe",
    )
    workers.kill9("node-a")
    t0 = time.monotonic()
    workers.start("node-a", **slow_lease)
    done = wait_until(
        lambda: db.execute("SELECT * FROM job_log WHERE id = %s", (jid,)).fetchone(), 30, "the probe to finish"
    )
    assert time.monotonic() - t0 < 30  # well inside the 60 s lease
    assert done["outcome"] == "done" and done["attempts"] == 2
    assert done["finished_by"].startswith("node-a/") and done["finished_by"] != first


def test_periodic_task_runs_once_per_tick_across_two_workers(db, workers):
    workers.start("node-a")
    workers.start("node-b")
    wait_until(lambda: db.execute("SELECT count(*) AS n FROM nodes").fetchone()["n"] == 2, 15, "both nodes")
    t0 = time.monotonic()
    time.sleep(6)
    elapsed = time.monotonic() - t0
    ran = db.execute(
        "SELECT count(*) AS n FROM job_log"
        " WHERE kind = 'check_clusters' AND finished_at > now() - make_interval(secs => %s)",
        (elapsed,),
    ).fetchone()["n"]
    # Interval 1 s: about one run a second in all, not one per worker per second.
    assert 3 <= ran <= elapsed + 2, ran


def _running_cluster(db, node, heartbeat_age_s=0.0):
    settings = make_settings("postgresql://unused/x", Path("/tmp"))
    settings.server.secret = SECRET
    name = clusters.create_cluster(db, settings, "carol", {})
    db.execute("DELETE FROM jobs WHERE cluster = %s", (name,))  # nothing to start: we play the scheduler
    db.execute(
        "UPDATE clusters SET node = %s, status = 'RUNNING', scheduler_address = 'tls://127.0.0.1:1',"
        " last_heartbeat = now() - make_interval(secs => %s) WHERE name = %s",
        (node, heartbeat_age_s, name),
    )
    return name


def test_silent_cluster_fails_after_the_heartbeat_timeout_with_a_reason(db, workers):
    workers.start("node-a")
    fresh = _running_cluster(db, "node-a", heartbeat_age_s=-3600)  # heard from "in the future": stays up
    silent = _running_cluster(db, "node-a", heartbeat_age_s=60)
    row = wait_until(
        lambda: db.execute(
            "SELECT status, reason FROM clusters WHERE name = %s AND status = 'FAILED'", (silent,)
        ).fetchone(),
        20,
        "the silent cluster to fail",
    )
    assert "no heartbeat" in row["reason"]
    assert db.execute("SELECT status FROM clusters WHERE name = %s", (fresh,)).fetchone()["status"] == "RUNNING"


def test_start_timeout_counts_from_the_launch_and_a_queued_start_from_the_create(db, workers):
    """start_timeout (30 s here) judges a launched scheduler; a start still waiting for a launch
    slot is judged by queue_timeout (600 s) from the create, not failed at 30 s."""
    settings = make_settings("postgresql://unused/x", Path("/tmp"))
    settings.server.secret = SECRET

    def pending(created_ago: float, launched_ago: float | None) -> str:
        name = clusters.create_cluster(db, settings, "carol", {})
        db.execute("DELETE FROM jobs WHERE cluster = %s", (name,))  # nobody launches anything here
        db.execute(
            "UPDATE clusters SET created_at = now() - make_interval(secs => %s),"
            " launched_at = now() - make_interval(secs => %s), node = CASE WHEN %s THEN 'node-a' END"
            " WHERE name = %s",
            (created_ago, launched_ago, launched_ago is not None, name),
        )
        return name

    silent_launch = pending(60, 45)
    fresh_launch = pending(60, 5)
    queued = pending(60, None)
    queued_too_long = pending(700, None)
    everyone = [silent_launch, fresh_launch, queued, queued_too_long]

    def failed() -> dict[str, str]:
        rows = db.execute(
            "SELECT name, reason FROM clusters WHERE status IN ('STOPPING', 'FAILED') AND name = ANY(%s)",
            (everyone,),
        ).fetchall()
        return {r["name"]: r["reason"] for r in rows}

    workers.start("node-a")
    wait_until(lambda: {silent_launch, queued_too_long} <= set(failed()), 20, "the two overdue clusters to fail")
    time.sleep(2)  # a few more checks: the other two must stay PENDING
    reasons = failed()
    assert set(reasons) == {silent_launch, queued_too_long}, reasons
    assert "did not start within 30" in reasons[silent_launch]
    assert "no node could start it within 600" in reasons[queued_too_long]


def _runs_since(db, kind: str, since) -> int:
    return db.execute(
        "SELECT count(*) AS n FROM job_log WHERE kind = %s AND outcome = 'done' AND finished_at > %s", (kind, since)
    ).fetchone()["n"]


def test_silence_while_every_api_instance_was_down_is_not_held_against_a_cluster(db, workers):
    """No heartbeat can arrive while no API instance is up: the cluster is judged only once
    an instance has been up, without a gap, for the heartbeat timeout (gatewayha.liveness)."""
    db.execute(  # the only API instance stopped reporting an hour ago: the API tier is down
        "INSERT INTO api_instances (name, up_since, last_seen) VALUES ('gw1:1', now() - interval '2 hours',"
        " now() - interval '1 hour')"
    )
    silent = _running_cluster(db, "node-a", heartbeat_age_s=60)
    t0 = db.execute("SELECT now() AS t").fetchone()["t"]
    workers.start("node-a")
    wait_until(lambda: _runs_since(db, "check_clusters", t0) >= 3, 20, "three cluster checks")
    assert db.execute("SELECT status FROM clusters WHERE name = %s", (silent,)).fetchone()["status"] == "RUNNING"
    # The API is back, but only just: still no judgement.
    db.execute("UPDATE api_instances SET up_since = now(), last_seen = now()")
    t1 = db.execute("SELECT now() AS t").fetchone()["t"]
    wait_until(lambda: _runs_since(db, "check_clusters", t1) >= 1, 20, "a cluster check")
    assert db.execute("SELECT status FROM clusters WHERE name = %s", (silent,)).fetchone()["status"] == "RUNNING"
    # Up for longer than the heartbeat timeout (3 s here) and the cluster is still silent: FAILED.
    db.execute("UPDATE api_instances SET up_since = now() - interval '10 s', last_seen = now()")
    row = wait_until(
        lambda: db.execute(
            "SELECT status, reason FROM clusters WHERE name = %s AND status = 'FAILED'", (silent,)
        ).fetchone(),
        20,
        "the silent cluster to fail once heartbeats could have arrived",
    )
    assert "no heartbeat" in row["reason"]


def test_a_freshly_started_worker_does_not_declare_the_others_lost(db, workers):
    """After every worker was down (or the database was away), all nodes look unseen: the
    first worker back must not fail the other node's clusters before that node can report."""
    db.execute("INSERT INTO nodes (name, host, last_seen) VALUES ('node-b', '10.9.9.9', now() - interval '1 minute')")
    name = _running_cluster(db, "node-b", heartbeat_age_s=-3600)
    t0 = db.execute("SELECT now() AS t").fetchone()["t"]
    workers.start("node-a")
    wait_until(lambda: _runs_since(db, "sweep_nodes", t0) >= 2, 20, "two node sweeps by node-a")
    assert db.execute("SELECT status FROM clusters WHERE name = %s", (name,)).fetchone()["status"] == "RUNNING"
    workers.start("node-b")  # comes back within node-a's first node_timeout (4 s)
    wait_until(lambda: _runs_since(db, "sweep_nodes", t0) >= 6, 30, "more node sweeps")
    assert db.execute("SELECT status FROM clusters WHERE name = %s", (name,)).fetchone()["status"] == "RUNNING"


def test_a_cluster_failing_while_its_node_is_swept_ends_failed(db, db_dsn, tmp_path):
    """check_clusters ("no heartbeat") and sweep_nodes ("node lost") judge the same cluster at
    the same moment on two nodes (CI saw it: molecule's heartbeat timeout 12 s, node timeout 15 s).
    The sweep's UPDATE waits for the failing transaction's row lock; once that commits, the
    sweep must see its stop_cluster job (final FAILED) and leave the cluster FAILED, not STOPPED."""
    import threading

    from gatewayha.db.pool import make_pool
    from gatewayha.jobs import handlers

    db.execute(
        "INSERT INTO nodes (name, host, last_seen, up_since) VALUES"
        " ('judge', '127.0.0.1', now(), now() - interval '1 hour'),"
        " ('gone', '10.9.9.9', now() - interval '1 hour', now() - interval '2 hours')"
    )
    name = _running_cluster(db, "gone", heartbeat_age_s=60)
    settings = make_settings(db_dsn, tmp_path, worker={"node_timeout": 4})
    pool = make_pool(settings.database, "test-sweep-race", open_wait=True)
    errors = []

    def sweep():
        try:
            handlers.sweep_nodes(handlers.Context(settings, pool, None, "judge"), None)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    sweeper = threading.Thread(target=sweep)
    try:
        with psycopg.connect(db_dsn, autocommit=True, row_factory=dict_row) as checker:
            with checker.transaction():
                assert clusters.stop_cluster(checker, name, "no heartbeat for 3 s", failed=True)
                sweeper.start()
                wait_until(
                    lambda: db.execute(
                        "SELECT 1 FROM pg_locks WHERE NOT granted AND locktype IN ('transactionid', 'tuple')"
                    ).fetchone(),
                    10,
                    "the sweep to wait for the failing cluster's row lock",
                )
        sweeper.join(10)
    finally:
        pool.close()
    assert not sweeper.is_alive() and not errors, errors
    row = db.execute("SELECT status, reason FROM clusters WHERE name = %s", (name,)).fetchone()
    assert (row["status"], row["reason"]) == ("FAILED", "no heartbeat for 3 s")


def test_dead_nodes_clusters_fail_and_its_queued_jobs_are_cancelled(db, workers):
    db.execute("INSERT INTO nodes (name, host, last_seen) VALUES ('ghost', '10.9.9.9', now() - interval '1 hour')")
    name = _running_cluster(db, "ghost")
    db.execute("UPDATE clusters SET last_heartbeat = now() + interval '1 hour' WHERE name = %s", (name,))
    jid = queue.enqueue(db, "stop_worker", {"cluster": name, "worker": name + "-abc"}, queue="node:ghost")
    workers.start("node-a")
    row = wait_until(
        lambda: db.execute(
            "SELECT status, reason FROM clusters WHERE name = %s AND status = 'FAILED'", (name,)
        ).fetchone(),
        20,
        "the dead node's cluster to fail",
    )
    assert "node ghost lost" in row["reason"]
    log = db.execute("SELECT outcome FROM job_log WHERE id = %s", (jid,)).fetchone()
    assert log == {"outcome": "cancelled"}


def test_processes_no_active_cluster_owns_are_reaped_when_the_worker_starts(db, workers, tmp_path):
    from gatewayha import tls
    from gatewayha.auth import secrets as sec
    from gatewayha.backends.base import SchedulerSpec
    from gatewayha.options import cluster_config

    settings = node_a_settings(tmp_path)
    backend = node_a_backend(tmp_path)
    orphan = "ab" * 16
    cert, key = tls.new_keypair(orphan)
    backend.start_scheduler(
        SchedulerSpec(
            orphan,
            sec.new_cluster_token()[0],
            "http://127.0.0.1:9/api",
            cert,
            key,
            cluster_config(settings, {}),
        )
    )
    assert backend.scheduler_running(orphan)
    workers.start("node-a")
    wait_until(lambda: not backend.scheduler_running(orphan), 20, "the orphan scheduler to be stopped")
    # Its files go once its processes are gone (the stop finishes after the process exits).
    wait_until(lambda: orphan not in backend.local_clusters(), 10, "the orphan's files to be removed")
    # Its logs are kept for post-mortems, then pruned after the retention.
    kept = tmp_path / "node-a" / "logs" / orphan
    assert any(p.name.endswith("-scheduler.log") for p in kept.iterdir())
    assert backend.prune_logs(3600) == 0 and kept.is_dir()
    assert backend.prune_logs(0) == 1 and not kept.exists()


def test_scheduler_starts_wait_for_a_launch_slot_and_a_slot_frees_when_the_scheduler_reports(db, workers, tmp_path):
    """worker.max_starting = 1: a second scheduler is not launched while the first has not
    reported (its start job keeps the slot), the other starts stay queued and unleased, and
    the slot frees as soon as the first cluster is RUNNING."""
    workers.start(
        "node-a",
        GATEWAYHA_WORKER__MAX_STARTING=1,
        GATEWAYHA_SERVER__API_URL="http://127.0.0.1:9/api",  # nobody answers: no scheduler reports
    )
    settings = make_settings("postgresql://unused/x", Path("/tmp"))
    settings.server.secret = SECRET
    names = [clusters.create_cluster(db, settings, "carol", {}) for _ in range(3)]
    backend = node_a_backend(tmp_path)

    def placed() -> list[str]:
        rows = db.execute("SELECT name FROM clusters WHERE node IS NOT NULL AND name = ANY(%s)", (names,))
        return sorted(r["name"] for r in rows.fetchall())

    def leased_starts() -> int:
        return db.execute(
            "SELECT count(*) AS n FROM jobs WHERE kind = 'start_cluster' AND lease_owner IS NOT NULL"
        ).fetchone()["n"]

    try:
        first = wait_until(lambda: placed(), 20, "the first scheduler to be launched")
        assert len(first) == 1
        wait_until(lambda: backend.scheduler_running(first[0]), 20, "its scheduler process")
        time.sleep(2.5)  # the worker ticks several times meanwhile
        assert placed() == first, "a second scheduler launched while the first had not reported"
        assert leased_starts() == 1
        queued = db.execute(
            "SELECT count(*) AS n FROM jobs WHERE kind = 'start_cluster' AND queue = %s AND lease_owner IS NULL",
            (queue.START_QUEUE,),
        ).fetchone()["n"]
        assert queued == 2
        # The scheduler "reports": the slot frees and the next start is launched.
        db.execute("UPDATE clusters SET status = 'RUNNING' WHERE name = %s", (first[0],))
        second = wait_until(lambda: len(placed()) == 2 and placed(), 10, "the second launch")
        time.sleep(1.5)
        assert placed() == second and leased_starts() == 1
    finally:
        for name in names:
            backend.stop_cluster(name)
    assert not any(backend.scheduler_running(n) for n in names)


def test_worker_starts_take_the_nodes_launch_slots_until_the_worker_is_running(db, workers, tmp_path):
    """worker.max_starting = 1: a scale-up to 2 launches one Dask worker; the second waits in the
    node's start queue, unleased, until the scheduler lists the first (RUNNING), then launches."""

    settings = make_settings("postgresql://unused/x", Path("/tmp"))
    settings.server.secret = SECRET
    users.ensure_user(db, "dave")
    name = clusters.create_cluster(db, settings, "dave", {})
    # The scheduler "is running" on node-a (no process: the workers' scheduler address is a closed
    # port, so they keep retrying and never join).
    db.execute("DELETE FROM jobs WHERE cluster = %s", (name,))
    db.execute(
        "UPDATE clusters SET status = 'RUNNING', node = 'node-a', scheduler_address = 'tls://127.0.0.1:9',"
        " dashboard_address = 'http://127.0.0.1:9', api_address = 'http://127.0.0.1:9' WHERE name = %s",
        (name,),
    )
    beat = {"count": 2, "active_workers": [], "closing_workers": [], "closed_workers": []}
    beat.update(scheduler_address="tls://127.0.0.1:9", dashboard_address="http://127.0.0.1:9")
    db.execute("INSERT INTO nodes (name, host) VALUES ('node-a', '127.0.0.1') ON CONFLICT (name) DO NOTHING")
    token = clusters.cluster_token(SECRET, clusters.get_cluster(db, name))
    clusters.record_heartbeat(db, settings, name, {**beat, "api_address": "http://127.0.0.1:9"}, token)
    starts = db.execute("SELECT queue FROM jobs WHERE kind = 'start_worker' AND cluster = %s", (name,)).fetchall()
    assert [r["queue"] for r in starts] == [queue.node_start_queue("node-a")] * 2
    wnames = [r["name"] for r in db.execute("SELECT name FROM workers WHERE cluster = %s", (name,)).fetchall()]
    backend = node_a_backend(tmp_path)

    def launched() -> list[str]:
        return sorted(w for w in wnames if backend.worker_running(name, w))

    workers.start("node-a", GATEWAYHA_WORKER__MAX_STARTING=1)
    try:
        first = wait_until(lambda: launched(), 20, "the first worker to be launched")
        assert len(first) == 1
        time.sleep(2.5)  # the node ticks several times meanwhile
        assert launched() == first, "a second worker launched while the first had not joined"
        waiting = db.execute(
            "SELECT count(*) AS n FROM jobs WHERE kind = 'start_worker' AND lease_owner IS NULL AND cluster = %s",
            (name,),
        ).fetchone()["n"]
        assert waiting == 1
        # The scheduler lists the first worker: it is RUNNING, its slot frees, the second launches.
        clusters.record_heartbeat(
            db, settings, name, {**beat, "api_address": "http://127.0.0.1:9", "active_workers": first}, token
        )
        assert db.execute("SELECT status FROM workers WHERE name = %s", (first[0],)).fetchone()["status"] == "RUNNING"
        wait_until(lambda: len(launched()) == 2, 10, "the second worker's launch")
    finally:
        backend.stop_cluster(name)
    assert not launched()


def test_a_route_notification_wakes_the_route_thread_and_not_the_claim_loop(db, db_dsn, tmp_path):
    # A route change (200 of them in a 100-cluster storm) is for the route thread; waking the
    # claim loop too ran a tick (node heartbeat, periodic and job claims) for nothing.
    import threading

    from gatewayha.jobs.worker import Worker

    worker = Worker(make_settings(db_dsn, tmp_path, node={"name": "node-l", "launcher": "process"}))
    listener = threading.Thread(target=worker._listen, daemon=True)
    listener.start()
    try:
        assert wait_until(worker.routes_dirty.is_set, 10)  # set once on (re)connecting: catch up
        assert wait_until(worker.wake.is_set, 10)
        worker.routes_dirty.clear()
        worker.wake.clear()

        db.execute("SELECT pg_notify(%s, %s)", (clusters.ROUTES_CHANNEL, "c1"))
        assert wait_until(worker.routes_dirty.is_set, 10)
        time.sleep(0.3)
        assert not worker.wake.is_set()

        db.execute("SELECT pg_notify(%s, %s)", (queue.CHANNEL, "any"))
        assert wait_until(worker.wake.is_set, 10)
    finally:
        worker.stopping.set()
        listener.join(10)
        worker.executor.shutdown()
        worker.pool.close()
    assert not listener.is_alive()
