"""Job runners (gatewayha-jobs) against a real Postgres: leases of a killed job runner (subprocesses:
kill -9, restart), and, in this process (tests/integration/inprocess.py), periodic ticks, a fresh job
runner's judgement of other nodes, orphans, launch slots. The judgements themselves (timeouts, dead
nodes) are in test_lifecycle.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest
from inprocess import RecordingBackend, emptied_db, in_process_workers, tick_for, tick_until
from psycopg.rows import dict_row

from conftest import SECRET, make_settings
from gatewayha import clusters, lifecycle, liveness
from gatewayha.auth import users
from gatewayha.jobs import queue
from helpers import wait_until

ROOT = Path(__file__).resolve().parents[2]

# Long enough for the process checks of a launch slot's holder (once a second) to have run.
HOLD_CHECKS_S = 1.2


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
    with emptied_db(db_dsn, ("jobs", "job_log", "periodic", "nodes", "clusters", "api_instances")) as conn:
        yield conn


@pytest.fixture
def workers(db_dsn, tmp_path):
    w = Workers(db_dsn, tmp_path)
    yield w
    w.stop_all()


@pytest.fixture
def in_process(db_dsn, tmp_path):
    with in_process_workers(db_dsn, tmp_path) as make:
        yield make


def _now(db):
    return db.execute("SELECT now() AS t").fetchone()["t"]


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


def test_periodic_task_runs_once_per_tick_across_two_workers(db, in_process):
    a, b = in_process(RecordingBackend(), "node-a"), in_process(RecordingBackend(), "node-b")
    interval = 0.25
    queue.ensure_periodic(db, {"check_clusters": interval})
    t0 = _now(db)
    start = time.monotonic()
    tick_for(2.5, a, b)
    elapsed = time.monotonic() - start
    wait_until(lambda: not a.held and not b.held, 10, "the claimed jobs to finish", interval=0.02)
    ran = db.execute(
        "SELECT count(*) AS n FROM job_log WHERE kind = 'check_clusters' AND outcome = 'done' AND finished_at > %s",
        (t0,),
    ).fetchone()["n"]
    # About one run per interval in all, not one per job runner per interval.
    assert 4 <= ran <= elapsed / interval + 2, ran


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


def _runs_since(db, kind: str, since, node: str | None = None) -> int:
    """How many runs of ``kind`` finished since ``since`` (by ``node``, or by any)."""
    return db.execute(
        "SELECT count(*) AS n FROM job_log WHERE kind = %s AND outcome = 'done' AND finished_at > %s"
        " AND (%s::text IS NULL OR split_part(finished_by, '/', 1) = %s)",
        (kind, since, node, node),
    ).fetchone()["n"]


def test_a_freshly_started_worker_does_not_declare_the_others_lost(db, in_process):
    """After every job runner was down (or the database was away), all nodes look unseen: the
    first one back must not fail the other node's clusters before that node can report."""
    db.execute("INSERT INTO nodes (name, host, last_seen) VALUES ('node-b', '10.9.9.9', now() - interval '1 minute')")
    name = _running_cluster(db, "node-b", heartbeat_age_s=-3600)
    timeout = 2.0
    timing = {"node_timeout": timeout, "node_heartbeat_interval": 0.25}
    a = in_process(RecordingBackend(), "node-a", worker=timing)
    b = in_process(RecordingBackend(), "node-b", worker=timing)
    queue.ensure_periodic(db, {"sweep_nodes": 0.2})
    t0 = _now(db)
    # node-a's job runner starts (Worker.run's first step) and sweeps while node-b is unseen.
    liveness.start_node(db, "node-a", a.settings.node.host, 0.25)
    tick_until(lambda: _runs_since(db, "sweep_nodes", t0, "node-a") >= 2, 10, "two node sweeps by node-a", a)
    assert db.execute("SELECT status FROM clusters WHERE name = %s", (name,)).fetchone()["status"] == "RUNNING"
    # node-b comes back within node-a's first node timeout; node-a becomes steady and judges on.
    liveness.start_node(db, "node-b", b.settings.node.host, 0.25)
    tick_until(lambda: liveness.node_steady(db, "node-a", timeout), 15, "node-a to be steady", a, b)
    steady = _now(db)
    tick_until(lambda: _runs_since(db, "sweep_nodes", steady, "node-a") >= 3, 10, "sweeps by a steady node", a, b)
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
    settings = make_settings(db_dsn, tmp_path, jobs={"node_timeout": 4})
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


