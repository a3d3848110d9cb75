"""Launchers: run a named long-lived process ("unit") detached from gatewayha-jobs.

Two implementations behind one interface:

* ``SystemdLauncher`` - a transient systemd unit per process (``systemd-run``), with
  MemoryMax/CPUQuota from the cluster config. Units belong to PID 1, so they
  survive a restart of gatewayha-jobs, and output goes to the journal.
* ``ProcessLauncher`` - where systemd does not run (dev, CI, containers): a process
  in its own session with a pidfile. It also survives gatewayha-jobs restarts;
  a unit marker in its environment keeps a recycled pid from being mistaken for it.

Unit names are ``<cluster>-scheduler`` or ``<cluster>-worker-<suffix>`` and are
validated before they reach a path or a command line.

Tenant code runs in these processes. With an ``Identity`` (the local backend gives one per
cluster) a unit runs under that uid/gid and nothing of the launcher's privileges: the systemd
launcher adds a sandbox (``SANDBOX``); the process launcher runs the command in PID and mount
namespaces of its own (it sees only its own processes), with no capabilities, no new
privileges, no supplementary groups and a bounded process count.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from gatewayha.config import Settings
from gatewayha.errors import BackendError, ConfigError, InvalidValue
from gatewayha.files import write_atomic
from gatewayha.validate import cluster_name, is_env_name, is_unit_name, unit_name, worker_name

log = logging.getLogger(__name__)

MARKER_VAR = "GATEWAYHA_UNIT"  # set in every launched process; never settable by users
# How long a start waits for its process's environment (and so its marker) to be readable.
EXEC_WAIT_S = 5.0


def scheduler_unit(cluster: str) -> str:
    return f"{cluster_name(cluster)}-scheduler"


def worker_unit(cluster: str, worker: str) -> str:
    worker_name(worker, cluster)
    return f"{cluster}-worker-{worker[len(cluster) + 1 :]}"


def unit_cluster(unit: str) -> str:
    """The cluster a unit belongs to."""
    return unit_name(unit)[:32]


@dataclass(frozen=True)
class Identity:
    """The unprivileged uid/gid a unit runs under (never 0)."""

    uid: int
    gid: int

    def __post_init__(self):
        if not (isinstance(self.uid, int) and isinstance(self.gid, int) and self.uid > 0 and self.gid > 0):
            raise InvalidValue(f"invalid identity {self.uid}:{self.gid}")


# Processes (threads included) one unit's uid may have: a fork bomb stays inside its cluster.
TASKS_MAX = 1024


@dataclass(frozen=True)
class Resources:
    """Caps for one unit; enforced where the launcher can (systemd cgroups)."""

    cpu_cores: float
    memory_bytes: int


class Launcher(ABC):
    """Start, stop and check named processes. All verbs are idempotent."""

    kind: str  # node.launcher's name for it

    @abstractmethod
    def start(
        self,
        unit: str,
        argv: list[str],
        env: dict[str, str],
        *,
        cwd: Path,
        log_path: Path,
        resources: Resources | None = None,
        identity: Identity | None = None,
    ) -> bool:
        """Start ``argv`` as ``unit`` unless it is running; True if it was started now.

        ``env`` is the complete environment (nothing is inherited from gatewayha-jobs,
        whose environment holds the database DSN and the server secret). ``log_path``
        receives output where the launcher has no journal. ``identity``: run as that uid/gid,
        isolated (see the module's docstring); None runs as the launcher's own user.
        """

    @abstractmethod
    def stop_many(self, units: Iterable[str], timeout: float = 10.0) -> None:
        """Stop the units (all at once), SIGKILL whatever outlives ``timeout``."""

    def stop(self, unit: str, timeout: float = 10.0) -> None:
        self.stop_many([unit], timeout)

    @abstractmethod
    def is_running(self, unit: str) -> bool:
        """Whether the unit's main process is alive."""

    def running_many(self, units: list[str]) -> list[bool]:
        """``is_running`` of each unit, in order (a launcher that can ask once for all does)."""
        return [self.is_running(u) for u in units]

    @abstractmethod
    def units(self) -> set[str]:
        """Units this launcher knows of on this node (running, or not yet cleaned up)."""


def _check_start_args(unit: str, argv: list[str], env: dict[str, str]) -> None:
    unit_name(unit)
    if not argv or not all(isinstance(a, str) and "\0" not in a for a in argv):
        raise InvalidValue("argv must be a non-empty list of strings")
    for key, value in env.items():
        if not is_env_name(key) or "\0" in value or "\n" in value:
            raise InvalidValue(f"invalid environment entry {key!r}")


# --------------------------------------------------------------------------- processes


def _read(path: str | Path, mode: str = "r") -> str | bytes | None:
    try:
        with open(path, mode) as f:
            return f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError, NotADirectoryError):
        return None
    except OSError:
        return None


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, pgrp, starttime) of a live process, or None."""
    raw = _read(f"/proc/{pid}/stat")
    if not raw:
        return None
    # The command name is in parentheses and may contain spaces or parentheses.
    fields = raw[raw.rfind(")") + 2 :].split()
    try:
        return fields[0], int(fields[2]), int(fields[19])
    except (IndexError, ValueError):
        return None


def _has_marker(pid: int, unit: str) -> bool:
    environ = _read(f"/proc/{pid}/environ", "rb")
    if not environ:
        return False
    return f"{MARKER_VAR}={unit}".encode() in environ.split(b"\0")


def _all_pids() -> Iterator[int]:
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            yield int(entry.name)


def _alive(pid: int) -> bool:
    st = _proc_stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def _live_groups() -> set[int]:
    """Process groups with at least one live (non-zombie) member: one pass over /proc."""
    out = set()
    for pid in _all_pids():
        st = _proc_stat(pid)
        if st and st[0] not in ("Z", "X"):
            out.add(st[1])
    return out


class ProcessLauncher(Launcher):
    """Processes in their own session, one pidfile per unit under ``run_dir``.

    The pidfile holds ``<pid> <starttime>``; a placeholder ``-`` is written before the
    process is spawned, so a crash between spawn and pidfile write leaves a trace that
    makes the next check look for the unit's marker in /proc instead of starting a
    second copy.
    """

    kind = "process"

    def __init__(self, run_dir: str | os.PathLike, nice: int = 0):
        self.run_dir = Path(run_dir)
        self.nice = nice
        # Processes this instance spawned, kept to wait() for them: no zombies.
        self._children: dict[str, subprocess.Popen] = {}
        self._children_lock = threading.Lock()

    # -- files
    def _pidfile(self, unit: str) -> Path:
        return self.run_dir / f"{unit_name(unit)}.pid"

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        # One lock per node: excludes other threads (each call opens its own file
        # description) and other gatewayha-jobs processes. Held only around
        # check-then-spawn, which takes milliseconds.
        self.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.run_dir / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _write_pidfile(self, unit: str, content: str) -> None:
        write_atomic(self._pidfile(unit), content, 0o600, durable=False)

    # -- liveness
    def _reap(self, unit: str | None = None) -> None:
        """Wait for exited children (all, or only ``unit``'s) so they leave no zombie."""
        with self._children_lock:
            for name, proc in list(self._children.items()):
                if (unit is None or name == unit) and proc.poll() is not None:
                    del self._children[name]

    def _is_ours(self, pid: int, unit: str, starttime: int | None) -> bool:
        st = _proc_stat(pid)
        if st is None or st[0] in ("Z", "X") or st[1] != pid:
            return False
        if starttime is not None and st[2] != starttime:
            return False
        if starttime is not None and _read(f"/proc/{pid}/environ", "rb") == b"":
            # Mid-exec: Popen returns once the exec has begun, but the new image's environment
            # shows only a moment later (the kernel sets it up last), and a wrapper (nice,
            # unshare) execs again. The pid and its start time are ours: taking it for a stale
            # pidfile lost a live unit (not running, its pidfile removed, a second copy started).
            return True
        return _has_marker(pid, unit)

    def _scan(self, unit: str) -> int | None:
        """Find the unit's session leader by its marker (slow path: reads /proc)."""
        for pid in _all_pids():
            st = _proc_stat(pid)
            if st and st[1] == pid and st[0] not in ("Z", "X") and _has_marker(pid, unit):
                return pid
        return None

    def _pidfile_pid(self, unit: str) -> tuple[bool, int | None]:
        """(pidfile exists, pid if the pidfile names the unit's live leader)."""
        raw = _read(self._pidfile(unit))
        if raw is None:
            return False, None
        parts = raw.split()
        if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
            pid = int(parts[0])
            if self._is_ours(pid, unit, int(parts[1])):
                return True, pid
        return True, None

    def _pid(self, unit: str, locked: bool = False) -> int | None:
        """The unit's live leader pid, or None. Repairs or removes a stale pidfile."""
        self._reap()
        exists, pid = self._pidfile_pid(unit)
        if not exists or pid is not None:
            return pid  # the cheap common cases: never started / stopped cleanly, or alive
        if not locked:
            # A placeholder may belong to a start in progress: decide under the lock.
            with self._lock():
                return self._pid(unit, locked=True)
        # Placeholder, stale or recycled pid: look for the marker before concluding.
        pid = self._scan(unit)
        if pid is not None:
            st = _proc_stat(pid)
            self._write_pidfile(unit, f"{pid} {st[2] if st else 0}\n")
            return pid
        with contextlib.suppress(FileNotFoundError):
            self._pidfile(unit).unlink()
        self._reap(unit)
        return None

    def is_running(self, unit: str) -> bool:
        return self._pid(unit_name(unit)) is not None

    # -- verbs
    @staticmethod
    def confine(argv: list[str], identity: Identity, nice: int = 0) -> list[str]:
        """``argv`` wrapped to run as ``identity`` in PID and mount namespaces of its own (a
        /proc that shows only its own processes, private /tmp and /dev/shm), without
        capabilities, supplementary groups or a way to gain privileges, and at most TASKS_MAX
        tasks for its uid."""
        return [
            *(["nice", "-n", str(nice)] if nice else []),
            "unshare", "--pid", "--fork", "--mount-proc", "--",
            # Private /tmp, /var/tmp and /dev/shm (nothing left there for, or planted by, another
            # cluster), except one that holds the unit's own directory (the working directory).
            "sh", "-c", 'for d in /tmp /var/tmp /dev/shm; do case "$PWD/" in "$d"/*) continue;; esac;'
            ' mount -t tmpfs -o mode=1777,nosuid,nodev,size=1g tmpfs "$d" || exit 1; done; exec "$@"', "sh",
            "prlimit", f"--nproc={TASKS_MAX}", "--",
            "setpriv", f"--reuid={identity.uid}", f"--regid={identity.gid}", "--clear-groups",
            "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all", "--",
            *argv,
        ]  # fmt: skip

    def start(self, unit, argv, env, *, cwd, log_path, resources=None, identity=None) -> bool:
        _check_start_args(unit, argv, env)
        niced_by_wrapper = False
        if identity is not None:
            argv = self.confine(argv, identity, self.nice)
            niced_by_wrapper = True
        with self._lock():
            if self._pid(unit, locked=True) is not None:
                return False
            self._write_pidfile(unit, "-\n")
            full_env = {**env, MARKER_VAR: unit}
            Path(log_path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            with open(log_path, "ab") as out:
                try:
                    proc = subprocess.Popen(
                        argv,
                        env=full_env,
                        cwd=cwd,
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        close_fds=True,
                        start_new_session=True,  # own session and process group
                    )
                except OSError:
                    with contextlib.suppress(FileNotFoundError):
                        self._pidfile(unit).unlink()
                    raise
            if self.nice and not niced_by_wrapper:
                # Right after the spawn (Python 3.11's Popen has no nice=); its children inherit it.
                with contextlib.suppress(OSError):
                    os.setpriority(os.PRIO_PROCESS, proc.pid, self.nice)
            # Popen returns once the child's exec has begun (its close-on-exec pipe is closed), a
            # moment before the kernel has set up the new image's environment: until then
            # /proc/<pid>/environ is empty, and a check (a second start, a stop) would take the
            # unit for dead and drop its pidfile. Under load the window was long enough for the
            # contract suite's start-then-stop to leave a worker running, and for a repeated start
            # to launch a copy.
            deadline = time.monotonic() + EXEC_WAIT_S
            while not _has_marker(proc.pid, unit) and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.001)
            st = _proc_stat(proc.pid)
            self._write_pidfile(unit, f"{proc.pid} {st[2] if st else 0}\n")
            with self._children_lock:
                self._children[unit] = proc
            log.info("started %s pid %d", unit, proc.pid)
            return True

    def _wait_gone(self, pending: dict[str, int], timeout: float) -> dict[str, int]:
        """Wait up to ``timeout`` until the process groups are gone; return those still alive.

        A group whose leader lives is alive: one stat read. Only when leaders have gone does a
        pass over /proc look for members left behind. (Scanning /proc every 50 ms per stop, 8
        stops at a time in a 100-cluster clean-up, was a third of a core at nice 0 and the API's
        p99 went from ~15 to ~50 ms.)"""
        deadline = time.monotonic() + timeout
        step = 0.02
        while pending:
            self._reap()
            leaderless = {u for u, g in pending.items() if not _alive(g)}
            if leaderless:
                live = _live_groups()
                pending = {u: g for u, g in pending.items() if u not in leaderless or g in live}
            if not pending or time.monotonic() >= deadline:
                break
            time.sleep(step)
            step = min(step * 1.5, 0.25)
        return pending

    def stop_many(self, units: Iterable[str], timeout: float = 10.0) -> None:
        units = [unit_name(u) for u in units]
        groups: dict[str, int] = {}
        for unit in units:
            pid = self._pid(unit)
            if pid is not None:
                groups[unit] = pid
        for unit, pgid in groups.items():
            log.info("stopping %s (process group %d)", unit, pgid)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGTERM)
        pending = self._wait_gone(dict(groups), timeout)
        for unit, pgid in pending.items():
            log.warning("%s outlived SIGTERM by %.0f s: SIGKILL", unit, timeout)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        # SIGKILL is final but not instant: wait briefly so callers see the group gone.
        pending = self._wait_gone(pending, 5.0)
        self._reap()
        # Drop the pidfiles of what is gone; one written meanwhile by a new start stays.
        with self._lock():
            for unit in units:
                self._pid(unit, locked=True)

    def units(self) -> set[str]:
        out = set()
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.run_dir):
                name = entry.name.removesuffix(".pid")
                if entry.name.endswith(".pid") and is_unit_name(name):
                    out.add(name)
        return out


