"""The Slurm backend on a real Slurm (tests/slurm_local.py), beyond the contract every backend
passes (test_backend_contract.py): what its jobs can see and do as a tenant would, how many
Slurm calls a scale-up and a check take, and software environments on compute nodes."""

from __future__ import annotations

import os
import pwd
import subprocess
import uuid
from pathlib import Path

import pytest
import slurm_local

from gatewayha import tls
from gatewayha.backends import get_backend
from gatewayha.backends.base import SchedulerSpec, WorkerSpec
from gatewayha.backends.slurm import SlurmRefused
from gatewayha.config import EnvironmentSettings
from gatewayha.errors import BackendRefused
from gatewayha.options import cluster_config
from helpers import make_environment, wait_until

API_URL = "http://127.0.0.1:9/api"  # nobody answers: the processes run on without reporting
NO_SCHEDULER = "tls://127.0.0.1:9"


@pytest.fixture(scope="module")
def keypair():
    return tls.new_keypair("dask-internal")


@pytest.fixture
def backend(tmp_path):
    slurm_local.ensure_slurm()
    b = get_backend(slurm_local.settings(tmp_path / "staging"))
    yield b
    stop_all(b, tmp_path)


def stop_all(backend, tmp_path: Path) -> None:
    """Stop every cluster the test left in its staging directory."""
    for d in (tmp_path / "staging").glob("*"):
        if len(d.name) == 32:
            backend.stop_cluster(d.name)


def start(backend, keypair, **options):
    name = uuid.uuid4().hex
    cfg = cluster_config(backend.settings, options)
    state = backend.start_scheduler(SchedulerSpec(name, "tok-" + name, API_URL, *keypair, cfg, user="alice"))
    return name, cfg, state


def running_pid(job_id: str) -> int:
    """The job's main process once the script has exec'd the Dask command (before that it is
    the script's bash, finding the node's address)."""

    def dask_pid():
        pids = slurm_local.job_pids(job_id)
        try:
            return pids and b"dask" in Path(f"/proc/{min(pids)}/cmdline").read_bytes() and min(pids)
        except OSError:
            return None

    return wait_until(dask_pid, 30, f"job {job_id} running Dask")


def account_of(backend, name: str) -> str:
    return pwd.getpwuid(os.stat(backend.cluster_dir(name) / "work").st_uid).pw_name


def as_account(user: str, *argv: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "SLURM_CONF": str(slurm_local.CONF)}
    return subprocess.run(["runuser", "-u", user, "--", *argv], env=env, capture_output=True, text=True, timeout=30)


def test_a_clusters_code_cannot_read_another_clusters_files_nor_cancel_its_jobs(backend, keypair):
    a, _, a_state = start(backend, keypair)
    b, _, _ = start(backend, keypair)
    running_pid(a_state["job_id"])
    mallory = account_of(backend, b)
    assert mallory.startswith("gwdask-") and mallory != account_of(backend, a)
    # Cluster b's account (what its tenant's code runs as) against cluster a's secrets and job.
    for secret in ("tls.key", "api-token"):
        read = as_account(mallory, "cat", str(backend.cluster_dir(a) / secret))
        assert read.returncode != 0 and "Permission denied" in read.stderr
    listing = as_account(mallory, "ls", str(backend.root))
    assert listing.returncode != 0 and "Permission denied" in listing.stderr
    cancel = as_account(mallory, "scancel", a_state["job_id"])
    assert "denied" in (cancel.stderr + cancel.stdout).lower() or "not the owner" in cancel.stderr.lower(), cancel
    assert backend.check_schedulers([(a, a_state)])[0].alive


def test_the_job_runners_secrets_never_reach_a_job(backend, keypair, monkeypatch):
    monkeypatch.setenv("GATEWAYHA_SERVER__SECRET", "job-runner-secret-0123456789")
    monkeypatch.setenv("GATEWAYHA_DATABASE__DSN", "postgresql://gatewayha:pw@db/gatewayha")
    name, _, state = start(backend, keypair)
    environ = Path(f"/proc/{running_pid(state['job_id'])}/environ").read_bytes()
    assert b"job-runner-secret" not in environ and b"GATEWAYHA_" not in environ and b"postgresql://" not in environ
    # The token is read from a file, never passed in the environment.
    assert f"tok-{name}".encode() not in environ


def test_a_scale_up_is_one_sbatch_and_a_check_of_many_is_one_squeue(backend, keypair, monkeypatch):
    calls = []
    run = backend._run
    monkeypatch.setattr(backend, "_run", lambda cmd, *a, **k: calls.append(cmd) or run(cmd, *a, **k))
    names = [start(backend, keypair) for _ in range(3)]
    name, cfg, _ = names[0]
    workers = [f"{name}-{i:02d}" for i in range(8)]
    calls.clear()
    states = backend.start_workers([WorkerSpec(name, w, NO_SCHEDULER, "tok", *keypair, cfg, "alice") for w in workers])
    assert calls.count("sbatch") == 1 and {s["job_id"].split("_")[0] for s in states} == {states[0]["job_id"][:-2]}
    assert [s["job_id"].split("_")[1] for s in states] == [str(i) for i in range(8)]
    calls.clear()
    statuses = backend.check_workers([(name, w, s) for w, s in zip(workers, states, strict=True)])
    statuses += backend.check_schedulers([(n, st) for n, _, st in names])
    # (And one sinfo for the addresses of the nodes the jobs were placed on, kept a minute.)
    assert calls in (["squeue", "squeue"], ["squeue", "squeue", "sinfo"]) and all(s.alive for s in statuses)
    calls.clear()
    backend.check_schedulers([(n, st) for n, _, st in names])
    assert calls == ["squeue"]
    # Again, the same workers: found running by name, nothing submitted twice.
    calls.clear()
    again = backend.start_workers([WorkerSpec(name, w, NO_SCHEDULER, "tok", *keypair, cfg, "alice") for w in workers])
    assert again == states and "sbatch" not in calls


