"""The backend seam: what a job may ask of the machinery that runs Dask processes.

Modelled on dask-gateway-server's ``Backend``: a short list of lifecycle verbs
for schedulers and workers, everything else (state, retries, routing) in the
shared core. A backend is called by a job; it never schedules work itself.

Every verb is idempotent. Starting something already running is a no-op (a job
re-run after a crash must never start a second scheduler); stopping something
already gone is a no-op.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from gatewayha.options import ClusterConfig


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
