"""The local backend: schedulers and workers as processes on gateway nodes.

Each cluster runs under a uid of its own (``node.isolation = "uid"``), allocated on this node
from ``node.dask_uid_min`` up and held for as long as its directory exists:

    <state_dir>/clusters/                 root 0711   (no listing of other clusters' names)
    <state_dir>/clusters/<name>/          root:<gid> 0750   tls.crt, tls.key, api-token (0440)
    <state_dir>/clusters/<name>/logs/     root 0700   (the launcher writes the processes' output)
    <state_dir>/clusters/<name>/work/     <uid>:<gid> 0700  (HOME, TMPDIR, worker scratch: the
                                                              only place the cluster may write)

The gateway writes the secrets into a directory no tenant can write, with O_EXCL|O_NOFOLLOW
on the temporary file and a rename, so no link planted by a tenant is followed.
``stop_cluster`` stops the processes, then deletes the directory, which frees the uid.

Schedulers reuse dask-gateway's scheduler preload (heartbeats, ``/api/comm``,
adaptive scaling, idle timeout), through ``control_tls.py``, which serves its control API
(``/api/comm``) over TLS; workers are plain ``dask worker`` processes with a nanny.
Everything speaks TLS with the cluster's own certificate, which is both CA and leaf, so only
holders of the cluster key can talk to its scheduler (the control API authenticates the API
by the cluster token, which the API sends only to a server holding that key).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import logging
import math
import os
import random
import re
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from gatewayha import environments, validate
from gatewayha.backends.base import ALIVE, Backend, ProcessStatus, SchedulerSpec, State, WorkerSpec
from gatewayha.backends.launcher import (
    Identity,
    Launcher,
    Resources,
    make_launcher,
    scheduler_unit,
    unit_cluster,
    worker_unit,
)
from gatewayha.config import Settings
from gatewayha.errors import BackendRefused, ConfigError, InvalidValue
from gatewayha.files import write_atomic
from gatewayha.options import ClusterConfig, environment_patterns, split_environment

log = logging.getLogger(__name__)

GIB = 2**30
# A worker's cgroup holds the nanny (~70 MiB RSS here) besides the worker. The nanny
# restarts the worker at 95 % of its memory limit, so with this headroom the nanny acts
# before the kernel's OOM killer does.
NANNY_HEADROOM_BYTES = 256 * 2**20
# A worker that cannot reach its scheduler this long exits, so workers of a scheduler
# that died with its node do not linger if the gateway misses them.
WORKER_DEATH_TIMEOUT = 60

# Dask settings for the processes we start, under the cluster's `environment` (which may set
# them back). Dask's event-loop health tick runs every 20 ms by default: measured here, an
# idle scheduler then costs 2.5 % of a core (40 idle clusters: 0.75 of a core; 100 of them
# starve a 2-core node). Once a second it still catches a blocked loop (the warning limit
# is 3 s) and an idle scheduler costs about 0.5 %.
DASK_DEFAULTS = {"DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL": "1s"}

# Imported by module name from the scheduler's Python (gatewayha_preload, installed with
# gatewayha: node.python's environment, and every declared software environment, must hold it). In place of
# dask_gateway.scheduler_preload: the stock gateway service, its control API over TLS.
CONTROL_TLS_PRELOAD = "gatewayha_preload.control_tls"
# Reports the start and worker joins at once.
PROMPT_REPORTS_PRELOAD = "gatewayha_preload.prompt_reports"

_API_URL_RE = re.compile(r"\Ahttps?://[\x21-\x7e]{1,2000}\Z")
_TOKEN_RE = re.compile(r"\A[\x21-\x7e]{1,4096}\Z")


def _number(name: str, value: float) -> str:
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise InvalidValue(f"{name} must be a finite number >= 0, got {value!r}")
    return repr(value)


def _check(regex: re.Pattern, what: str, value: object) -> str:
    if not isinstance(value, str) or not regex.match(value):
        raise InvalidValue(f"invalid {what} {value!r}")
    return value


def _check_pem(what: str, value: object) -> str:
    if not isinstance(value, str) or "-----BEGIN " not in value or "\0" in value:
        raise InvalidValue(f"{what} must be a PEM string")
    return value


def _write_secret(path: Path, content: str, gid: int | None = None) -> None:
    """Write ``content`` to ``path`` atomically: mode 0600, or 0440 readable by group ``gid``
    (gatewayha.files.write_atomic: no link planted next to it is followed)."""
    write_atomic(path, content, 0o600 if gid is None else 0o440, gid=gid, durable=False)


def preload_dirs() -> list[Path]:
    """Where this Python imports gatewayha_preload from (the schedulers, under uids of their own,
    must reach it: a venv's site-packages, or the source tree of an editable install)."""
    spec = importlib.util.find_spec("gatewayha_preload")
    return [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []


def open_for_traversal(path: Path) -> list[str]:
    """Give "others" search (x) permission on ``path``'s directories that lack it, so processes
    under the clusters' uids reach the interpreter and their cluster's directory. Nothing is
    made readable or writable. Returns what was changed."""
    changed = []
    for p in [path, *path.parents]:
        try:
            st = os.stat(p)
        except FileNotFoundError:
            continue
        if os.path.isdir(p) and not st.st_mode & 0o001:
            os.chmod(p, (st.st_mode & 0o7777) | 0o001)
            changed.append(str(p))
    return changed


class LocalBackend(Backend):
    """Schedulers and workers as processes (or systemd units) on the gateway node that launched
    them: node-bound."""

    node_bound = True
    # Whether the processes write their logs themselves (a batch job's output file) rather than
    # the launcher: then the cluster's uid owns logs/.
    logs_writable = False
    # The setting that sizes the range of uids clusters get (named when it is exhausted).
    uid_setting = "node.dask_uid_count"

    def __init__(self, settings: Settings, launcher: Launcher | None = None):
        self.settings = settings
        self.node = settings.node.name
        self.launcher = launcher if launcher is not None else make_launcher(settings)
        self.host = validate.ipv4(settings.node.host, "node.host")
        self.root = Path(settings.node.state_dir).absolute() / "clusters"
        self.logs_root = Path(settings.node.state_dir).absolute() / "logs"
        # Without a declared software environment (gatewayha.environments).
        self.python = environments.node_python(settings)
        self.env_patterns = environment_patterns(settings.cluster.environment_allow)
        self.isolated = settings.node.isolation == "uid"
        self.uid_min, self.uid_count = settings.node.dask_uid_min, settings.node.dask_uid_count
        if self.isolated:
            if os.geteuid() != 0:
                raise ConfigError(
                    "node.isolation = 'uid' runs each cluster under a uid of its own and needs root;"
                    " set node.isolation = 'none' to run tenants' code as this user (unsafe)"
                )
            # A declared environment absent here fails its clusters' starts (require_python).
            self._open(Path(self.python).parent, *preload_dirs(), *environments.prefix_bin_dirs(settings))
        self._root_ready = False

    @staticmethod
    def _open(*paths: Path) -> None:
        for needed in paths:
            for p in open_for_traversal(needed):
                log.warning("gave others search permission (o+x) on %s: Dask processes run under their own uids", p)

    def user_environment(self, env: dict) -> dict[str, str]:
        """The part of a cluster's ``environment`` option allowed into its processes
        (cluster.environment_allow; a create asking for more was refused already)."""
        kept, refused = split_environment(env, self.env_patterns)
        if refused:
            log.warning("dropping environment variables %s from cluster options", sorted(refused))
        return kept

    # -------------------------------------------------------------------- paths
    def cluster_dir(self, cluster_name: str) -> Path:
        return self.root / validate.cluster_name(cluster_name)

    @contextlib.contextmanager
    def _uid_lock(self):
        """Excludes other threads and job runners of this node while a uid is chosen."""
        if not self._root_ready:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o711 if self.isolated else 0o700)
            if self.isolated:
                os.chmod(self.root, 0o711)
                self._open(self.root)
            self._root_ready = True
        fd = os.open(self.root / ".uids.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def identity(self, cluster_name: str) -> Identity | None:
        """The uid/gid the cluster's processes run under (None without isolation)."""
        if not self.isolated:
            return None
        st = os.stat(self.cluster_dir(cluster_name) / "work", follow_symlinks=False)
        return Identity(st.st_uid, st.st_gid)

    def _used_uids(self) -> set[int]:
        used = set()
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.root):
                if validate.is_cluster_name(entry.name):
                    with contextlib.suppress(OSError):
                        used.add(os.stat(Path(entry.path) / "work", follow_symlinks=False).st_uid)
        return used

    def _prepare_dir(
        self, cluster_name: str, tls_cert: str, tls_key: str, owner: Identity | None = None
    ) -> tuple[Path, Identity | None]:
        """The cluster's directory with its TLS files, and the identity its processes run as:
        ``owner`` where given, else a uid of the range of its own."""
        d = self.cluster_dir(cluster_name)
        with self._uid_lock():
            work = d / "work"
            uid = gid = None
            if owner is not None:
                uid, gid = owner.uid, owner.gid
            elif self.isolated:
                try:
                    uid = os.stat(work, follow_symlinks=False).st_uid
                except FileNotFoundError:
                    used = self._used_uids()
                    if len(used) >= self.uid_count:
                        # Capacity, not a fault: the start fails now, with the setting to raise.
                        raise BackendRefused(
                            f"{self.uid_setting}: every uid of the range is in use ({len(used)} clusters)"
                        ) from None
                    uid = random.randrange(self.uid_min, self.uid_min + self.uid_count)
                    while uid in used:
                        uid = random.randrange(self.uid_min, self.uid_min + self.uid_count)
            gid = uid if gid is None else gid
            d.mkdir(exist_ok=True, mode=0o700)
            (d / "logs").mkdir(exist_ok=True, mode=0o700)
            work.mkdir(exist_ok=True, mode=0o700)
            if uid is not None:
                os.chown(d, 0, gid, follow_symlinks=False)
                os.chmod(d, 0o750)
                os.chown(work, uid, gid, follow_symlinks=False)
                if self.logs_writable:
                    os.chown(d / "logs", uid, gid, follow_symlinks=False)
            else:
                os.chmod(d, 0o700)
        _write_secret(d / "tls.crt", tls_cert, gid)
        _write_secret(d / "tls.key", tls_key, gid)
        return d, (Identity(uid, gid) if uid is not None else None)

    def python_for(self, cfg: ClusterConfig) -> str:
        """The interpreter of the cluster's software environment (gatewayha.environments),
        checked to be on this node; ``self.python`` when it picked none."""
        if environments.chosen(self.settings, cfg) is None:
            return self.python
        return environments.require_python(self.settings, cfg, f"node {self.node}")

    @staticmethod
    def dask_command(python: str, sub: str) -> list[str]:
        """``<bin>/dask <sub>`` next to the cluster's interpreter, else ``python -m``."""
        dask = Path(python).parent / "dask"
        if dask.is_file() and os.access(dask, os.X_OK):
            return [str(dask), sub]
        return [python, "-m", f"distributed.cli.dask_{sub}"]

    @staticmethod
    def _base_env(d: Path, python: str) -> dict[str, str]:
        # Built from scratch: gatewayha-jobs's own environment carries the database
        # DSN and the server secret, which user code must never see.
        path = os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")
        return {
            # The interpreter's bin dir first, as in an activated venv: user code that
            # runs `python` or `pip` gets the cluster's environment.
            "PATH": f"{Path(python).parent}{os.pathsep}{path}",
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "HOME": str(d / "work"),
            "TMPDIR": str(d / "work"),
        }

    @staticmethod
    def _tls_env(d: Path, role: str) -> dict[str, str]:
        cert, key = str(d / "tls.crt"), str(d / "tls.key")
        return {
            "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True",
            "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": cert,
            f"DASK_DISTRIBUTED__COMM__TLS__{role}__CERT": cert,
            f"DASK_DISTRIBUTED__COMM__TLS__{role}__KEY": key,
            # Lets user code on the cluster open a Client to its own scheduler.
            "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT": cert,
            "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY": key,
        }

    # -------------------------------------------------------------------- commands
    def scheduler_command(self, spec: SchedulerSpec, d: Path) -> tuple[list[str], dict[str, str]]:
        name, cfg, host = spec.cluster_name, spec.config, self.host
        cert, key = str(d / "tls.crt"), str(d / "tls.key")
        python = self.python_for(cfg)
        argv = [
            *self.dask_command(python, "scheduler"),
            "--protocol", "tls",
            "--host", host,
            "--port", "0",
            "--dashboard-address", f"{host}:0",
            "--dashboard-prefix", f"/clusters/{name}",
            "--tls-ca-file", cert,
            "--tls-cert", cert,
            "--tls-key", key,
            "--preload", CONTROL_TLS_PRELOAD,
            "--preload", PROMPT_REPORTS_PRELOAD,
            "--dg-api-address", f"{host}:0",
            "--dg-heartbeat-period", _number("heartbeat_period", cfg.heartbeat_period),
            "--dg-adaptive-period", _number("adaptive_period", cfg.adaptive_period),
            "--dg-idle-timeout", _number("idle_timeout", cfg.idle_timeout),
        ]  # fmt: skip
        env = {
            **DASK_DEFAULTS,
            **self.user_environment(cfg.environment),
            **self._base_env(d, python),
            **self._tls_env(d, "SCHEDULER"),
            "DASK_GATEWAY_API_URL": spec.api_url,
            # The preload reads the token from a file when the value contains "/":
            # keeps it out of `systemctl show` and out of ps-visible environments.
            "DASK_GATEWAY_API_TOKEN": str(d / "api-token"),
            "DASK_GATEWAY_CLUSTER_NAME": name,
        }
        return argv, env

    def worker_command(self, spec: WorkerSpec, d: Path) -> tuple[list[str], dict[str, str]]:
        cfg = spec.config
        cert, key = str(d / "tls.crt"), str(d / "tls.key")
        threads = int(cfg.threads)
        memory = int(float(cfg.worker_memory_gib) * GIB)
        if threads < 1 or memory < 1:
            raise InvalidValue("worker threads and memory must be positive")
        python = self.python_for(cfg)
        argv = [
            *self.dask_command(python, "worker"),
            spec.scheduler_address,
            "--name", spec.worker_name,
            "--nthreads", str(threads),
            "--memory-limit", str(memory),
            "--nworkers", "1",
            # The nanny restarts a worker that nears its memory limit or crashes, under
            # the same name, and client.restart() needs it.
            "--nanny",
            "--no-dashboard",
            "--protocol", "tls",
            "--host", self.host,
            "--tls-ca-file", cert,
            "--tls-cert", cert,
            "--tls-key", key,
            "--local-directory", str(d / "work" / spec.worker_name),
            "--death-timeout", str(WORKER_DEATH_TIMEOUT),
        ]  # fmt: skip
        env = {
            **DASK_DEFAULTS,
            **self.user_environment(cfg.environment),
            **self._base_env(d, python),
            **self._tls_env(d, "WORKER"),
        }
        return argv, env

    # -------------------------------------------------------------------- verbs
    def _state(self, unit: str) -> State:
        """A process's state record: its unit on this node (found again by name when lost)."""
        return {"unit": unit, "node": self.node, "host": self.host, "launcher": self.launcher.kind}

    def _statuses(self, units: list[str]) -> list[ProcessStatus]:
        return [ALIVE if up else ProcessStatus(False, f"{u} is not running on {self.node}")
                for u, up in zip(units, self.launcher.running_many(units), strict=True)]  # fmt: skip

    def start_scheduler(self, spec: SchedulerSpec) -> State:
        unit = scheduler_unit(spec.cluster_name)
        _check(_API_URL_RE, "api_url", spec.api_url)
        _check(_TOKEN_RE, "token", spec.token)
        _check_pem("tls_cert", spec.tls_cert)
        _check_pem("tls_key", spec.tls_key)
        if self.launcher.is_running(unit):
            return self._state(unit)
        d, ident = self._prepare_dir(spec.cluster_name, spec.tls_cert, spec.tls_key)
        # No newline: the preload uses it verbatim.
        _write_secret(d / "api-token", spec.token, ident.gid if ident else None)
        argv, env = self.scheduler_command(spec, d)
        cfg: ClusterConfig = spec.config
        resources = Resources(float(cfg.scheduler_cores), int(float(cfg.scheduler_memory_gib) * GIB))
        self.launcher.start(
            unit, argv, env, cwd=d, log_path=d / "logs" / f"{unit}.log", resources=resources, identity=ident
        )
        return self._state(unit)

    def stop_scheduler(self, cluster_name: str, state: State | None = None) -> None:
        self.launcher.stop(scheduler_unit(cluster_name))

    def check_schedulers(self, items: Sequence[tuple[str, State | None]]) -> list[ProcessStatus]:
        return self._statuses([scheduler_unit(name) for name, _ in items])

    def start_worker(self, spec: WorkerSpec) -> State:
        unit = worker_unit(spec.cluster_name, spec.worker_name)
        validate.address(spec.scheduler_address, ("tls",), "scheduler address")
        _check_pem("tls_cert", spec.tls_cert)
        _check_pem("tls_key", spec.tls_key)
        if self.launcher.is_running(unit):
            return self._state(unit)
        d, ident = self._prepare_dir(spec.cluster_name, spec.tls_cert, spec.tls_key)
        argv, env = self.worker_command(spec, d)
        cfg: ClusterConfig = spec.config
        resources = Resources(float(cfg.worker_cores), int(float(cfg.worker_memory_gib) * GIB) + NANNY_HEADROOM_BYTES)
        self.launcher.start(
            unit,
            argv,
            env,
            cwd=d,
            log_path=d / "logs" / f"{unit}.log",
            resources=resources,
            identity=ident,
        )
        return self._state(unit)

    def stop_worker(self, cluster_name: str, worker_name: str, state: State | None = None) -> None:
        self.launcher.stop(worker_unit(cluster_name, worker_name))

    def check_workers(self, items: Sequence[tuple[str, str, State | None]]) -> list[ProcessStatus]:
        return self._statuses([worker_unit(cluster, worker) for cluster, worker, _ in items])

    def stop_cluster(
        self,
        cluster_name: str,
        scheduler_state: State | None = None,
        worker_states: Mapping[str, State | None] | None = None,
    ) -> None:
        # The unit names follow from the cluster's name and the launcher lists every unit of this
        # node: the state records add nothing here, and a half-started cluster (no state saved)
        # is found the same way.
        validate.cluster_name(cluster_name)
        units = {scheduler_unit(cluster_name)}
        units.update(u for u in self.launcher.units() if unit_cluster(u) == cluster_name)
        # All at once: the scheduler and its workers stop in parallel.
        self.launcher.stop_many(sorted(units))
        self._remove_files(cluster_name)
        log.info("stopped cluster %s (%d units) and removed its files", cluster_name, len(units))

    def _remove_files(self, cluster_name: str) -> None:
        """Once its processes are gone: keep the cluster's logs for post-mortems (pruned after
        cluster.stopped_retention), drop its keys and work directory."""
        logs = self.cluster_dir(cluster_name) / "logs"
        if logs.is_dir():
            kept = self.logs_root / cluster_name
            shutil.rmtree(kept, ignore_errors=True)
            kept.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(kept.parent, 0o700)
            shutil.move(str(logs), str(kept))
            os.utime(kept)
        shutil.rmtree(self.cluster_dir(cluster_name), ignore_errors=True)

    def prune_logs(self, max_age_s: float) -> int:
        cutoff = time.time() - max_age_s
        pruned = 0
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.logs_root):
                if validate.is_cluster_name(entry.name) and entry.stat(follow_symlinks=False).st_mtime < cutoff:
                    shutil.rmtree(entry.path, ignore_errors=True)
                    pruned += 1
        return pruned

    def local_clusters(self) -> set[str]:
        out = {unit_cluster(u) for u in self.launcher.units()}
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.root):
                if entry.is_dir(follow_symlinks=False) and validate.is_cluster_name(entry.name):
                    out.add(entry.name)
        return out
