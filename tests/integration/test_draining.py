"""A drained node (gatewayha-admin nodes drain) starts no new scheduler; another node does, and
the drained node goes on serving what it runs. Job workers in this process, a real Postgres."""

from __future__ import annotations

from pathlib import Path

import pytest
from inprocess import RecordingBackend, emptied_db, in_process_workers, tick_until

from conftest import SECRET, make_settings
from gatewayha import clusters, liveness
from gatewayha.jobs import queue
from helpers import wait_until


@pytest.fixture
def db(db_dsn):
    with emptied_db(db_dsn, ("jobs", "job_log", "periodic", "clusters", "nodes")) as conn:
        yield conn


@pytest.fixture
def workers(db_dsn, tmp_path):
    with in_process_workers(db_dsn, tmp_path) as make:
        yield make


def run_until(worker, predicate, what: str) -> None:
    """Tick ``worker`` until ``predicate`` holds, then let the jobs it claimed finish."""
    tick_until(predicate, 10, what, worker)
    wait_until(lambda: not worker.held, 10, "the claimed jobs to finish", interval=0.02)


def create(db) -> str:
    settings = make_settings("postgresql://unused/x", Path("/tmp"))
    settings.server.secret = SECRET
    return clusters.create_cluster(db, settings, "carol", {})


def test_a_drained_node_leaves_new_schedulers_to_the_others_and_takes_them_again_when_undrained(db, workers):
    drained_backend, other_backend = RecordingBackend(), RecordingBackend()
    drained, other = workers(drained_backend, "node-d"), workers(other_backend, "node-o")
    liveness.report_node(db, "node-d", "127.0.0.1", 2)
    assert liveness.set_draining(db, "node-d", True)

    name = create(db)
    # The tick that reads "draining" (its node heartbeat) claims next: from the drained queues.
    run_until(drained, lambda: drained.draining, "node-d to see it is drained")
    assert drained_backend.calls == []
    job = db.execute("SELECT queue, attempts, lease_owner FROM jobs WHERE cluster = %s", (name,)).fetchone()
    assert (job["queue"], job["attempts"], job["lease_owner"]) == (queue.START_QUEUE, 0, None), job

    # (Its start job then holds a launch slot until the scheduler reports: the workers' stop ends it.)
    tick_until(lambda: other_backend.calls, 10, "node-o to start the scheduler", other)
    assert other_backend.calls == [("start_scheduler", name)]
    assert db.execute("SELECT node FROM clusters WHERE name = %s", (name,)).fetchone()["node"] == "node-o"

    # Its own node's launches (a worker of a cluster it runs) are still its to do.
    assert queue.start_queues("node-d")[1] in drained.start_queues

    assert liveness.set_draining(db, "node-d", False)
    second = create(db)
    tick_until(lambda: drained_backend.calls, 10, "node-d to start the second scheduler", drained)
    assert not drained.draining
    assert drained_backend.calls == [("start_scheduler", second)]
