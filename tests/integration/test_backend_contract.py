"""The backend contract: what every backend (gatewayha.backends.base.Backend) must do, with real
processes. It runs against the local backend on both launchers, and against a backend that is
not node-bound (tests/unbound_backend.py: its scheduler's host comes from a check, as a batch
job's does); a new backend passes it by adding one ``Harness`` below and its name to
``HARNESSES`` (issue 15: Slurm, with ``sbatch`` job ids in its state records).

The ``local-systemd`` harness drives the real systemd: it needs systemd as PID 1 and root (as the
job runner has). Where that is not so (the machine that runs ``make test``) it is skipped here,
and the molecule stage of ``make test`` runs this suite on an appliance node
(molecule/shared/contract_suite.py).

A harness gives the suite what only the backend's own world can tell: how many schedulers of a
cluster really run, how to kill one behind the backend's back (a crash), what the backend left
behind after a stop, and a backend whose launches fail midway. Everything else goes through the
backend's verbs, with its state records round-tripped through JSON as Postgres stores them.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import uuid
from pathlib import Path

import pytest
import slurm_local

from gatewayha import tls, validate
from gatewayha.backends import get_backend, slurm
from gatewayha.backends.base import Backend, SchedulerSpec, WorkerSpec
from gatewayha.backends.launcher import MARKER_VAR, scheduler_unit, systemd_is_init, worker_unit
from gatewayha.config import BackendSettings, NodeSettings, Settings
from gatewayha.options import ClusterConfig, cluster_config
from helpers import wait_until

# Nobody answers there: schedulers keep running without reporting, workers keep retrying their
# scheduler (WORKER_DEATH_TIMEOUT, 60 s) - alive for as long as a test needs them.
API_URL = "http://127.0.0.1:9/api"
NO_SCHEDULER = "tls://127.0.0.1:9"


def config() -> ClusterConfig:
    return cluster_config(Settings(), {})  # the defaults: 1 core, 1 GiB


def stored(state):
    """A state record as Postgres hands it back (jsonb)."""
    return json.loads(json.dumps(state))


# --------------------------------------------------------------------------- harnesses


class LocalHarness:
    """The local backend on one launcher; processes found through /proc (process launcher) or
    systemd (systemd launcher), files under the node's state directory."""

    def __init__(self, tmp_path: Path, launcher: str, backend: str = "local"):
        self.state_dir = tmp_path / "node"
        self.launcher = launcher
        self.backend_name = backend
        self.backend = self.new_backend()
        # systemd's units are the machine's: what ran before the test is not the test's to stop.
        self.before = self.backend.local_clusters()

    def settings(self, **node) -> Settings:
        values = dict(state_dir=str(self.state_dir), host="127.0.0.1", launcher=self.launcher, isolation="none")
        values.update(node)
        return Settings(node=NodeSettings(**values), backend=BackendSettings(name=self.backend_name))

    def new_backend(self) -> Backend:
        """Another backend object, as a restarted job runner makes (nothing shared in memory)."""
        return get_backend(self.settings())

    def broken_backend(self) -> Backend:
        """A backend whose launches fail after it has prepared the cluster (its interpreter is gone)."""
        return get_backend(self.settings(python="/nonexistent/bin/python3"))

    def _pids(self, unit: str) -> list[int]:
        if self.launcher == "systemd":
            out = os.popen(f"systemctl show -p MainPID --value gatewayha-{unit}.service").read().strip()
            return [int(out)] if out.isdigit() and int(out) > 0 else []
        marker = f"{MARKER_VAR}={unit}".encode()
        pids = []
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                environ = Path(entry.path, "environ").read_bytes().split(b"\0")
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2 :].split()
            # Group leaders only: the unit's main process, not its children (the nanny's worker).
            if marker in environ and fields[0] not in "ZX" and int(fields[2]) == int(entry.name):
                pids.append(int(entry.name))
        return pids

    def schedulers(self, cluster: str) -> int:
        return len(self._pids(scheduler_unit(cluster)))

    def workers(self, cluster: str, worker: str) -> int:
        return len(self._pids(worker_unit(cluster, worker)))

    def kill_scheduler(self, cluster: str) -> None:
        for pid in self._pids(scheduler_unit(cluster)):
            os.killpg(pid, signal.SIGKILL)

    def kill_worker(self, cluster: str, worker: str) -> None:
        for pid in self._pids(worker_unit(cluster, worker)):
            os.killpg(pid, signal.SIGKILL)

    def leftovers(self, cluster: str) -> list[str]:
        """What the backend still has of the cluster: processes and files (logs are kept apart)."""
        units = [u for u in self.backend.launcher.units() if u.startswith(cluster)]
        files = [str(p) for p in (self.state_dir / "clusters").glob(f"{cluster}*")]
        return units + files + [f"pid {p}" for p in self._pids(scheduler_unit(cluster))]

    def close(self) -> None:
        for name in self.backend.local_clusters() - self.before:
            self.backend.stop_cluster(name)


