"""A malformed job (missing or ill-typed payload keys) fails at once, for good, with its reason,
in a job worker's own claim loop against a real Postgres; a job that merely failed, or whose kind
this release does not know (a newer node's, in a rolling upgrade), is still retried."""

from __future__ import annotations

import time

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from conftest import make_settings
from gatewayha.backends.base import Backend
from gatewayha.jobs import queue
from gatewayha.jobs.worker import Worker
from helpers import wait_until

CLUSTER = "0123456789abcdef0123456789abcdef"
OTHER = "f" * 32


class RecordingBackend(Backend):
    """Records every call; ``fail_stops`` stop_cluster calls raise first (a passing failure)."""

    def __init__(self, fail_stops: int = 0):
        self.calls: list[tuple] = []
        self.fail_stops = fail_stops

    def start_scheduler(self, spec):
        self.calls.append(("start_scheduler", spec.cluster_name))

    def stop_scheduler(self, cluster_name):
        self.calls.append(("stop_scheduler", cluster_name))

    def scheduler_running(self, cluster_name):
        return False

    def start_worker(self, spec):
        self.calls.append(("start_worker", spec.worker_name))

    def stop_worker(self, cluster_name, worker_name):
        self.calls.append(("stop_worker", cluster_name, worker_name))

    def worker_running(self, cluster_name, worker_name):
        return False

    def stop_cluster(self, cluster_name):
        self.calls.append(("stop_cluster", cluster_name))
        if self.fail_stops > 0:
            self.fail_stops -= 1
            raise RuntimeError("the backend is busy")

    def local_clusters(self):
        return set()


@pytest.fixture
def db(db_dsn):
    with psycopg.connect(db_dsn, autocommit=True, row_factory=dict_row) as conn:
        conn.execute("DELETE FROM jobs; DELETE FROM job_log; DELETE FROM periodic; DELETE FROM clusters")
        yield conn


@pytest.fixture
def run_worker(db_dsn, tmp_path):
    """Start a Worker of node-m in this process (retries after 50 ms: a retry would show at
    once); ``run(seconds)`` drives its claim loop, as its main loop does."""
    made: list[Worker] = []

    def make(backend: Backend) -> Worker:
        settings = make_settings(
            db_dsn,
            tmp_path,
            node={"name": "node-m", "launcher": "process", "isolation": "none"},
            worker={"retry_base_seconds": 0.05, "retry_max_seconds": 0.05, "concurrency": 2},
        )
        worker = Worker(settings, backend=backend)
        made.append(worker)
        return worker

    yield make
    for worker in made:
        worker.stop()
        worker.executor.shutdown(wait=True)
        worker.pool.close()


def drive(worker: Worker, seconds: float) -> None:
    state = {"next_node_heartbeat": 0.0, "started": True}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        worker.tick(time.monotonic(), state)
        time.sleep(0.02)
    wait_until(lambda: not worker.held, 10, "the claimed jobs to finish", interval=0.02)


MALFORMED = [
    ("start_cluster", {}, "cluster: invalid cluster name None"),
    ("start_cluster", {"cluster": 5}, "cluster: invalid cluster name 5"),
    ("stop_cluster", {"cluster": "../../etc"}, "cluster: invalid cluster name '../../etc'"),
    ("stop_cluster", {"cluster": CLUSTER, "final": "EXPLODED"}, "final: one of"),
    ("stop_cluster", {"cluster": CLUSTER, "reason": ["x"]}, "reason: a string"),
    ("start_worker", {"cluster": CLUSTER}, "worker: invalid worker name None"),
    ("stop_worker", {"cluster": CLUSTER, "worker": f"{OTHER}-a"}, "for cluster"),
    ("stop_worker", {"cluster": CLUSTER, "worker": f"{CLUSTER}-a\n"}, "worker: invalid worker name"),
    ("probe", {"seconds": "3"}, "seconds: a number"),
]


@pytest.mark.parametrize("kind, payload, reason", MALFORMED, ids=[f"{k}-{r[:20]}" for k, _, r in MALFORMED])
def test_a_malformed_job_fails_once_with_its_reason_and_is_not_retried(db, run_worker, kind, payload, reason):
    backend = RecordingBackend()
    jid = queue.enqueue(db, kind, payload, max_attempts=5)
    drive(run_worker(backend), 1.0)  # 20 retry periods
    assert db.execute("SELECT id FROM jobs WHERE id = %s", (jid,)).fetchone() is None
    [logged] = db.execute("SELECT outcome, attempts, finished_by, last_error FROM job_log WHERE id = %s", (jid,))
    assert logged["outcome"] == "dead" and logged["attempts"] == 1, logged
    assert logged["finished_by"].startswith("node-m/")
    assert logged["last_error"].startswith("malformed job: ") and reason in logged["last_error"], logged
    assert backend.calls == []  # refused before anything was done


def test_a_payload_that_is_not_an_object_fails_once(db, run_worker):
    jid = db.execute(
        "INSERT INTO jobs (kind, payload) VALUES ('stop_cluster', %s) RETURNING id", (Jsonb([CLUSTER]),)
    ).fetchone()["id"]
    backend = RecordingBackend()
    drive(run_worker(backend), 0.5)
    [logged] = db.execute("SELECT outcome, attempts, last_error FROM job_log WHERE id = %s", (jid,))
    assert (logged["outcome"], logged["attempts"]) == ("dead", 1)
    assert "the payload must be a JSON object" in logged["last_error"]
    assert backend.calls == []


def test_a_job_of_a_kind_this_release_does_not_know_is_retried_not_killed(db, run_worker):
    """In a rolling upgrade an old node may claim a job a new node enqueued: it must hand it back
    for a node that knows the kind (retry with backoff), not fail it for good."""
    backend = RecordingBackend()
    jid = queue.enqueue(db, "a_kind_of_a_later_release", {"cluster": CLUSTER}, max_attempts=100)
    drive(run_worker(backend), 0.5)
    row = db.execute("SELECT attempts, last_error FROM jobs WHERE id = %s", (jid,)).fetchone()
    assert row is not None, "the job was ended instead of handed back"
    assert row["attempts"] >= 2 and "unknown job kind 'a_kind_of_a_later_release'" in row["last_error"], row
    assert db.execute("SELECT 1 FROM job_log WHERE id = %s", (jid,)).fetchone() is None
    assert backend.calls == []


def test_a_job_that_failed_for_a_passing_reason_is_still_retried(db, run_worker):
    backend = RecordingBackend(fail_stops=2)
    jid = queue.enqueue(db, "stop_cluster", {"cluster": CLUSTER, "final": "STOPPED", "reason": "test"})
    drive(run_worker(backend), 1.0)
    [logged] = db.execute("SELECT outcome, attempts, last_error FROM job_log WHERE id = %s", (jid,))
    assert (logged["outcome"], logged["attempts"]) == ("done", 3)
    assert "the backend is busy" in logged["last_error"]
    assert backend.calls == [("stop_cluster", CLUSTER)] * 3