# --------------------------------------------------------------------------- systemd


# The sandbox of a tenant's unit (systemd.exec(5), systemd 252). Left out, as recorded from
# earlier trials (not re-tried here): MemoryDenyWriteExecute (numba's JIT and some numpy/BLAS builds map W+X memory) and
# ProcSubset=pid (psutil, which Dask's system monitor uses, reads /proc/meminfo and /proc/stat).
SANDBOX = (
    "NoNewPrivileges=yes",
    "CapabilityBoundingSet=",
    "AmbientCapabilities=",
    "ProtectSystem=strict",
    "ProtectHome=yes",
    "PrivateTmp=yes",
    "PrivateDevices=yes",
    "ProtectProc=invisible",
    "ProtectKernelTunables=yes",
    "ProtectKernelModules=yes",
    "ProtectKernelLogs=yes",
    "ProtectControlGroups=yes",
    "ProtectClock=yes",
    "ProtectHostname=yes",
    "RestrictNamespaces=yes",
    "RestrictSUIDSGID=yes",
    "RestrictRealtime=yes",
    "LockPersonality=yes",
    "RemoveIPC=yes",
    "PrivateMounts=yes",
    "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK",
    "SystemCallArchitectures=native",
    "SystemCallFilter=@system-service",
    "SystemCallErrorNumber=EPERM",
    f"TasksMax={TASKS_MAX}",
    "UMask=0077",
    # Under memory pressure the kernel kills a tenant's process, not HAProxy, the API or the job runner.
    "OOMScoreAdjust=800",
)


