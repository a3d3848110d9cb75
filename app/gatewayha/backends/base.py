"""The backend seam: what a job may ask of the machinery that runs Dask processes.

Modelled on dask-gateway-server's ``Backend`` + ``DBBackendBase``: a short list of lifecycle
verbs for schedulers and workers, everything else (status, retries, routing, the database) in
the shared core. A backend is called by a job; it never schedules work itself and never reads
or writes Postgres.

**State.** ``start_scheduler`` and ``start_worker`` return a *state record*: a small JSON object
(a dict of str, numbers, bools, None, lists and dicts) that says where the process is and how
to find it again: for the local backend its unit and node, for a batch system its job id. The
core stores it in Postgres (``clusters.scheduler_state``, ``workers.state``) and hands it back
to ``stop_*``, ``check_*`` and ``stop_cluster``, possibly to another backend object in another
process or on another node (the job runner restarted, another node took over the job). The
state may also be ``None``: a job runner that crashed between the launch and saving the state
left none. A backend therefore finds its processes by the cluster's and the worker's names when
it has no state (the local backend derives unit names from them; a batch backend names its jobs
after them).

**Placement.** ``node_bound`` says whether the processes live on the gateway node that launched
them. Where so (the local backend), the core sends each cluster's jobs to that node's queue,
fails the node's clusters when the node is lost, reaps processes no active cluster owns, holds
a launch slot of the node until a launched process reports, and keeps a warm pool per node.
Where not (a batch system, Kubernetes), any node starts, checks and stops any cluster, and
losing a gateway node fails none of them.

**Checks** are batched: one ``check_schedulers``/``check_workers`` call per tick for many
processes (one ``squeue`` for a batch system, not one per job).

Every verb is idempotent. Starting something already running is a no-op that returns its state
(a job re-run after a crash must never start a second scheduler); stopping something already
gone is a no-op. ``tests/contract`` is the suite every backend passes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from gatewayha.options import ClusterConfig

# A backend's record of one process: JSON-able (stored as jsonb), small, no secrets.
State = dict[str, Any]


@dataclass
class SchedulerSpec:
    """Everything needed to start one cluster's scheduler."""

    cluster_name: str
    token: str  # the cluster's API token: heartbeats and self-delete
    api_url: str  # the gateway's ``/api`` as the scheduler reaches it
    tls_cert: str = field(repr=False)  # PEM
    tls_key: str = field(repr=False)  # PEM
    config: ClusterConfig = field(repr=False)
    user: str = ""  # the cluster's owner: whose account runs it (a batch backend), accounting


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
    user: str = ""


@dataclass(frozen=True)
class ProcessStatus:
    """What a check found: whether the process is alive and, if not, why (in the backend's own
    words where it has them: an exit code, a batch system's job state)."""

    alive: bool
    reason: str | None = None
    # A newer state record for the core to store, or None (unchanged): e.g. the node and host a
    # batch job was placed on once it started, which the first check after that learns.
    state: State | None = None


ALIVE = ProcessStatus(True)


class Backend(ABC):
    """Starts, stops and checks the Dask processes of clusters."""

    # Whether the processes live on the gateway node that launched them (see the module's doc).
    node_bound: ClassVar[bool] = True

    @abstractmethod
    def start_scheduler(self, spec: SchedulerSpec) -> State:
        """Start the cluster's scheduler, or find it running; its state record either way."""

    @abstractmethod
    def stop_scheduler(self, cluster_name: str, state: State | None = None) -> None:
        """Stop the cluster's scheduler; no-op if it is not running."""

    @abstractmethod
    def check_schedulers(self, items: Sequence[tuple[str, State | None]]) -> list[ProcessStatus]:
        """The status of each ``(cluster_name, state)``, in order, in as few calls as the
        backend can make (one for a batch system). A backend that cannot tell (its batch system
        does not answer) raises: dead means known dead, and the core fails clusters for it."""

    @abstractmethod
    def start_worker(self, spec: WorkerSpec) -> State:
        """Start one worker, or find it running; its state record either way."""

    def start_workers(self, specs: Sequence[WorkerSpec]) -> list[State]:
        """Start several workers of one cluster (one scale-up), or find them running; their state
        records, in order. A batch system submits them together (one job array); the default
        starts them one by one."""
        return [self.start_worker(spec) for spec in specs]

    @abstractmethod
    def stop_worker(self, cluster_name: str, worker_name: str, state: State | None = None) -> None:
        """Stop one worker; no-op if it is not running."""

    @abstractmethod
    def check_workers(self, items: Sequence[tuple[str, str, State | None]]) -> list[ProcessStatus]:
        """The status of each ``(cluster_name, worker_name, state)``, in order (batched)."""

    @abstractmethod
    def stop_cluster(
        self,
        cluster_name: str,
        scheduler_state: State | None = None,
        worker_states: Mapping[str, State | None] | None = None,
    ) -> None:
        """Stop the scheduler and every worker of the cluster, then delete what the backend kept
        for it (files, keys). Also cleans up a half-started cluster: one whose start failed
        midway or whose state was never saved (then found by its name)."""

    def local_clusters(self) -> set[str]:
        """Names of clusters with anything launched (or left on disk) by this node: node-bound
        backends only (the core reaps the orphans among them: a cluster listed here that
        Postgres says is not this node's, or not active, gets ``stop_cluster``)."""
        return set()

    def prune_logs(self, max_age_s: float) -> int:
        """Delete logs of clusters stopped longer ago than max_age_s; returns how many (optional)."""
        return 0

    # Conveniences over the batched checks.
    def scheduler_running(self, cluster_name: str, state: State | None = None) -> bool:
        return self.check_schedulers([(cluster_name, state)])[0].alive

    def worker_running(self, cluster_name: str, worker_name: str, state: State | None = None) -> bool:
        return self.check_workers([(cluster_name, worker_name, state)])[0].alive
