"""The local Slurm of scripts/slurm.sh (munged, slurmctld, two slurmd: compute nodes n1, n2) for the
tests of the Slurm backend: started once (idempotent: a running one is reused), never mocked."""

from __future__ import annotations

import atexit
import os
import subprocess
from pathlib import Path

from gatewayha.config import BackendSettings, NodeSettings, Settings, SlurmSettings

ROOT = Path(__file__).resolve().parents[1]
# Apart from make up BACKEND=slurm's (.state/slurm, port 16817): the tests' own.
SLURM_DIR = ROOT / ".state" / "slurm-tests"
PORT = 16837
CONF = SLURM_DIR / "slurm.conf"
POOL_UID_MIN = 1_897_000_000
POOL_COUNT = 16


_started = []


def _down(env: dict) -> None:
    subprocess.run([str(ROOT / "scripts" / "slurm.sh"), "down"], env=env, check=False, timeout=120)


def ensure_slurm() -> Path:
    """Start the local Slurm unless it runs (stopped when the test process ends); the path of
    its slurm.conf."""
    env = {**os.environ, "SLURM_DIR": str(SLURM_DIR), "SLURM_PORT": str(PORT),
           "SLURM_POOL_UID_MIN": str(POOL_UID_MIN), "SLURM_POOL_COUNT": str(POOL_COUNT)}  # fmt: skip
    pidfile = SLURM_DIR / "run" / "slurmctld.pid"
    ran = pidfile.exists() and Path(f"/proc/{pidfile.read_text().strip()}").exists()
    subprocess.run([str(ROOT / "scripts" / "slurm.sh"), "up"], env=env, check=True, timeout=300)
    if not ran and not _started:
        # Started here: stopped when this process ends (one that found it running leaves it).
        _started.append(True)
        atexit.register(_down, env)
    return CONF


def slurm_env() -> dict[str, str]:
    return {**os.environ, "SLURM_CONF": str(CONF)}


def squeue(*args: str) -> list[list[str]]:
    """squeue's lines, split at "|" (``--format`` with "|" between the fields)."""
    out = subprocess.run(["squeue", "--noheader", *args], env=slurm_env(), capture_output=True, text=True,
                         check=True, timeout=30).stdout  # fmt: skip
    return [line.strip().split("|") for line in out.splitlines() if line.strip()]


def settings(staging: Path, **slurm) -> Settings:
    """Settings of the Slurm backend on the local Slurm, the clusters in ``staging``."""
    values = dict(conf=str(CONF), staging_dir=str(staging), uid_min=POOL_UID_MIN, uid_count=POOL_COUNT)
    values.update(slurm)
    return Settings(
        node=NodeSettings(state_dir=str(staging.parent / "node"), host="127.0.0.1", isolation="none"),
        backend=BackendSettings(name="slurm"),
        slurm=SlurmSettings(**values),
    )


def job_pids(job_id: str) -> list[int]:
    """The processes of a job ("123", or "123_4" for an array task) of this Slurm, found by the
    variables Slurm and the job script give them (its script's bash, until it execs, may not
    have them all)."""
    array, _, task = job_id.partition("_")
    want = {f"SLURM_ARRAY_JOB_ID={array}".encode(), f"SLURM_ARRAY_TASK_ID={task}".encode()} if task else {
        f"SLURM_JOB_ID={array}".encode()}  # fmt: skip
    # This Slurm's jobs only (another Slurm on the machine numbers its jobs from 1 too): the job
    # script exports the backend's slurm.conf.
    want.add(f"SLURM_CONF={CONF}".encode())
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                environ = set(Path(entry.path, "environ").read_bytes().split(b"\0"))
            except OSError:
                continue
            if want <= environ:
                pids.append(int(entry.name))
    return pids