def _beat(count: int, active: list[str] | None = None) -> dict:
    return {
        "count": count,
        "active_workers": active or [],
        "closing_workers": [],
        "closed_workers": [],
        "scheduler_address": "tls://127.0.0.1:40001",
        "dashboard_address": "http://127.0.0.1:40002",
        "api_address": "https://127.0.0.1:40003",
    }


def test_losing_a_gateway_node_fails_no_cluster_of_a_backend_that_is_not_node_bound(db, workers, tmp_path, request):
    """backend.name picks a plug-in whose processes are not node-bound (tests/unbound_backend.py:
    real processes, reachable from both nodes). Its clusters have no node: their jobs go to the
    shared queues, the node that launched the scheduler is killed (-9) and swept as lost, and the
    cluster stays RUNNING; the survivor starts its worker and stops it. A worker and a scheduler
    that die are found by the batched process check (one per tick): the worker is marked FAILED,
    the cluster fails with the backend's reason."""
    from unbound_backend import UnboundLocalBackend

    from gatewayha.errors import Unprocessable

    shared = tmp_path / "shared"
    plugin = {
        "GATEWAYHA_BACKEND__NAME": "unbound_backend:UnboundLocalBackend",
        "GATEWAYHA_NODE__STATE_DIR": str(shared),
        "PYTHONPATH": str(ROOT / "tests"),
        "GATEWAYHA_CLUSTER__HEARTBEAT_TIMEOUT": "600",  # the test plays the scheduler's heartbeats
        "GATEWAYHA_SERVER__API_URL": "http://127.0.0.1:9/api",
        # Node-bound only: a warm pool, and orphan reaping (every node_reconcile would otherwise
        # stop the processes of clusters that have no node: all of them here).
        "GATEWAYHA_CLUSTER__WARM_POOL_SIZE": "1",
        "GATEWAYHA_HAPROXY__RESYNC_INTERVAL": "1",
    }
    workers.start("node-a", **plugin)
    workers.start("node-b", **plugin)
    settings = make_settings("postgresql://unused/x", tmp_path, node={"state_dir": str(shared)})
    backend = UnboundLocalBackend(settings)

    def leave_nothing_running():  # also when an assertion below fails midway
        for left in backend.local_clusters():
            backend.stop_cluster(left, None, {})

    request.addfinalizer(leave_nothing_running)
    name = clusters.create_cluster(db, settings, "carol", {})
    row = wait_until(
        lambda: db.execute(
            "SELECT node, scheduler_state FROM clusters WHERE name = %s AND scheduler_state IS NOT NULL", (name,)
        ).fetchone(),
        30,
        "the scheduler's launch",
    )
    assert row["node"] is None  # no gateway node owns it
    launched_by = row["scheduler_state"]["node"]
    survivor = {"node-a": "node-b", "node-b": "node-a"}[launched_by]
    assert backend.scheduler_running(name, row["scheduler_state"])
    # Where it runs is learnt by the batched check (one per tick) and stored with its state.
    state = wait_until(
        lambda: db.execute(
            "SELECT scheduler_state AS s FROM clusters WHERE name = %s AND scheduler_state ? 'host'", (name,)
        ).fetchone(),
        10,
        "a check to store the scheduler's host",
    )["s"]
    assert state == {**row["scheduler_state"], "host": "127.0.0.1"}
    token = clusters.cluster_token(SECRET, clusters.get_cluster(db, name))
    # The first report's addresses are pinned to the host of the backend's state record.
    elsewhere = {k: v.replace("127.0.0.1", "127.0.0.2") if isinstance(v, str) else v for k, v in _beat(0).items()}
    with pytest.raises(Unprocessable, match=r"not on the host the cluster was placed on \(127.0.0.1\)"):
        clusters.record_heartbeat(db, settings, name, elsewhere, token)
    clusters.record_heartbeat(db, settings, name, _beat(0), token)
    assert db.execute("SELECT status FROM clusters WHERE name = %s", (name,)).fetchone()["status"] == "RUNNING"

    workers.kill9(launched_by)
    t0 = db.execute("SELECT now() AS t").fetchone()["t"]
    wait_until(
        lambda: db.execute(
            "SELECT 1 FROM nodes WHERE name = %s AND last_seen < now() - interval '4 seconds'", (launched_by,)
        ).fetchone(),
        20,
        f"{launched_by} to be unseen for the node timeout",
    )
    t_lost = db.execute("SELECT now() AS t").fetchone()["t"]
    wait_until(lambda: _runs_since(db, "sweep_nodes", t_lost) >= 2, 20, f"two node sweeps by {survivor}")
    assert _runs_since(db, "sweep_nodes", t0) >= 2
    assert db.execute("SELECT status FROM clusters WHERE name = %s", (name,)).fetchone()["status"] == "RUNNING"
    assert backend.scheduler_running(name)
    assert _runs_since(db, "node_reconcile", t0) >= 2  # orphan reaping had its chances
    assert db.execute("SELECT count(*) AS n FROM warm_pool").fetchone()["n"] == 0

    # A scale-up: the worker's start goes to the shared start queue and the survivor launches it.
    clusters.record_heartbeat(db, settings, name, _beat(1), token)
    # Queued, or (the survivor is quick) already done and logged.
    (start,) = db.execute(
        "SELECT queue FROM jobs WHERE kind = 'start_worker' AND cluster = %s"
        " UNION ALL SELECT queue FROM job_log WHERE kind = 'start_worker' AND cluster = %s",
        (name, name),
    ).fetchall()
    assert start["queue"] == queue.START_QUEUE
    w = wait_until(
        lambda: db.execute(
            "SELECT name, state FROM workers WHERE cluster = %s AND state IS NOT NULL", (name,)
        ).fetchone(),
        30,
        "the worker's launch",
    )
    assert w["state"]["node"] == survivor and backend.worker_running(name, w["name"], w["state"])
    # A worker killed behind the backend's back: the batched check marks it FAILED.
    unit = w["state"]["unit"]
    os.killpg(int((shared / "run" / f"{unit}.pid").read_text().split()[0]), signal.SIGKILL)
    wait_until(
        lambda: db.execute("SELECT 1 FROM workers WHERE name = %s AND status = 'FAILED'", (w["name"],)).fetchone(),
        20,
        "the dead worker to be marked FAILED",
    )

    # A stop goes to the shared queue too: the survivor stops what the lost node launched.
    assert clusters.stop_cluster(db, name, "done")
    assert db.execute("SELECT queue FROM jobs WHERE kind = 'stop_cluster' AND cluster = %s", (name,)).fetchone() == {
        "queue": "any"
    }
    wait_until(
        lambda: db.execute("SELECT 1 FROM clusters WHERE name = %s AND status = 'STOPPED'", (name,)).fetchone(),
        30,
        "the cluster to stop",
    )
    assert not backend.scheduler_running(name) and not backend.worker_running(name, w["name"])
    assert name not in backend.local_clusters()

    # A scheduler killed behind the backend's back: the batched check fails its cluster.
    doomed = clusters.create_cluster(db, settings, "carol", {})
    wait_until(lambda: backend.scheduler_running(doomed), 30, "the second scheduler")
    wait_until(
        lambda: db.execute(
            "SELECT 1 FROM clusters WHERE name = %s AND scheduler_state IS NOT NULL", (doomed,)
        ).fetchone(),
        10,
        "its state to be saved",
    )
    pid = int((shared / "run" / f"{doomed}-scheduler.pid").read_text().split()[0])
    os.killpg(pid, signal.SIGKILL)
    row = wait_until(
        lambda: db.execute(
            "SELECT status, reason FROM clusters WHERE name = %s AND status = 'FAILED'", (doomed,)
        ).fetchone(),
        20,
        "the dead scheduler's cluster to fail",
    )
    assert row["reason"] == f"scheduler: {doomed}-scheduler is not running on {survivor}"