class SystemdLauncher(Launcher):
    """Transient units ``gatewayha-<unit>.service`` under ``gatewayha.slice``.

    Units run with the uid/gid of the caller (so a gatewayha-jobs running as an
    unprivileged user needs a polkit rule allowing it to manage ``gatewayha-*`` units).
    The environment goes in an ``EnvironmentFile`` (mode 0600, in the unit's working
    directory), never in ``--setenv``: ``systemctl show`` prints a unit's Environment=
    to any local user, and users put credentials in the ``environment`` option.
    """

    PREFIX = "gatewayha-"
    kind = "systemd"

    def __init__(
        self,
        systemd_run: str = "systemd-run",
        systemctl: str = "systemctl",
        slice_name: str = "gatewayha.slice",
        stop_timeout: float = 10.0,
        nice: int = 0,
        inaccessible: tuple[str, ...] = ("/etc/gatewayha", "/run/haproxy", "/var/lib/postgresql"),
    ):
        self.nice = nice
        self.inaccessible = inaccessible
        self.systemd_run = systemd_run
        self.systemctl = systemctl
        self.slice_name = slice_name
        self.stop_timeout = stop_timeout

    def service(self, unit: str) -> str:
        return f"{self.PREFIX}{unit_name(unit)}.service"

    @staticmethod
    def env_file(cwd: Path, unit: str) -> Path:
        return Path(cwd) / f".{unit_name(unit)}.env"

    @staticmethod
    def env_file_content(unit: str, env: dict[str, str]) -> str:
        """``KEY="value"`` lines: backslash, double quote, backtick and dollar are escaped,
        which systemd's env-file parser undoes inside double quotes."""
        lines = []
        for key, value in {**env, MARKER_VAR: unit}.items():
            quoted = "".join("\\" + c if c in '\\"`$' else c for c in value)
            lines.append(f'{key}="{quoted}"\n')
        return "".join(lines)

    def command(
        self,
        unit: str,
        argv: list[str],
        env: dict[str, str],
        *,
        cwd: Path,
        resources: Resources | None = None,
        identity: Identity | None = None,
        writable: Path | None = None,
    ) -> list[str]:
        """The ``systemd-run`` command line that starts ``unit`` (env in ``env_file``).

        With ``identity`` the unit runs under that uid/gid in ``SANDBOX``, ``writable`` (the
        cluster's work dir) being the only path it may write."""
        _check_start_args(unit, argv, env)
        cmd = [
            self.systemd_run,
            "--quiet",
            "--collect",  # unload even when failed: no reset-failed bookkeeping
            f"--unit={self.service(unit)}",
            f"--slice={self.slice_name}",
            f"--uid={identity.uid if identity else os.geteuid()}",
            f"--gid={identity.gid if identity else os.getegid()}",
            f"--working-directory={cwd}",
            "--property=Type=exec",  # exec failures fail systemd-run itself
            "--property=KillMode=control-group",
            f"--property=TimeoutStopSec={self.stop_timeout:g}",
            f"--property=Nice={self.nice}",
        ]
        if resources is not None:
            cmd.append(f"--property=MemoryMax={int(resources.memory_bytes)}")
            cmd.append(f"--property=CPUQuota={max(1, round(resources.cpu_cores * 100))}%")
        if identity is not None:
            cmd.extend(f"--property={p}" for p in SANDBOX)
            cmd.extend(f"--property=InaccessiblePaths=-{p}" for p in self.inaccessible)
            if writable is not None:
                cmd.append(f"--property=ReadWritePaths={writable}")
        cmd.append(f"--property=EnvironmentFile={self.env_file(cwd, unit)}")
        cmd.append("--")
        cmd.extend(argv)
        return cmd

    def start(self, unit, argv, env, *, cwd, log_path, resources=None, identity=None) -> bool:
        writable = Path(cwd) / "work" if identity is not None else None
        cmd = self.command(unit, argv, env, cwd=cwd, resources=resources, identity=identity, writable=writable)
        if self.is_running(unit):
            return False
        write_atomic(self.env_file(cwd, unit), self.env_file_content(unit, env), 0o600, durable=False)
        res = subprocess.run(cmd, check=False, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if res.returncode != 0:
            if self.is_running(unit):  # lost a race with another starter: fine
                return False
            raise BackendError(f"systemd-run {self.service(unit)} failed: {res.stderr.strip()}")
        log.info("started %s", self.service(unit))
        return True

    def stop_many(self, units: Iterable[str], timeout: float = 10.0) -> None:
        services = [self.service(u) for u in units]
        if not services:
            return
        # One call stops them in parallel; systemd escalates to SIGKILL after
        # TimeoutStopSec. Exit 5 means "not loaded": already gone.
        res = subprocess.run(
            [self.systemctl, "stop", "--", *services],
            check=False, capture_output=True, text=True, timeout=timeout + 30,
        )  # fmt: skip
        if res.returncode not in (0, 5):
            raise BackendError(f"systemctl stop failed: {res.stderr.strip()}")

    def is_running(self, unit: str) -> bool:
        cmd = [self.systemctl, "is-active", "--quiet", "--", self.service(unit)]
        res = subprocess.run(cmd, check=False, capture_output=True)
        return res.returncode == 0

    def running_many(self, units: list[str]) -> list[bool]:
        """One ``systemctl is-active`` for all: it prints one state per unit, in order."""
        if not units:
            return []
        services = [self.service(u) for u in units]
        res = subprocess.run(
            [self.systemctl, "is-active", "--", *services], check=False, capture_output=True, text=True
        )
        states = res.stdout.split()
        if len(states) != len(services):
            raise BackendError(
                f"systemctl is-active: {len(states)} states for {len(services)} units: {res.stderr.strip()}"
            )
        return [state == "active" for state in states]

    def units(self) -> set[str]:
        res = subprocess.run(
            [self.systemctl, "list-units", "--all", "--plain", "--no-legend", "--full",
             f"{self.PREFIX}*.service"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        out = set()
        for line in res.stdout.splitlines():
            fields = line.split()
            if not fields:
                continue
            name = fields[0].removeprefix(self.PREFIX).removesuffix(".service")
            if is_unit_name(name):  # skips gatewayha-api@…, gatewayha-jobs
                out.add(name)
        return out


# --------------------------------------------------------------------------- choice


def systemd_is_init() -> bool:
    """True when systemd is PID 1 (the check sd_booted() does, plus PID 1's name)."""
    if not os.path.isdir("/run/systemd/system"):
        return False
    comm = _read("/proc/1/comm")
    return bool(comm) and comm.strip() == "systemd" and shutil.which("systemd-run") is not None


def make_launcher(settings: Settings) -> Launcher:
    """Systemd units when configured (or ``auto`` and systemd is PID 1), else processes."""
    kind = settings.node.launcher
    if kind == "systemd" or (kind == "auto" and systemd_is_init()):
        return SystemdLauncher(nice=settings.node.dask_nice, slice_name=settings.node.dask_slice)
    if kind not in ("auto", "process"):
        raise ConfigError(f"node.launcher: 'auto', 'process' or 'systemd', got {kind!r}")
    return ProcessLauncher(Path(settings.node.state_dir).absolute() / "run", nice=settings.node.dask_nice)