def test_a_cluster_runs_from_the_software_environment_it_picked(tmp_path, keypair):
    slurm_local.ensure_slurm()
    prefix = tmp_path / "envs" / "alt"
    make_environment(prefix)
    settings = slurm_local.settings(tmp_path / "staging")
    settings.environments = {"alt": EnvironmentSettings(prefix=str(prefix))}
    backend = get_backend(settings)
    try:
        name, cfg, state = start(backend, keypair, software_environment="alt")
        pid = running_pid(state["job_id"])
        assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0] == str(prefix / "bin" / "python").encode()
        (wstate,) = backend.start_workers([WorkerSpec(name, f"{name}-w", NO_SCHEDULER, "tok", *keypair, cfg)])
        wpid = running_pid(wstate["job_id"])
        assert Path(f"/proc/{wpid}/cmdline").read_bytes().split(b"\0")[0] == str(prefix / "bin" / "python").encode()
    finally:
        stop_all(backend, tmp_path)


def test_a_pending_job_is_alive_and_says_what_it_waits_for_in_slurms_words(tmp_path, keypair):
    slurm_local.ensure_slurm()
    # Held by Slurm for an hour: pending with reason BeginTime, as a job waiting for nodes would be.
    backend = get_backend(slurm_local.settings(tmp_path / "staging", extra_sbatch_args="--begin=now+3600"))
    try:
        name, _, state = start(backend, keypair)
        (status,) = wait_until(lambda: (s := backend.check_schedulers([(name, state)]))[0].state and s, 30, "a check")
        assert status.alive and "host" not in status.state
        assert status.state["waiting"] == f"Slurm job {state['job_id']} PENDING (BeginTime)"
        # What the core makes of it when cluster.start_timeout runs out.
        from gatewayha.lifecycle import reasons

        assert str(reasons.did_not_start(120, status.state["waiting"])) == (
            f"did not start within 120 s (Slurm job {state['job_id']} PENDING (BeginTime))"
        )
    finally:
        stop_all(backend, tmp_path)


def test_run_as_user_runs_the_owners_jobs_as_the_owner_and_never_as_root(tmp_path, keypair):
    slurm_local.ensure_slurm()
    user = "gwtest-alice"
    if subprocess.run(["getent", "passwd", user], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "-M", "-d", "/nonexistent", "-s", "/usr/sbin/nologin", user], check=True)
    uid = pwd.getpwnam(user).pw_uid
    backend = get_backend(slurm_local.settings(tmp_path / "staging", run_as="user"))
    try:
        cfg = cluster_config(backend.settings, {})
        name = uuid.uuid4().hex
        state = backend.start_scheduler(SchedulerSpec(name, "tok", API_URL, *keypair, cfg, user=user))
        status = Path(f"/proc/{running_pid(state['job_id'])}/status").read_text()
        assert f"Uid:\t{uid}\t{uid}\t{uid}\t{uid}" in status
        ((owner,),) = [j[1:] for j in slurm_local.squeue(f"--jobs={state['job_id']}", "--format=%i|%u")]
        assert owner == user
        for who in ("root", "no-such-user-here"):
            with pytest.raises(SlurmRefused):
                backend.start_scheduler(SchedulerSpec(uuid.uuid4().hex, "tok", API_URL, *keypair, cfg, user=who))
    finally:
        stop_all(backend, tmp_path)


def test_a_job_that_reaches_its_time_limit_ends_its_cluster_with_slurms_timeout(tmp_path, keypair):
    """The walltime of a scheduler job (slurm.scheduler_time_limit, 1 minute here; Slurm enforces
    it up to 30 s late) ends it: the check says TIMEOUT in Slurm's words, which the core makes
    the cluster's stop reason."""
    slurm_local.ensure_slurm()
    backend = get_backend(slurm_local.settings(tmp_path / "staging", scheduler_time_limit="1"))
    try:
        name, _, state = start(backend, keypair)
        running_pid(state["job_id"])
        status = wait_until(lambda: (s := backend.check_schedulers([(name, state)])[0]).alive is False and s, 150,
                            "the time limit", interval=2)  # fmt: skip
        assert status.reason == f"Slurm job {state['job_id']} TIMEOUT (TimeLimit)"
    finally:
        stop_all(backend, tmp_path)


def test_a_full_pool_of_accounts_refuses_the_start_at_once_naming_the_setting(tmp_path, keypair):
    slurm_local.ensure_slurm()
    backend = get_backend(slurm_local.settings(tmp_path / "staging", uid_count=1))
    try:
        start(backend, keypair)
        with pytest.raises(BackendRefused, match=r"slurm.uid_count: every uid of the range is in use \(1 "):
            start(backend, keypair)
    finally:
        stop_all(backend, tmp_path)