def test_processes_no_active_cluster_owns_are_reaped_when_the_worker_starts(db, in_process):
    from gatewayha import tls
    from gatewayha.auth import secrets as sec
    from gatewayha.backends.base import SchedulerSpec
    from gatewayha.options import cluster_config

    worker = in_process(None, "node-a")
    backend = worker.backend
    orphan = "ab" * 16
    cert, key = tls.new_keypair(orphan)
    backend.start_scheduler(
        SchedulerSpec(
            orphan,
            sec.new_cluster_token()[0],
            "http://127.0.0.1:9/api",
            cert,
            key,
            cluster_config(worker.settings, {}),
        )
    )
    assert backend.scheduler_running(orphan)
    runner = threading.Thread(target=worker.run, name="job-runner", daemon=True)
    runner.start()  # the job runner's own start, as gatewayha-worker's main runs it
    try:
        wait_until(lambda: not backend.scheduler_running(orphan), 20, "the orphan scheduler to be stopped")
        # Its files go once its processes are gone (the stop finishes after the process exits).
        wait_until(lambda: orphan not in backend.local_clusters(), 10, "the orphan's files to be removed")
    finally:
        worker.stop()
        runner.join(15)
    assert not runner.is_alive()
    # Its logs are kept for post-mortems, then pruned after the retention.
    kept = backend.logs_root / orphan
    assert any(p.name.endswith("-scheduler.log") for p in kept.iterdir())
    assert backend.prune_logs(3600) == 0 and kept.is_dir()
    assert backend.prune_logs(0) == 1 and not kept.exists()