class SlurmHarness:
    """The Slurm backend on the local Slurm (tests/slurm_local.py): what runs is what squeue says;
    a crash is a SIGKILL to the job's processes through Slurm (the backend is not asked)."""

    def __init__(self, tmp_path: Path):
        slurm_local.ensure_slurm()
        self.staging = tmp_path / "staging"
        self.backend = self.new_backend()

    def new_backend(self) -> Backend:
        return get_backend(slurm_local.settings(self.staging))

    def broken_backend(self) -> Backend:
        """Its submissions are refused after it has prepared the cluster's files."""
        return get_backend(slurm_local.settings(self.staging, partition="nonexistent"))

    def _jobs(self, prefix: str, cluster: str) -> list[list[str]]:
        # id, state, comment of the cluster's live jobs (array tasks one by one).
        return [j for j in slurm_local.squeue("--array", f"--name={prefix}{cluster}", "--format=%i|%T|%k")
                if j[1] in slurm.ALIVE_STATES]  # fmt: skip

    def _worker_jobs(self, cluster: str, worker: str) -> list[str]:
        suffix = worker[len(cluster) + 1 :]
        out = []
        for job_id, _state, comment in self._jobs(slurm.WORKERS_JOB, cluster):
            names = comment.split("workers=")[-1].split(",")
            task = int(job_id.partition("_")[2] or -1)
            if 0 <= task < len(names) and names[task] == suffix:
                out.append(job_id)
        return out

    def schedulers(self, cluster: str) -> int:
        return len(self._jobs(slurm.SCHEDULER_JOB, cluster))

    def workers(self, cluster: str, worker: str) -> int:
        return len(self._worker_jobs(cluster, worker))

    def _kill(self, job_ids: list[str]) -> None:
        """SIGKILL to the job's processes on its node (a crash: Slurm is not asked)."""
        for job_id in job_ids:
            for pid in wait_until(lambda j=job_id: slurm_local.job_pids(j), 30, f"the processes of job {job_id}"):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def kill_scheduler(self, cluster: str) -> None:
        self._kill([j[0] for j in self._jobs(slurm.SCHEDULER_JOB, cluster)])

    def kill_worker(self, cluster: str, worker: str) -> None:
        self._kill(self._worker_jobs(cluster, worker))

    def leftovers(self, cluster: str) -> list[str]:
        jobs = [j[0] for p in (slurm.SCHEDULER_JOB, slurm.WORKERS_JOB) for j in self._jobs(p, cluster)]
        return jobs + [str(p) for p in self.staging.glob(f"{cluster}*")]

    def close(self) -> None:
        for d in self.staging.glob("*"):
            if validate.is_cluster_name(d.name):
                self.backend.stop_cluster(d.name)


