"""Job runners run in the test's own process against the real Postgres, with a backend that
records calls: a job handler's effect is checked in milliseconds, without a job runner subprocess
(``tick_for``, ``tick_until`` and ``drive`` run the claim loop as the job runner's main loop does)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg.rows import dict_row

from conftest import make_settings
from gatewayha.auth import users
from gatewayha.backends.base import Backend, ProcessStatus
from gatewayha.jobs.worker import Worker
from helpers import wait_until


@contextmanager
def emptied_db(
    db_dsn: str, tables: tuple[str, ...], owners: tuple[str, ...] = ("carol",)
) -> Iterator[psycopg.Connection]:
    """A connection (autocommit, dict rows) to the module's database with ``tables`` emptied
    (in that order) and the users ``owners`` present: each test starts from a known state."""
    with psycopg.connect(db_dsn, autocommit=True, row_factory=dict_row) as conn:
        conn.execute("; ".join(f"DELETE FROM {table}" for table in tables))
        for owner in owners:
            users.ensure_user(conn, owner)
        yield conn


class RecordingBackend(Backend):
    """Records every call; ``fail_stops`` stop_cluster calls raise first (a passing failure)."""

    def __init__(self, fail_stops: int = 0):
        self.calls: list[tuple] = []
        self.fail_stops = fail_stops

    def start_scheduler(self, spec):
        self.calls.append(("start_scheduler", spec.cluster_name))
        return {"recorded": spec.cluster_name}

    def stop_scheduler(self, cluster_name, state=None):
        self.calls.append(("stop_scheduler", cluster_name))

    def check_schedulers(self, items):
        return [ProcessStatus(False, "recorded only") for _ in items]

    def start_worker(self, spec):
        self.calls.append(("start_worker", spec.worker_name))
        return {"recorded": spec.worker_name}

    def stop_worker(self, cluster_name, worker_name, state=None):
        self.calls.append(("stop_worker", cluster_name, worker_name))

    def check_workers(self, items):
        return [ProcessStatus(False, "recorded only") for _ in items]

    def stop_cluster(self, cluster_name, scheduler_state=None, worker_states=None):
        self.calls.append(("stop_cluster", cluster_name))
        if self.fail_stops > 0:
            self.fail_stops -= 1
            raise RuntimeError("the backend is busy")

    def local_clusters(self):
        return set()


@contextmanager
def in_process_workers(db_dsn: str, tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    """``make(backend, node="node-m", **sections)`` builds a Worker of that node (retries after
    50 ms: a retry shows at once; ``sections`` override settings, e.g. ``jobs={...}``);
    ``backend=None`` gives it the real local backend (process launcher, no uid isolation),
    whose processes are under ``tmp_path / node``. All are stopped at the end."""
    made: list[Worker] = []

    def make(backend: Backend | None, node: str = "node-m", **sections) -> Worker:
        worker_section = {"retry_base_seconds": 0.05, "retry_max_seconds": 0.05, "concurrency": 2}
        worker_section.update(sections.pop("jobs", {}))
        settings = make_settings(
            db_dsn,
            tmp_path / node,
            node={"name": node, "launcher": "process", "isolation": "none"},
            jobs=worker_section,
            **sections,
        )
        worker = Worker(settings, backend=backend)
        made.append(worker)
        return worker

    try:
        yield make
    finally:
        for worker in made:
            worker.stop()
            worker.executor.shutdown(wait=True)
            worker.pool.close()


def tick_for(seconds: float, *workers: Worker) -> None:
    """Run the workers' main-loop ticks (node heartbeat, periodic and job claims), in turn,
    for ``seconds``; the jobs they claim run in their executors meanwhile."""
    states = {id(w): {"next_node_heartbeat": 0.0, "started": True} for w in workers}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for worker in workers:
            worker.tick(time.monotonic(), states[id(worker)])
        time.sleep(0.02)


def tick_until(predicate: Callable[[], object], timeout: float, what: str, *workers: Worker) -> object:
    """Tick the workers until ``predicate`` returns something truthy, and return that value."""
    states = {id(w): {"next_node_heartbeat": 0.0, "started": True} for w in workers}

    def ticked() -> object:
        for worker in workers:
            worker.tick(time.monotonic(), states[id(worker)])
        return predicate()

    return wait_until(ticked, timeout, what, interval=0.02)


def drive(worker: Worker, seconds: float) -> None:
    """``tick_for`` one worker, then wait for the jobs it claimed to finish."""
    tick_for(seconds, worker)
    wait_until(lambda: not worker.held, 10, "the claimed jobs to finish", interval=0.02)