def test_scheduler_starts_wait_for_a_launch_slot_and_a_slot_frees_when_the_scheduler_reports(db, in_process):
    """jobs.launch_slots = 1: a second scheduler is not launched while the first has not
    reported (its start job keeps the slot), the other starts stay queued and unleased, and
    the slot frees as soon as the first cluster is RUNNING."""
    worker = in_process(
        None,
        "node-a",
        jobs={"launch_slots": 1},
        server={"api_url": "http://127.0.0.1:9/api"},  # nobody answers: no scheduler reports
    )
    backend = worker.backend
    settings = make_settings("postgresql://unused/x", Path("/tmp"))
    settings.server.secret = SECRET
    names = [clusters.create_cluster(db, settings, "carol", {}) for _ in range(3)]

    def placed() -> list[str]:
        rows = db.execute("SELECT name FROM clusters WHERE node IS NOT NULL AND name = ANY(%s)", (names,))
        return sorted(r["name"] for r in rows.fetchall())

    def leased_starts() -> int:
        return db.execute(
            "SELECT count(*) AS n FROM jobs WHERE kind = 'start_cluster' AND lease_owner IS NOT NULL"
        ).fetchone()["n"]

    def held() -> list[str]:
        return sorted(j.cluster for j in list(worker.held.values()))

    try:
        first = tick_until(placed, 20, "the first scheduler to be launched", worker)
        assert len(first) == 1
        wait_until(lambda: backend.scheduler_running(first[0]), 20, "its scheduler process")
        tick_for(HOLD_CHECKS_S, worker)  # its start job checks the process meanwhile, and holds on
        assert placed() == first, "a second scheduler launched while the first had not reported"
        assert held() == first and leased_starts() == 1
        queued = db.execute(
            "SELECT count(*) AS n FROM jobs WHERE kind = 'start_cluster' AND queue = %s AND lease_owner IS NULL",
            (queue.START_QUEUE,),
        ).fetchone()["n"]
        assert queued == 2
        # The scheduler "reports": the slot frees and the next start is launched.
        db.execute("UPDATE clusters SET status = 'RUNNING' WHERE name = %s", (first[0],))
        second = tick_until(lambda: len(placed()) == 2 and placed(), 10, "the second launch", worker)
        tick_for(HOLD_CHECKS_S, worker)
        assert placed() == second and leased_starts() == 1
        assert held() == sorted(set(second) - set(first))
    finally:
        for name in names:
            backend.stop_cluster(name)
    assert not any(backend.scheduler_running(n) for n in names)