HARNESSES = {
    "local-process": lambda tmp: LocalHarness(tmp, "process"),
    "local-systemd": lambda tmp: LocalHarness(tmp, "systemd"),
    # A backend that is not node-bound (tests/unbound_backend.py): its host comes from a check.
    "unbound-process": lambda tmp: LocalHarness(tmp, "process", "unbound_backend:UnboundLocalBackend"),
    # Schedulers and workers as jobs of a real Slurm (scripts/slurm.sh).
    "slurm": SlurmHarness,
}


@pytest.fixture(params=sorted(HARNESSES))
def harness(request, tmp_path):
    if request.param == "local-systemd" and not (systemd_is_init() and os.geteuid() == 0):
        pytest.skip(
            "needs systemd as PID 1 and root (as the job runner): the local-systemd harness runs against"
            " the real systemd in the molecule appliance (molecule/default/tests/test_backend_contract.py)"
        )
    h = HARNESSES[request.param](tmp_path)
    yield h
    h.close()


@pytest.fixture(scope="module")
def keypair():
    return tls.new_keypair("dask-internal")


def new_cluster() -> str:
    return uuid.uuid4().hex


def scheduler_spec(name: str, keypair) -> SchedulerSpec:
    cert, key = keypair
    return SchedulerSpec(name, "contract-token", API_URL, cert, key, config())


def worker_spec(name: str, worker: str, keypair) -> WorkerSpec:
    cert, key = keypair
    return WorkerSpec(name, worker, NO_SCHEDULER, "contract-token", cert, key, config())


# --------------------------------------------------------------------------- the contract


def test_the_state_record_is_json_and_says_what_the_backend_needs(harness, keypair):
    name = new_cluster()
    state = harness.backend.start_scheduler(scheduler_spec(name, keypair))
    assert isinstance(state, dict) and stored(state) == state
    wstate = harness.backend.start_worker(worker_spec(name, f"{name}-a", keypair))
    assert isinstance(wstate, dict) and stored(wstate) == wstate
    # A backend that is not node-bound must say where its scheduler runs, at the start or by
    # the first check that finds it running: the heartbeat's addresses are pinned to that host
    # (gatewayha.clusters._placed_host).
    if not type(harness.backend).node_bound:
        # (A batch job is alive, with no host yet, while it waits for a node.)
        def placed():
            st = harness.backend.check_schedulers([(name, state)])[0]
            assert st.alive, st.reason
            return {**state, **(st.state or {})}.get("host")

        assert isinstance(wait_until(placed, 60, "the scheduler's host"), str)


def test_starting_twice_gives_one_scheduler_and_one_worker(harness, keypair):
    name = new_cluster()
    first = harness.backend.start_scheduler(scheduler_spec(name, keypair))
    wait_until(lambda: harness.schedulers(name) == 1, 20, "the scheduler process")
    # Again, from the same object and from a new one (a start job re-run after a crash).
    assert stored(harness.backend.start_scheduler(scheduler_spec(name, keypair))) == stored(first)
    harness.new_backend().start_scheduler(scheduler_spec(name, keypair))
    worker = f"{name}-a"
    harness.backend.start_worker(worker_spec(name, worker, keypair))
    harness.new_backend().start_worker(worker_spec(name, worker, keypair))
    wait_until(lambda: harness.workers(name, worker) == 1, 20, "the worker process")
    assert harness.schedulers(name) == 1
    assert harness.workers(name, worker) == 1


def test_stop_is_idempotent_and_stopping_what_never_ran_is_a_no_op(harness, keypair):
    never = new_cluster()
    harness.backend.stop_scheduler(never, None)
    harness.backend.stop_worker(never, f"{never}-a", None)
    harness.backend.stop_cluster(never, None, {})
    name = new_cluster()
    state = stored(harness.backend.start_scheduler(scheduler_spec(name, keypair)))
    worker = f"{name}-a"
    wstate = stored(harness.backend.start_worker(worker_spec(name, worker, keypair)))
    harness.backend.stop_worker(name, worker, wstate)
    harness.backend.stop_worker(name, worker, wstate)
    assert harness.workers(name, worker) == 0
    harness.backend.stop_scheduler(name, state)
    harness.backend.stop_scheduler(name, state)
    assert harness.schedulers(name) == 0
    harness.backend.stop_cluster(name, state, {worker: wstate})
    harness.backend.stop_cluster(name, state, {worker: wstate})
    assert harness.leftovers(name) == []


