"""The statuses of a cluster and of a Dask worker, and the transitions allowed between them.

This module is the one place that spells a status: everything else names ``ClusterStatus.X``
or a group below, and binds it as a parameter in SQL (tests/unit/test_lifecycle_literals.py
fails on a status literal anywhere else in the package).

A cluster::

    PENDING ──first heartbeat──▶ RUNNING
       │ │                          │
       │ └──stop (placed)──▶ STOPPING ◀──stop──┘
       │                        │
       └──stop (not placed)──┐  └──its node stopped the processes──▶ stop target
                             ▼
                    STOPPED | FAILED  (the stop target: FAILED when the stop was a failure)

A node found dead ends its clusters at once: PENDING/RUNNING ones FAILED, STOPPING ones at
their stop target. STOPPED and FAILED are final.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping

from gatewayha.errors import Conflict


class ClusterStatus(enum.StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"
    FAILED = "FAILED"


class WorkerStatus(enum.StrEnum):
    """A Dask worker's. A worker that never joined is stopped (and another started); FAILED is
    a worker whose process its backend reported gone (a backend that is not node-bound:
    handlers.check_processes)."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"
    FAILED = "FAILED"


C, W = ClusterStatus, WorkerStatus

CLUSTER_TRANSITIONS: Mapping[ClusterStatus, frozenset[ClusterStatus]] = {
    C.PENDING: frozenset({C.RUNNING, C.STOPPING, C.STOPPED, C.FAILED}),
    C.RUNNING: frozenset({C.STOPPING, C.FAILED}),
    C.STOPPING: frozenset({C.STOPPED, C.FAILED}),
    C.STOPPED: frozenset(),
    C.FAILED: frozenset(),
}

WORKER_TRANSITIONS: Mapping[WorkerStatus, frozenset[WorkerStatus]] = {
    W.PENDING: frozenset({W.RUNNING, W.STOPPING, W.STOPPED, W.FAILED}),
    W.RUNNING: frozenset({W.STOPPING, W.STOPPED, W.FAILED}),
    W.STOPPING: frozenset({W.STOPPED}),
    W.STOPPED: frozenset(),
    W.FAILED: frozenset(),
}

# --- groups -------------------------------------------------------------------------------
# Active: holds resources (counted against the owner's limits, its processes may run, its
# token is accepted).
ACTIVE: tuple[ClusterStatus, ...] = (C.PENDING, C.RUNNING, C.STOPPING)
# Not being stopped: judged by check_clusters, counted as a node's load.
LIVE: tuple[ClusterStatus, ...] = (C.PENDING, C.RUNNING)
ENDED: tuple[ClusterStatus, ...] = (C.STOPPED, C.FAILED)
# What a stop may end in: the stop target stored with the stop request.
STOP_TARGETS = ENDED
# Listed by the API when the client names no status (dask-gateway's default).
DEFAULT_LISTED: tuple[ClusterStatus, ...] = (C.PENDING, C.RUNNING)

# Workers not being stopped: counted against limits and the scheduler's target.
LIVE_WORKERS: tuple[WorkerStatus, ...] = (W.PENDING, W.RUNNING)


class IllegalTransition(Conflict):
    """A change the transition table does not allow: refused, nothing written."""


def check_cluster(current: str, new: str) -> None:
    """Raise IllegalTransition unless a cluster may go from ``current`` to ``new``."""
    _check("cluster", CLUSTER_TRANSITIONS, ClusterStatus, current, new)


def check_worker(current: str, new: str) -> None:
    """Raise IllegalTransition unless a worker may go from ``current`` to ``new``."""
    _check("worker", WORKER_TRANSITIONS, WorkerStatus, current, new)


def _check(what: str, table: Mapping, kind: type[enum.StrEnum], current: str, new: str) -> None:
    try:
        allowed = kind(new) in table[kind(current)]
    except ValueError:
        allowed = False
    if not allowed:
        raise IllegalTransition(f"a {what} may not go from {current} to {new}")


def cluster_sources(new: ClusterStatus) -> list[str]:
    """The statuses a cluster may reach ``new`` from (bound as the WHERE of an UPDATE, so SQL
    never moves a row the table does not allow)."""
    return _sources(CLUSTER_TRANSITIONS, new)


def worker_sources(new: WorkerStatus) -> list[str]:
    return _sources(WORKER_TRANSITIONS, new)


def _sources(table: Mapping, new: enum.StrEnum) -> list[str]:
    return sorted(str(s) for s, targets in table.items() if new in targets)


def names(statuses: Iterable[enum.StrEnum]) -> list[str]:
    """A group as a list of plain strings, for an ``= ANY(%s)`` parameter."""
    return [str(s) for s in statuses]