def test_worker_starts_take_the_nodes_launch_slots_until_the_worker_is_running(db, in_process):
    """jobs.launch_slots = 1: a scale-up to 2 launches one Dask worker; the second waits in the
    node's start queue, unleased, until the scheduler lists the first (RUNNING), then launches.
    (No periodic task runs here: as a job runner subprocess, check_clusters failed the cluster,
    silent for its 3 s heartbeat timeout between our two heartbeats, and the second launch never
    came.)"""

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
    worker = in_process(None, "node-a", jobs={"launch_slots": 1})
    backend = worker.backend

    def launched() -> list[str]:
        return sorted(w for w in wnames if backend.worker_running(name, w))

    try:
        first = tick_until(launched, 20, "the first worker to be launched", worker)
        assert len(first) == 1
        tick_for(HOLD_CHECKS_S, worker)  # its start job checks the process meanwhile, and holds on
        assert launched() == first, "a second worker launched while the first had not joined"
        assert [j.payload["worker"] for j in list(worker.held.values())] == first
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
        tick_until(lambda: len(launched()) == 2, 10, "the second worker's launch", worker)
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

        # The new channel, and the old one that nodes of the previous release NOTIFY; they are
        # handled in order: once the last is seen, the handling of those before it is over.
        for i, channel in enumerate((*lifecycle.CHANNELS, lifecycle.CLUSTER_CHANGED)):
            db.execute("SELECT pg_notify(%s, %s)", (channel, f"c{i}"))
            assert wait_until(worker.routes_dirty.is_set, 10)
            worker.routes_dirty.clear()
        assert not worker.wake.is_set()

        db.execute("SELECT pg_notify(%s, %s)", (queue.CHANNEL, "any"))
        assert wait_until(worker.wake.is_set, 10)
    finally:
        worker.stopping.set()
        listener.join(10)
        worker.executor.shutdown()
        worker.pool.close()
    assert not listener.is_alive()


def test_a_cluster_whose_software_environment_is_missing_fails_at_once_naming_it(db, db_dsn, workers, tmp_path):
    """The start is refused for good (gatewayha.errors.BackendRefused): FAILED with the reason at
    the first attempt, not retried until cluster.start_timeout."""
    gone = {"gone__prefix": str(tmp_path / "not-installed"), "there__prefix": sys.prefix}
    settings = make_settings(db_dsn, tmp_path, environments=gone, cluster={"default_environment": "there"})
    name = clusters.create_cluster(db, settings, "carol", {"software_environment": "gone"})
    started = time.monotonic()
    workers.start(
        "node-a",
        GATEWAYHA_ENVIRONMENTS__GONE__PREFIX=gone["gone__prefix"],
        GATEWAYHA_ENVIRONMENTS__THERE__PREFIX=sys.prefix,
        GATEWAYHA_CLUSTER__DEFAULT_ENVIRONMENT="there",
    )
    row = wait_until(
        lambda: db.execute(
            "SELECT status, reason FROM clusters WHERE name = %s AND status = 'FAILED'", (name,)
        ).fetchone(),
        25,
        "the cluster to fail",
    )
    assert time.monotonic() - started < 25  # far below the job runner's start_timeout (30 s)
    assert row["reason"].startswith("software environment 'gone': ")
    assert f"{tmp_path}/not-installed/bin/python is not an executable on node node-a" in row["reason"]
    log = db.execute("SELECT outcome, attempts FROM job_log WHERE cluster = %s AND kind = 'start_cluster'", (name,))
    assert log.fetchall() == [{"outcome": "done", "attempts": 1}]
    assert not (tmp_path / "node-a" / "clusters" / name).exists()  # the stop job cleaned up
