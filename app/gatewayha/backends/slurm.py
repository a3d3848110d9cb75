"""The Slurm backend: schedulers and workers as Slurm batch jobs on a site's compute nodes.

Not node-bound: any gateway node submits, checks and cancels any cluster's jobs, so losing a
gateway node fails no cluster. What it does with Slurm, per verb:

- ``start_scheduler``: one ``sbatch --parsable --no-requeue --export=NONE`` named
  ``dask-scheduler-<cluster>``; the script finds the address of the node Slurm placed it on
  (its ``NodeAddr``) and runs the same scheduler command as the local backend, bound there.
- ``start_workers``: the workers of one scale-up as **one job array** (``--array=0-N``, job name
  ``dask-workers-<cluster>``, the workers' names in its comment): scale(20) is one submission.
  Each worker's Dask ``--lifetime`` ends ``slurm.lifetime_margin`` before its job's time limit,
  so it retires (handing its data to the others) before the walltime kills it.
- ``check_schedulers`` / ``check_workers``: one ``squeue --array --states=all`` for every job
  asked about. A job that ended gives Slurm's own words as the reason (``TIMEOUT``,
  ``NODE_FAIL``, ``OUT_OF_MEMORY``, ``CANCELLED``, ``FAILED (NonZeroExitCode)``); the host of a
  running scheduler joins its state record (the core pins its heartbeats to it). Slurm not
  answering raises: nothing is judged dead for it.
- ``stop_*``: ``scancel`` (of a job that ended already: a no-op).

Files live on ``slurm.staging_dir``, a path shared with the compute nodes, laid out as the
local backend's state directory (``<staging>/<cluster>/``: TLS files and token readable by the
cluster's group only, ``work/`` and ``logs/`` its own). Whose jobs (``slurm.run_as``): "pool",
one of the service accounts of ``slurm.uid_min`` .. per cluster (no cluster can read another's
files or cancel its jobs), or "user", the owner's own account. Either way the job runner, root
on the gateway nodes, submits with ``sbatch --uid/--gid``: Slurm's own delegation to root, no
sudo rule at all. Every job is tagged ``gatewayha`` with the cluster and its owner in its
comment (``squeue -o %k``), for accounting.

Jobs get ``--export=NONE`` and a script that sets every variable itself: the job runner's own
environment (database DSN, server secret) never reaches a job.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import pwd
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from gatewayha import environments, validate
from gatewayha.backends.base import ProcessStatus, SchedulerSpec, State, WorkerSpec
from gatewayha.backends.launcher import Identity
from gatewayha.backends.local import (
    _API_URL_RE,
    _TOKEN_RE,
    GIB,
    NANNY_HEADROOM_BYTES,
    LocalBackend,
    _check,
    _check_pem,
    _write_secret,
    preload_dirs,
)
from gatewayha.config import Settings
from gatewayha.errors import BackendError, BackendRefused, BackendUnavailable, ConfigError, InvalidValue
from gatewayha.options import ClusterConfig, environment_patterns

log = logging.getLogger(__name__)

SCHEDULER_JOB = "dask-scheduler-"
WORKERS_JOB = "dask-workers-"
TAG = "gatewayha"
# Job states in which the job's processes run or will run (squeue's %T).
ALIVE_STATES = {"PENDING", "CONFIGURING", "RUNNING", "RESIZING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD", "SIGNALING"}
# Stand-ins in the commands the local backend builds, replaced by shell variables of the job script.
HOST_MARK = "__GATEWAYHA_HOST__"
WORKER_MARK = "__GATEWAYHA_WORKER__"
# How long the compute nodes' addresses (one sinfo) are reused.
ADDRESS_TTL_S = 60.0
_TIME_RE = re.compile(r"\A(?:(\d+)-)?(?:(\d+):)?(\d+)(?::(\d+))?\Z")
_WORD_RE = re.compile(r"\A[A-Za-z0-9_.@+-]{1,64}\Z")
# sbatch's refusals that another try would meet again: the cluster fails with Slurm's words.
_REFUSALS = re.compile(
    r"invalid (partition|account|qos|gres|generic resource)|Invalid (account|qos|partition)"
    r"|Requested node configuration is not available|Requested time limit is invalid"
    r"|time limit exceeds|Invalid generic resource|MaxSubmit|QOSMax|AssocMax|Job violates accounting"
    r"|More processors requested than permitted|Memory specification can not be satisfied"
    r"|Invalid --uid|Invalid user id|Batch job submission failed: Access/permission denied",
    re.IGNORECASE,
)


# slurmctld down or unreachable (the commands' words): nothing is judged, starts wait.
_UNREACHABLE = re.compile(
    r"Unable to contact slurm controller|Socket timed out|Zero Bytes were transmitted|Connection refused"
    r"|slurm_load_jobs error|Communication connection failure",
    re.IGNORECASE,
)


class SlurmRefused(BackendRefused):
    """Slurm refused the submission for a reason another try would meet again (an invalid
    partition, a limit of the user's association): the cluster fails with Slurm's words."""


def time_limit_seconds(value: str) -> int | None:
    """Seconds of a Slurm time limit ("MM", "MM:SS", "HH:MM:SS", "D-HH", "D-HH:MM:SS"); None for
    "" or UNLIMITED. InvalidValue for anything else."""
    if value in ("", "UNLIMITED", "INFINITE"):
        return None
    m = _TIME_RE.match(value)
    if not m:
        raise InvalidValue(f"not a Slurm time limit: {value!r}")
    days, a, b, c = (int(x) if x else None for x in m.groups())
    if days is not None:  # D-HH[:MM[:SS]]
        hours, minutes, seconds = (a, b or 0, c or 0) if a is not None else (b, c or 0, 0)
        return ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    if a is not None:  # HH:MM:SS or MM:SS
        return (a * 3600 + b * 60 + c) if c is not None else a * 60 + b
    return b * 60 + (c or 0) if c is not None else b * 60  # MM or MM:SS


def _word(what: str, value: str) -> str:
    if value and not _WORD_RE.match(value):
        raise InvalidValue(f"{what}: letters, digits and . _ @ + - only, got {value!r}")
    return value


@dataclasses.dataclass(frozen=True)
class Job:
    """One line of squeue: a job, or one task of a job array."""

    job_id: str  # "123", or "123_4" for an array task
    name: str
    state: str
    reason: str
    node: str
    comment: str

    @property
    def alive(self) -> bool:
        return self.state in ALIVE_STATES

    @property
    def task(self) -> int | None:
        _, sep, task = self.job_id.partition("_")
        return int(task) if sep and task.isdigit() else None

    def describe(self) -> str:
        """Slurm's words for why the job is not running."""
        why = f" ({self.reason})" if self.reason and self.reason != "None" else ""
        return f"Slurm job {self.job_id} {self.state}{why}"


class SlurmBackend(LocalBackend):
    """Schedulers and workers as Slurm jobs: not node-bound."""

    node_bound = False
    logs_writable = True
    uid_setting = "slurm.uid_count"

    def __init__(self, settings: Settings):  # noqa: PLR0912 - the checks of [slurm]
        cfg = settings.slurm
        self.settings = settings
        self.slurm = cfg
        self.node = settings.node.name
        self.launcher = None
        # The scheduler and workers bind to the address of the node Slurm placed them on,
        # which the job script finds: the commands carry a stand-in.
        self.host = HOST_MARK
        self.root = Path(cfg.staging_dir).absolute()
        self.logs_root = self.root / ".logs"
        python = cfg.python or settings.node.python or sys.executable
        if not os.path.isabs(python):
            raise ConfigError(f"slurm.python: an absolute path on the compute nodes, got {python!r}")
        self.python = python
        self.env_patterns = environment_patterns(settings.cluster.environment_allow)
        self.isolated = True
        if cfg.run_as not in ("pool", "user"):
            raise ConfigError(f"slurm.run_as: 'pool' or 'user', got {cfg.run_as!r}")
        if cfg.run_as == "pool" and not (cfg.uid_count >= 1 and cfg.uid_min >= 1000):
            raise ConfigError(
                "slurm.uid_min/uid_count: the uids of the service accounts clusters run as (run_as = 'pool'),"
                " at least one, from 1000 up"
            )
        self.uid_min, self.uid_count = cfg.uid_min, cfg.uid_count
        for what in ("partition", "account", "qos"):
            try:
                _word(f"slurm.{what}", getattr(cfg, what))
            except InvalidValue as exc:
                raise ConfigError(str(exc)) from None
        for what in ("scheduler_time_limit", "worker_time_limit"):
            try:
                time_limit_seconds(getattr(cfg, what))
            except InvalidValue as exc:
                raise ConfigError(f"slurm.{what}: {exc}") from None
        try:
            self.extra_args = shlex.split(cfg.extra_sbatch_args)
        except ValueError as exc:
            raise ConfigError(f"slurm.extra_sbatch_args: {exc}") from None
        self.env = {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"), "LANG": "C.UTF-8"}
        if cfg.conf:
            self.env["SLURM_CONF"] = str(Path(cfg.conf).absolute())
        self._root_ready = False
        self._addresses: tuple[float, dict[str, str]] = (0.0, {})
        if os.geteuid() == 0:
            # Where the compute nodes share this machine's software (and always on an emulated
            # Slurm), the clusters' accounts must reach the interpreter and gatewayha_preload.
            self._open(Path(self.python).parent, *preload_dirs(), *environments.prefix_bin_dirs(settings))

    def python_for(self, cfg: ClusterConfig) -> str:
        """The interpreter of the cluster's software environment on the compute nodes (not
        checked here: the gateway node need not have it), else ``slurm.python``."""
        if environments.chosen(self.settings, cfg) is None:
            return self.python
        return environments.python_for(self.settings, cfg)

    # ------------------------------------------------------------------ Slurm's commands
    def _bin(self, name: str) -> str:
        return str(Path(self.slurm.bin_dir) / name) if self.slurm.bin_dir else (shutil.which(name) or name)

    def _run(self, name: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run one Slurm command; BackendError when it cannot run or (``check``) fails."""
        argv = [self._bin(name), *args]
        try:
            proc = subprocess.run(
                argv, env=self.env, capture_output=True, text=True, timeout=self.slurm.command_timeout, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BackendError(f"{name}: {exc}") from None
        if proc.returncode != 0 and _UNREACHABLE.search(proc.stderr):
            raise BackendUnavailable(f"{name}: Slurm does not answer: {proc.stderr.strip()[:300]}")
        if check and proc.returncode != 0:
            raise BackendError(f"{name} failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()[:500]}")
        return proc

    def jobs(self, clusters: Sequence[str]) -> list[Job]:
        """The jobs of these clusters Slurm knows (running, pending, or ended within MinJobAge):
        one squeue call. Raises when Slurm does not answer."""
        if not clusters:
            return []
        names = sorted({p + c for c in clusters for p in (SCHEDULER_JOB, WORKERS_JOB)})
        proc = self._run(
            "squeue", "--noheader", "--array", "--states=all", f"--name={','.join(names)}",
            "--format=%i|%j|%T|%r|%N|%k",
        )  # fmt: skip
        out = []
        for line in proc.stdout.splitlines():
            parts = line.strip().split("|", 5)
            if len(parts) == 6:
                out.append(Job(*parts))
        return out

    def _node_address(self, node: str) -> str | None:
        """The IPv4 address of a compute node (its NodeAddr, resolved): where its jobs listen.
        One sinfo for every node, kept a minute (or until a node it does not list shows up)."""
        at, addresses = self._addresses
        if node not in addresses or time.monotonic() - at > ADDRESS_TTL_S:
            proc = self._run("sinfo", "--noheader", "--Node", "--format=%N|%o")
            addresses = {}
            for line in proc.stdout.splitlines():
                name, _, addr = line.strip().partition("|")
                if name and addr:
                    try:
                        addresses[name] = socket.gethostbyname(addr)
                    except OSError:
                        continue
            self._addresses = (time.monotonic(), addresses)
        return addresses.get(node)

    # ------------------------------------------------------------------ identities and files
    def _owner(self, user: str) -> Identity | None:
        """The account a cluster's jobs run as: None for the pool (a uid of the range is chosen
        with the cluster's directory, as the local backend does), or the owner's own."""
        if self.slurm.run_as == "pool":
            return None
        try:
            pw = pwd.getpwnam(user)
        except KeyError:
            raise SlurmRefused(f"slurm.run_as = 'user': user {user!r} has no Unix account on this node") from None
        if pw.pw_uid == 0:
            raise SlurmRefused("slurm.run_as = 'user': no cluster runs as root")
        return Identity(pw.pw_uid, pw.pw_gid)

    def _account(self, ident: Identity) -> tuple[str, str]:
        """``--uid``/``--gid`` values: the account must exist (sbatch resolves it)."""
        try:
            pwd.getpwuid(ident.uid)
        except KeyError:
            raise BackendError(
                f"uid {ident.uid} has no account on this node: create the service accounts of"
                f" slurm.uid_min/uid_count on every node (the gatewayha role does)"
            ) from None
        return str(ident.uid), str(ident.gid)

    def _script(self, path: Path, argv: list[str], env: Mapping[str, str], worker_names: list[str] | None) -> None:
        """A job script: the node's address, the variables, then the Dask command (root's file:
        sbatch reads it at submission, Slurm keeps its own copy)."""
        lines = ["#!/bin/bash", "# Written by gatewayha's Slurm backend.", "set -eu"]
        if "SLURM_CONF" in self.env:
            lines.append(f"export SLURM_CONF={shlex.quote(self.env['SLURM_CONF'])}")
        scontrol = shlex.quote(self._bin("scontrol"))
        lines += [
            f'addr=$({scontrol} show node "$SLURMD_NODENAME" -o | sed -n "s/.*NodeAddr=\\([^ ]*\\).*/\\1/p")',
            "HOST=$(getent ahostsv4 \"${addr:-$(hostname)}\" | awk 'NR == 1 {print $1}')",
        ]
        if worker_names is not None:
            lines.append(f"WORKERS=({' '.join(shlex.quote(w) for w in worker_names)})")
            lines.append("WORKER=${WORKERS[$SLURM_ARRAY_TASK_ID]}")
        lines += [f"export {k}={self._render(v)}" for k, v in env.items()]
        lines.append("exec " + " ".join(self._render(a) for a in argv))
        _write_secret(path, "\n".join(lines) + "\n")

    @staticmethod
    def _render(value: str) -> str:
        """``value`` single-quoted for bash, its stand-ins as the script's variables."""
        quoted = "'" + value.replace("'", "'\"'\"'") + "'"
        return quoted.replace(HOST_MARK, "'\"$HOST\"'").replace(WORKER_MARK, "'\"$WORKER\"'")

    def _sbatch(self, args: list[str], script: Path) -> str:
        """Submit; the job id. SlurmRefused for a refusal another try would meet again."""
        proc = self._run("sbatch", "--parsable", "--no-requeue", "--export=NONE", *args, *self.extra_args,
                         str(script), check=False)  # fmt: skip
        if proc.returncode == 0:
            job_id = proc.stdout.strip().split(";")[0]
            if job_id.isdigit():
                return job_id
        message = (proc.stderr or proc.stdout).strip().replace("\n", " ")[:500]
        if _REFUSALS.search(message):
            raise SlurmRefused(f"Slurm refused the job: {message}")
        raise BackendError(f"sbatch failed ({proc.returncode}): {message}")

    def _placement(self, cfg: ClusterConfig, cores: float, memory_bytes: int, time_limit: str) -> list[str]:
        """sbatch's resource options. A cluster option Slurm could not take (a partition name
        with a space, a time limit in no Slurm format) is refused for good: SlurmRefused."""
        args = [f"--cpus-per-task={max(1, math.ceil(cores))}", f"--mem={max(1, math.ceil(memory_bytes / 2**20))}M"]
        try:
            for flag in ("partition", "account", "qos"):
                # The cluster's option, else [slurm]'s default (a row of an older release has none).
                value = getattr(cfg, flag) or getattr(self.slurm, flag)
                if _word(flag, value):
                    args.append(f"--{flag}={value}")
            if time_limit:
                time_limit_seconds(time_limit)
                args.append(f"--time={time_limit}")
        except InvalidValue as exc:
            raise SlurmRefused(f"cluster options: {exc}") from None
        return args

    def _common(self, kind: str, cluster: str, user: str, d: Path, ident: Identity, log_name: str) -> list[str]:
        uid, gid = self._account(ident)
        # The owner for accounting, any character outside Slurm's safe set replaced.
        comment = f"{TAG} cluster={cluster} user={re.sub(r'[^A-Za-z0-9_.@+-]', '_', user)[:64] or '-'}"
        return [
            f"--job-name={kind}{cluster}", f"--comment={comment}", f"--uid={uid}", f"--gid={gid}",
            f"--chdir={d / 'work'}", f"--output={d / 'logs' / log_name}",
        ]  # fmt: skip

    # ------------------------------------------------------------------ verbs
    def start_scheduler(self, spec: SchedulerSpec) -> State:
        _check(_API_URL_RE, "api_url", spec.api_url)
        _check(_TOKEN_RE, "token", spec.token)
        _check_pem("tls_cert", spec.tls_cert)
        _check_pem("tls_key", spec.tls_key)
        name = spec.cluster_name
        running = [j for j in self.jobs([name]) if j.name == SCHEDULER_JOB + name and j.alive]
        if running:
            return {"job_id": running[0].job_id}
        d, ident = self._prepare_dir(name, spec.tls_cert, spec.tls_key, self._owner(spec.user))
        _write_secret(d / "api-token", spec.token, ident.gid)
        argv, env = self.scheduler_command(spec, d)
        script = d / "scheduler.sh"
        self._script(script, argv, env, None)
        cfg = spec.config
        args = self._common(SCHEDULER_JOB, name, spec.user, d, ident, "scheduler-%j.log")
        args += self._placement(cfg, cfg.scheduler_cores, int(float(cfg.scheduler_memory_gib) * GIB),
                                self.slurm.scheduler_time_limit)  # fmt: skip
        job_id = self._sbatch(args, script)
        log.info("cluster %s: scheduler submitted as Slurm job %s", name, job_id)
        return {"job_id": job_id}

    def start_worker(self, spec: WorkerSpec) -> State:
        return self.start_workers([spec])[0]

    def start_workers(self, specs: Sequence[WorkerSpec]) -> list[State]:
        """The workers as one job array (the workers of one cluster; those that run already are
        found by name and not submitted again)."""
        if not specs:
            return []
        first = specs[0]
        name = first.cluster_name
        if any(s.cluster_name != name for s in specs):
            raise InvalidValue("start_workers: the workers of one cluster at a time")
        validate.address(first.scheduler_address, ("tls",), "scheduler address")
        _check_pem("tls_cert", first.tls_cert)
        _check_pem("tls_key", first.tls_key)
        found = self._worker_jobs(name, self.jobs([name]))
        running = {w: j for w, j in found.items() if j.alive}
        states: dict[str, State] = {s.worker_name: {"job_id": running[s.worker_name].job_id}
                                    for s in specs if s.worker_name in running}  # fmt: skip
        todo = [s.worker_name for s in specs if s.worker_name not in states]
        if todo:
            for w in todo:
                validate.worker_name(w, name)
            d, ident = self._prepare_dir(name, first.tls_cert, first.tls_key, self._owner(first.user))
            cfg = first.config
            limit = cfg.time_limit or self.slurm.worker_time_limit
            placement = self._placement(cfg, cfg.worker_cores, int(float(cfg.worker_memory_gib) * GIB)
                                        + NANNY_HEADROOM_BYTES, limit)  # fmt: skip
            argv, env = self.worker_command(dataclasses.replace(first, worker_name=WORKER_MARK), d)
            seconds = time_limit_seconds(limit)
            if seconds:
                # Retire before the walltime, staggered (Dask adds up to +-stagger) so the workers
                # do not all leave at once, and all of them at least lifetime_margin early.
                latest = seconds - int(self.slurm.lifetime_margin)
                stagger = max(0, min(60, latest // 10))
                lifetime = max(60, latest - stagger)
                argv += ["--lifetime", f"{lifetime}s", "--lifetime-stagger", f"{stagger}s"]
            script = d / f"workers-{time.time_ns()}.sh"
            self._script(script, argv, env, todo)
            args = self._common(WORKERS_JOB, name, first.user, d, ident, "worker-%A_%a.log")
            args[1] += " workers=" + ",".join(w[len(name) + 1 :] for w in todo)
            args += placement
            if cfg.worker_gpus:
                args.append(f"--gres=gpu:{int(cfg.worker_gpus)}")
            args.append(f"--array=0-{len(todo) - 1}")
            array = self._sbatch(args, script)
            log.info("cluster %s: %d workers submitted as Slurm job array %s", name, len(todo), array)
            states.update({w: {"job_id": f"{array}_{i}"} for i, w in enumerate(todo)})
        return [states[s.worker_name] for s in specs]

    @staticmethod
    def _worker_jobs(cluster: str, jobs: Sequence[Job]) -> dict[str, Job]:
        """Worker name -> its array task, from the arrays' comments (the live task wins over an
        ended one of the same worker)."""
        out: dict[str, Job] = {}
        for j in jobs:
            if j.name != WORKERS_JOB + cluster or j.task is None:
                continue
            m = re.search(r"\bworkers=(\S+)", j.comment)
            suffixes = m[1].split(",") if m else []
            if j.task < len(suffixes):
                w = f"{cluster}-{suffixes[j.task]}"
                if w not in out or j.alive:
                    out[w] = j
        return out

    def _status(self, job: Job | None, missing: str, state: State | None) -> ProcessStatus:
        if job is None:
            return ProcessStatus(False, missing)
        if job.state == "COMPLETING":
            # Ending, its final word (TIMEOUT, CANCELLED, FAILED...) not said yet: the next check.
            return ProcessStatus(True)
        if not job.alive:
            return ProcessStatus(False, job.describe())
        new = {"job_id": job.job_id, "slurm_state": job.state, "slurm_reason": job.reason}
        # What a start waits for, in Slurm's words (the core adds it to "did not start within").
        new["waiting"] = job.describe() if job.state == "PENDING" else None
        if job.state == "RUNNING" and job.node:
            new["node"] = job.node
        old = state or {}
        if {k: old.get(k) for k in new} == new and ("node" not in new or "host" in old):
            return ProcessStatus(True)
        if "node" in new:
            host = old.get("host") if old.get("node") == new["node"] else None
            host = host or self._node_address(job.node)
            if host:
                new["host"] = host
        return ProcessStatus(True, None, {**old, **new})

    def check_schedulers(self, items: Sequence[tuple[str, State | None]]) -> list[ProcessStatus]:
        jobs = self.jobs([c for c, _ in items])
        by_id = {j.job_id: j for j in jobs}
        out = []
        for cluster, state in items:
            job_id = (state or {}).get("job_id")
            job = by_id.get(job_id) if job_id else None
            if job is None:
                named = [j for j in jobs if j.name == SCHEDULER_JOB + cluster]
                job = next((j for j in named if j.alive), named[-1] if named else None)
            missing = f"Slurm no longer knows job {job_id}" if job_id else "no Slurm job of this scheduler"
            out.append(self._status(job, missing, state))
        return out

    def check_workers(self, items: Sequence[tuple[str, str, State | None]]) -> list[ProcessStatus]:
        jobs = self.jobs([c for c, _, _ in items])
        by_id = {j.job_id: j for j in jobs}
        named = {c: self._worker_jobs(c, jobs) for c in {c for c, _, _ in items}}
        out = []
        for cluster, worker, state in items:
            job_id = (state or {}).get("job_id")
            job = by_id.get(job_id) if job_id else named[cluster].get(worker)
            missing = f"Slurm no longer knows job {job_id}" if job_id else "no Slurm job of this worker"
            out.append(self._status(job, missing, state))
        return out

    def _scancel(self, job_ids: Sequence[str]) -> None:
        if not job_ids:
            return
        proc = self._run("scancel", *job_ids, check=False)
        # A job that ended already: a no-op (scancel says "Invalid job id" / "already completing").
        if proc.returncode != 0 and not re.search(r"Invalid job id|already complet|Job/step already", proc.stderr):
            raise BackendError(f"scancel failed ({proc.returncode}): {proc.stderr.strip()[:500]}")

    def stop_scheduler(self, cluster_name: str, state: State | None = None) -> None:
        validate.cluster_name(cluster_name)
        ids = {j.job_id for j in self.jobs([cluster_name]) if j.name == SCHEDULER_JOB + cluster_name and j.alive}
        if (state or {}).get("job_id"):
            ids.add(state["job_id"])
        self._scancel(sorted(ids))

    def stop_worker(self, cluster_name: str, worker_name: str, state: State | None = None) -> None:
        validate.worker_name(worker_name, cluster_name)
        job_id = (state or {}).get("job_id")
        if not job_id:
            job = self._worker_jobs(cluster_name, self.jobs([cluster_name])).get(worker_name)
            job_id = job.job_id if job and job.alive else None
        if job_id:
            self._scancel([job_id])

    def stop_cluster(
        self,
        cluster_name: str,
        scheduler_state: State | None = None,
        worker_states: Mapping[str, State | None] | None = None,
    ) -> None:
        validate.cluster_name(cluster_name)
        # Every job of the cluster, by name (the state records add nothing: a half-started
        # cluster's jobs are found the same way); whole arrays, not task by task.
        alive = [j for j in self.jobs([cluster_name]) if j.alive]
        self._scancel(sorted({j.job_id.split("_")[0] for j in alive}))
        # Its files go once its jobs have ended (Slurm signals them, then kills after KillWait).
        deadline = time.monotonic() + self.slurm.command_timeout
        while alive and time.monotonic() < deadline:
            time.sleep(0.5)
            alive = [j for j in self.jobs([cluster_name]) if j.alive or j.state == "COMPLETING"]
        if alive:
            raise BackendError(f"cluster {cluster_name}: Slurm jobs {[j.job_id for j in alive]} still end")
        self._remove_files(cluster_name)
        log.info("stopped cluster %s (Slurm jobs cancelled) and removed its files", cluster_name)

    def local_clusters(self) -> set[str]:
        return set()  # not node-bound: no gateway node owns (or reaps) a cluster's jobs
