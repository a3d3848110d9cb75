"""One cluster lifecycle: statuses, the transitions allowed between them, the stop target
(what a stop ends in) and every status change in Postgres, with its SQL in ``sql/*.sql``.

Nothing outside this package writes a cluster's or a worker's status; everything else reads
statuses through the names and groups here (docs/architecture.md, "Cluster lifecycle").
"""

from gatewayha.lifecycle import reasons
from gatewayha.lifecycle.reasons import StopReason
from gatewayha.lifecycle.status import (
    ACTIVE,
    CLUSTER_TRANSITIONS,
    DEFAULT_LISTED,
    ENDED,
    LIVE,
    LIVE_WORKERS,
    STOP_TARGETS,
    WORKER_TRANSITIONS,
    ClusterStatus,
    IllegalTransition,
    WorkerStatus,
    check_cluster,
    check_worker,
    cluster_sources,
    names,
    worker_sources,
)
from gatewayha.lifecycle.store import (
    CHANNELS,
    CLUSTER_CHANGED,
    LEGACY_CHANNEL,
    end_all,
    end_node_clusters,
    fail_worker,
    finish_stop,
    mark_running,
    notify_changed,
    set_worker_status,
    stop_cluster,
    stop_target,
    stop_workers,
)

__all__ = [
    "ACTIVE",
    "CHANNELS",
    "CLUSTER_CHANGED",
    "CLUSTER_TRANSITIONS",
    "DEFAULT_LISTED",
    "ENDED",
    "LEGACY_CHANNEL",
    "LIVE",
    "LIVE_WORKERS",
    "STOP_TARGETS",
    "StopReason",
    "WORKER_TRANSITIONS",
    "ClusterStatus",
    "IllegalTransition",
    "WorkerStatus",
    "check_cluster",
    "check_worker",
    "cluster_sources",
    "end_all",
    "end_node_clusters",
    "fail_worker",
    "finish_stop",
    "mark_running",
    "names",
    "reasons",
    "notify_changed",
    "set_worker_status",
    "stop_cluster",
    "stop_target",
    "stop_workers",
    "worker_sources",
]
