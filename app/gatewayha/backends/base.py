"""The backend seam: what a job may ask of the machinery that runs Dask processes.

Modelled on dask-gateway-server's ``Backend``: a short list of lifecycle verbs
for schedulers and workers, everything else (state, retries, routing) in the
shared core. A backend is called by a job; it never schedules work itself.

Every verb is idempotent. Starting something already running is a no-op (a job
re-run after a crash must never start a second scheduler); stopping something
already gone is a no-op.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from gatewayha.options import ClusterConfig

CLUSTER_NAME_RE = re.compile(r"\A[a-f0-9]{32}\Z")
WORKER_NAME_RE = re.compile(r"\A[a-f0-9]{32}-[a-z0-9]{1,16}\Z")


def check_cluster_name(name: object) -> str:
    """Return ``name`` if it is a cluster name, else raise ValueError.

    Names end up in paths, unit names and command lines: nothing else gets through.
    """
    if not isinstance(name, str) or not CLUSTER_NAME_RE.match(name):
        raise ValueError(f"invalid cluster name {name!r}")
    return name


def check_worker_name(cluster_name: object, worker_name: object) -> str:
    """Return ``worker_name`` if it is a worker name of ``cluster_name``, else raise ValueError."""
    check_cluster_name(cluster_name)
    if (
        not isinstance(worker_name, str)
        or not WORKER_NAME_RE.match(worker_name)
        or not worker_name.startswith(f"{cluster_name}-")
    ):
        raise ValueError(f"invalid worker name {worker_name!r} for cluster {cluster_name!r}")
    return worker_name


@dataclass
class SchedulerSpec:
    """Everything needed to start one cluster's scheduler."""

    cluster_name: str
    token: str  # the cluster's API token: heartbeats and self-delete
    api_url: str  # the gateway's ``/api`` as the scheduler reaches it
    tls_cert: str = field(repr=False)  # PEM
    tls_key: str = field(repr=False)  # PEM
    config: ClusterConfig = field(repr=False)


@dataclass
class WorkerSpec:
    """Everything needed to start one worker of a running cluster."""

    cluster_name: str
    worker_name: str
    scheduler_address: str  # tls://host:port, from the scheduler's heartbeat
    token: str = field(repr=False)
    tls_cert: str = field(repr=False)
    tls_key: str = field(repr=False)
    config: ClusterConfig = field(repr=False)


class Backend(ABC):
    """Starts, stops and checks the Dask processes of clusters."""

    @abstractmethod
    def start_scheduler(self, spec: SchedulerSpec) -> None:
        """Start the cluster's scheduler; no-op if it is running."""

    @abstractmethod
    def stop_scheduler(self, cluster_name: str) -> None:
        """Stop the cluster's scheduler; no-op if it is not running."""

    @abstractmethod
    def scheduler_running(self, cluster_name: str) -> bool:
        """Whether the cluster's scheduler process is alive."""

    @abstractmethod
    def start_worker(self, spec: WorkerSpec) -> None:
        """Start one worker; no-op if it is running."""

    @abstractmethod
    def stop_worker(self, cluster_name: str, worker_name: str) -> None:
        """Stop one worker; no-op if it is not running."""

    @abstractmethod
    def worker_running(self, cluster_name: str, worker_name: str) -> bool:
        """Whether the worker's process is alive."""

    @abstractmethod
    def stop_cluster(self, cluster_name: str) -> None:
        """Stop the scheduler and every worker of the cluster here, then delete its files."""

    @abstractmethod
    def local_clusters(self) -> set[str]:
        """Names of clusters with anything launched (or left on disk) by this node.

        Used to reap orphans: a cluster listed here that Postgres says is not this
        node's, or not active, gets ``stop_cluster``.
        """

    def prune_logs(self, max_age_s: float) -> int:
        """Delete logs of clusters stopped longer ago than max_age_s; returns how many (optional)."""
        return 0
