"""A malformed job (missing or ill-typed payload keys) fails at once, for good, with its reason,
in a job worker's own claim loop against a real Postgres; a job that merely failed, or whose kind
this release does not know (a newer node's, in a rolling upgrade), is still retried."""

from __future__ import annotations

import pytest
from inprocess import RecordingBackend, emptied_db, in_process_workers, tick_until
from psycopg.types.json import Jsonb

from gatewayha.jobs import queue
from helpers import wait_until

CLUSTER = "0123456789abcdef0123456789abcdef"
OTHER = "f" * 32


@pytest.fixture
def db(db_dsn):
    with emptied_db(db_dsn, ("jobs", "job_log", "periodic", "clusters"), owners=()) as conn:
        yield conn


@pytest.fixture
def run_worker(db_dsn, tmp_path):
    with in_process_workers(db_dsn, tmp_path) as make:
        yield make


def run_until(worker, predicate, what: str):
    """Tick ``worker`` until ``predicate`` holds, then let the jobs it claimed finish."""
    value = tick_until(predicate, 10, what, worker)
    wait_until(lambda: not worker.held, 10, "the claimed jobs to finish", interval=0.02)
    return value


def logged(db, jid: int):
    return db.execute("SELECT outcome, attempts, finished_by, last_error FROM job_log WHERE id = %s", (jid,)).fetchone()


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
    # Ended when it leaves the queue: a retried one (50 ms apart here) would leave after 5 attempts.
    ended = run_until(run_worker(backend), lambda: logged(db, jid), "the job to end")
    assert db.execute("SELECT id FROM jobs WHERE id = %s", (jid,)).fetchone() is None
    assert ended["outcome"] == "dead" and ended["attempts"] == 1, ended
    assert ended["finished_by"].startswith("node-m/")
    assert ended["last_error"].startswith("malformed job: ") and reason in ended["last_error"], ended
    assert backend.calls == []  # refused before anything was done


def test_a_payload_that_is_not_an_object_fails_once(db, run_worker):
    jid = db.execute(
        "INSERT INTO jobs (kind, payload) VALUES ('stop_cluster', %s) RETURNING id", (Jsonb([CLUSTER]),)
    ).fetchone()["id"]
    backend = RecordingBackend()
    ended = run_until(run_worker(backend), lambda: logged(db, jid), "the job to end")
    assert (ended["outcome"], ended["attempts"]) == ("dead", 1)
    assert "the payload must be a JSON object" in ended["last_error"]
    assert backend.calls == []


def test_a_job_of_a_kind_this_release_does_not_know_is_retried_not_killed(db, run_worker):
    """In a rolling upgrade an old node may claim a job a new node enqueued: it must hand it back
    for a node that knows the kind (retry with backoff), not fail it for good."""
    backend = RecordingBackend()
    jid = queue.enqueue(db, "a_kind_of_a_later_release", {"cluster": CLUSTER}, max_attempts=100)

    def queued():
        return db.execute("SELECT attempts, last_error FROM jobs WHERE id = %s", (jid,)).fetchone()

    run_until(run_worker(backend), lambda: logged(db, jid) or (queued() or {}).get("attempts", 0) >= 2, "a retry")
    row = queued()
    assert row is not None, "the job was ended instead of handed back"
    assert row["attempts"] >= 2 and "unknown job kind 'a_kind_of_a_later_release'" in row["last_error"], row
    assert db.execute("SELECT 1 FROM job_log WHERE id = %s", (jid,)).fetchone() is None
    assert backend.calls == []


def test_a_job_that_failed_for_a_passing_reason_is_still_retried(db, run_worker):
    backend = RecordingBackend(fail_stops=2)
    jid = queue.enqueue(db, "stop_cluster", {"cluster": CLUSTER, "final": "STOPPED", "reason": "test"})
    ended = run_until(run_worker(backend), lambda: logged(db, jid), "the job to end")
    assert (ended["outcome"], ended["attempts"]) == ("done", 3)
    assert "the backend is busy" in ended["last_error"]
    assert backend.calls == [("stop_cluster", CLUSTER)] * 3