def test_the_state_survives_a_restart_of_the_job_runner(harness, keypair):
    """What one backend object started, a new one (another process, after a restart) finds with
    the stored state, checks and stops."""
    name = new_cluster()
    worker = f"{name}-a"
    state = stored(harness.backend.start_scheduler(scheduler_spec(name, keypair)))
    wstate = stored(harness.backend.start_worker(worker_spec(name, worker, keypair)))
    wait_until(lambda: harness.schedulers(name) == 1 and harness.workers(name, worker) == 1, 20, "both processes")
    after = harness.new_backend()
    assert [s.alive for s in after.check_schedulers([(name, state)])] == [True]
    assert [s.alive for s in after.check_workers([(name, worker, wstate)])] == [True]
    after.stop_cluster(name, state, {worker: wstate})
    assert harness.schedulers(name) == 0 and harness.workers(name, worker) == 0
    assert harness.leftovers(name) == []
    assert not after.check_schedulers([(name, state)])[0].alive


def test_a_dead_process_is_reported_dead_by_the_batched_check(harness, keypair):
    names = [new_cluster() for _ in range(3)]
    states = [stored(harness.backend.start_scheduler(scheduler_spec(n, keypair))) for n in names]
    workers = [f"{names[0]}-a", f"{names[0]}-b"]
    wstates = [stored(harness.backend.start_worker(worker_spec(names[0], w, keypair))) for w in workers]
    wait_until(lambda: all(harness.schedulers(n) == 1 for n in names), 20, "the schedulers")
    wait_until(lambda: all(harness.workers(names[0], w) == 1 for w in workers), 20, "the workers")
    harness.kill_scheduler(names[1])
    harness.kill_worker(names[0], workers[1])

    def statuses():
        return (
            harness.backend.check_schedulers(list(zip(names, states, strict=True))),
            harness.backend.check_workers([(names[0], w, s) for w, s in zip(workers, wstates, strict=True)]),
        )

    scheds, wks = wait_until(lambda: (s := statuses())[0][1].alive is False and not s[1][1].alive and s, 20, "dead")
    assert [s.alive for s in scheds] == [True, False, True]
    assert [s.alive for s in wks] == [True, False]
    assert isinstance(scheds[1].reason, str) and scheds[1].reason
    assert isinstance(wks[1].reason, str) and wks[1].reason
    # Without its state too (a crash before it was saved): found by name.
    assert [s.alive for s in harness.backend.check_schedulers([(n, None) for n in names])] == [True, False, True]
    assert harness.backend.check_schedulers([]) == [] and harness.backend.check_workers([]) == []


def test_stopping_a_half_started_cluster_cleans_up(harness, keypair):
    """Two ways a start ends midway: the launch failed after the backend prepared the cluster,
    and the job runner died between the launch and saving the state (stop gets no state)."""
    failed = new_cluster()
    broken = harness.broken_backend()
    with pytest.raises(Exception):  # noqa: B017 - whatever the backend raises for a failed launch
        broken.start_scheduler(scheduler_spec(failed, keypair))
    assert not broken.scheduler_running(failed)
    broken.stop_cluster(failed, None, {})
    assert harness.leftovers(failed) == []

    lost = new_cluster()
    harness.backend.start_scheduler(scheduler_spec(lost, keypair))
    harness.backend.start_worker(worker_spec(lost, f"{lost}-a", keypair))
    wait_until(lambda: harness.schedulers(lost) == 1, 20, "the scheduler process")
    harness.new_backend().stop_cluster(lost, None, {})  # no state saved, worker unknown to Postgres
    assert harness.schedulers(lost) == 0 and harness.workers(lost, f"{lost}-a") == 0
    assert harness.leftovers(lost) == []
