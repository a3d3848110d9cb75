"""Typed settings: one TOML file plus environment overrides.

The file is named by ``GATEWAYHA_CONFIG``. Any value can be overridden by an
environment variable ``GATEWAYHA_<SECTION>__<KEY>`` (e.g.
``GATEWAYHA_NODE__NAME=gw2``); the override is parsed with the type of the
field it replaces. Every bad value is reported at start with its full name.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gatewayha.errors import ConfigError
from gatewayha.validate import is_ipv4

log = logging.getLogger("gatewayha.config")


@dataclass
class DatabaseSettings:
    # A libpq DSN; several hosts plus target_session_attrs=read-write survive a
    # primary switch.
    dsn: str = "postgresql://gatewayha@127.0.0.1:5432/gatewayha"
    pool_min: int = 1
    # A login takes up to three short checkouts (its hash and the throttle's slot, taken and given
    # back) besides the request's own. With 8, one 100-create storm in CI got five 503s (not
    # reproduced since; a pool wait past pool_timeout is the suspected cause).
    pool_max: int = 16
    connect_timeout: int = 3  # seconds, per connection attempt
    pool_timeout: float = 5.0  # seconds a request waits for a connection
    statement_timeout_ms: int = 10_000


@dataclass
class ServerSettings:
    # HMAC secret for session cookies and cluster tokens, and the key that
    # encrypts TLS keys at rest. Must be equal on every node.
    secret: str = ""
    # Rotation: secrets signed or encrypted with before ``secret``, still accepted (checked and
    # decrypted, never used to sign): comma- or space-separated. See docs/security.md.
    previous_secrets: str = ""
    # Address users give to Gateway(); used for links only.
    public_url: str = "http://127.0.0.1:8000"
    # Address schedulers heartbeat to (the gateway's /api through the local HAProxy).
    api_url: str = "http://127.0.0.1:8000/api"
    cookie_name: str = "gatewayha-session"
    cookie_max_age: int = 86_400
    max_body_bytes: int = 65_536
    wait_timeout: float = 20.0  # long-poll of GET /clusters/{name}?wait
    wait_poll_interval: float = 0.1
    # How long a create may wait behind the same user's other creates in one API process
    # (they serialise on the user's limits); then 503. Below HAProxy's 60 s server timeout.
    create_queue_timeout: float = 45.0
    # Ports of gatewayha's own services on the nodes (API instances, HAProxy stats, ...), comma
    # separated: never accepted as a scheduler's address. The public and API URLs' ports and the
    # database's are added by themselves.
    reserved_ports: str = ""
    # Concurrent long polls (GET …?wait) of one user in one API process; beyond it a poll is
    # answered at once without waiting (the stock client polls again 0.5 s later).
    max_waits_per_user: int = 8
    # Peers whose X-Forwarded-For is believed (comma-separated addresses or networks): the
    # HAProxies in front of this instance. Everyone else's source is the peer address.
    trusted_proxies: str = "127.0.0.1, ::1"
    # The WSGI server of gatewayha-api (its --wsgi overrides this): "granian" (HTTP parsed in Rust:
    # 2.7x gunicorn's requests/s for a constant answer, 1.6x for an authenticated GET, through
    # HAProxy; bench/profile.md, finding 14; liveness from systemd's watchdog) or "gunicorn"
    # (gthread worker; liveness from its worker timeout).
    wsgi: str = "granian"
    # gunicorn only: a worker whose main loop has not checked in for this long (stopped, the GIL
    # never released) is killed and replaced; it plays the part of systemd's WatchdogSec=30.
    gunicorn_timeout: int = 30

    @property
    def secrets(self) -> tuple[str, ...]:
        """The key ring: ``secret`` first, then ``previous_secrets`` (to check and decrypt)."""
        previous = [s for s in self.previous_secrets.replace(",", " ").split() if s != self.secret]
        return (self.secret, *previous)


# What the deprecated auth.type stood for, and what is used when neither it nor
# auth.authenticators is set.
LEGACY_AUTH_TYPES = {"basic": ["token", "basic"], "simple": ["token", "simple"]}
DEFAULT_AUTHENTICATORS = LEGACY_AUTH_TYPES["basic"]


@dataclass
class AuthSettings:
    # The authenticators tried, in order, on a request without a valid session cookie
    # (gatewayha.auth.authenticators, docs/auth.md): "token" (API tokens), "basic" (users
    # table, scrypt hashes), "simple" (any user name with simple_password: dask-gateway's
    # SimpleAuthenticator). Empty: what ``type`` stands for, else ["token", "basic"].
    authenticators: list[str] = field(default_factory=list)
    # Deprecated (use authenticators): "basic" is ["token", "basic"], "simple" ["token", "simple"].
    type: str = ""
    simple_password: str = ""
    realm: str = "gatewayha"
    # Login throttling (gatewayha.api.throttle), shared by all instances through Postgres:
    # this many failed logins per user name / per source address in a window of
    # throttle_window seconds (from the first failure) make further logins 429 until the
    # window ends. Keep the window short: it is also how long an attacker can lock a user out.
    throttle_window: float = 60.0
    throttle_user_failures: int = 10
    throttle_source_failures: int = 30

    def chosen(self) -> list[str]:
        """The names of the authenticators in use, in order."""
        if self.authenticators:
            return list(self.authenticators)
        return list(LEGACY_AUTH_TYPES.get(self.type, DEFAULT_AUTHENTICATORS))


@dataclass
class NodeSettings:
    name: str = "local-1"
    host: str = "127.0.0.1"  # address schedulers and workers listen on
    state_dir: str = ".state/node"
    # "auto": systemd transient units when systemd is PID 1, processes otherwise.
    launcher: str = "auto"
    python: str = ""  # interpreter whose `dask` runs schedulers; default: ours
    # Niceness of the Dask processes: in a start storm (each `dask scheduler` start is about
    # a second of CPU) the API, HAProxy and Postgres on the node keep the CPU first.
    dask_nice: int = 10
    # Tenant isolation. "uid": each cluster's processes run under a uid of their own, taken
    # from [dask_uid_min, dask_uid_min + dask_uid_count) on this node (needs root); "none":
    # as this service's own user (a developer's machine without root; unsafe: tenants'
    # code then reads the server secret).
    isolation: str = "uid"
    # 0x71000000 (1895825408) and up: above systemd's container range (up to 0x6FFFFFFF), in
    # the range it leaves unused; no passwd entries are needed.
    dask_uid_min: int = 1_895_825_408
    dask_uid_count: int = 1_000_000
    # The slice of every Dask unit (systemd launcher); the role installs it with a memory cap.
    dask_slice: str = "gatewayha.slice"


@dataclass
class BackendSettings:
    # Where Dask runs (gatewayha.backends, docs/backends.md): "local" (processes on the gateway
    # nodes; node.launcher picks how), or "package.module:Class" for a plug-in, a subclass of
    # gatewayha.backends.base.Backend installed beside gatewayha.
    name: str = "local"


@dataclass
class SlurmSettings:
    # The Slurm backend (backend.name = "slurm"; docs/backends.md, "Running Dask on Slurm").
    conf: str = ""  # SLURM_CONF for its commands; "": Slurm's default (/etc/slurm/slurm.conf)
    bin_dir: str = ""  # where sbatch, squeue, scancel, sinfo, scontrol are; "": PATH
    # Shared by the gateway nodes and the compute nodes at the same path: each cluster's TLS
    # files, token, job scripts, logs and work directory (readable by that cluster only).
    staging_dir: str = "/var/lib/gatewayha/slurm"
    python: str = ""  # the interpreter on the compute nodes; "": node.python, else ours
    partition: str = ""  # defaults of the cluster options of the same names; "": Slurm's
    account: str = ""
    qos: str = ""
    scheduler_time_limit: str = ""  # Slurm's time format; "": the partition's default
    worker_time_limit: str = "1:00:00"
    # Workers retire this long before their job's time limit, handing their data on (Dask's
    # --lifetime), so the walltime never kills one mid-task.
    lifetime_margin: float = 120.0
    # Whose jobs: "pool" (each cluster runs as one of the service accounts with uids
    # uid_min .. uid_min+uid_count-1, which the site creates on every node: no cluster reads
    # another's files or cancels its jobs) or "user" (the cluster owner's own Unix account).
    run_as: str = "pool"
    uid_min: int = 1_897_000_000
    uid_count: int = 0
    extra_sbatch_args: str = ""  # added to every sbatch (shell words), e.g. "--constraint=dask"
    command_timeout: float = 30.0  # seconds for one Slurm command; slurmctld down: the job retries


@dataclass
class JobsSettings:
    """[jobs]: the job runner (gatewayha-jobs, one per node) that claims jobs from Postgres and
    launches Dask schedulers and workers. Written [worker] before (deprecated, still read)."""

    concurrency: int = 4  # jobs run at once per job runner, besides launches
    # Dask processes (schedulers and workers) launching at once on this node, not yet reported
    # (0: one per CPU): schedulers not yet RUNNING and Dask workers their scheduler has not yet
    # listed. A `dask scheduler` or `dask worker` start is about a CPU-second: a 100-create storm
    # then queues in Postgres instead of 100 processes fighting for the cores, and a node takes a
    # scheduler start only when it has a slot, which spreads a storm over the nodes by capacity.
    launch_slots: int = 0
    lease_seconds: float = 30.0
    poll_interval: float = 2.0  # fallback when no NOTIFY arrives
    node_heartbeat_interval: float = 2.0
    node_timeout: float = 30.0  # a node unseen this long is dead
    max_attempts: int = 5
    retry_base_seconds: float = 1.0
    retry_max_seconds: float = 60.0

    def starting_slots(self) -> int:
        if self.launch_slots > 0:
            return self.launch_slots
        # One per CPU this process may run on: with one per two CPUs a start storm left cores
        # idle while schedulers waited on I/O (20 × create+scale+compute: 1.09× the anchor's
        # create median, 0.93× with one per CPU; the API's latency is kept by node.dask_nice).
        return max(1, len(os.sched_getaffinity(0)))


@dataclass
class HAProxySettings:
    # Runtime API socket of this node's HAProxy; empty: this node's job runner keeps no maps.
    admin_socket: str = ""
    map_dir: str = ".state/haproxy/maps"
    resync_interval: float = 30.0


@dataclass
class ClusterSettings:
    scheduler_cores: float = 1.0
    scheduler_memory_gib: float = 1.0
    worker_cores: float = 1.0
    worker_memory_gib: float = 1.0
    worker_threads: int = 0  # 0: one thread per core
    idle_timeout: float = 0.0  # seconds; 0 disables
    max_workers: int = 100
    heartbeat_period: float = 5.0
    heartbeat_timeout: float = 30.0
    adaptive_period: float = 3.0
    start_timeout: float = 120.0  # from the scheduler's launch to its first heartbeat
    queue_timeout: float = 600.0  # from the create to the launch (starts wait for a slot)
    max_lifetime: float = 0.0  # seconds; 0 disables
    stopped_retention: float = 86_400.0  # stopped records kept this long
    warm_pool_size: int = 0  # pre-started schedulers per node for the default options
    # Names a cluster's `environment` option may set in its processes (an allowlist of shell
    # patterns, space or comma separated); anything else is refused at create (422). Dask's
    # comm/TLS, preload and config-file settings, the gateway's, Python's and the loader's
    # variables are never allowed, whatever this says.
    environment_allow: str = (
        "OMP_NUM_THREADS MKL_NUM_THREADS OPENBLAS_NUM_THREADS NUMEXPR_NUM_THREADS NUMEXPR_MAX_THREADS"
        " NUMBA_NUM_THREADS TZ LC_ALL AWS_* AZURE_STORAGE_* GOOGLE_CLOUD_PROJECT HF_HOME"
        " DASK_ARRAY__* DASK_DATAFRAME__* DASK_DISTRIBUTED__WORKER__MEMORY__* DASK_DISTRIBUTED__WORKER__DAEMON"
        " DASK_DISTRIBUTED__SCHEDULER__WORK_STEALING DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES"
        " DASK_DISTRIBUTED__DEPLOY__LOST_WORKER_TIMEOUT USER_*"
    )
    # The [environments.<name>] a cluster runs from when its software_environment option is not
    # given (only read when environments are declared; without any, node.python runs Dask).
    default_environment: str = "default"


@dataclass
class EnvironmentSettings:
    """[environments.<name>]: a software environment (a venv or conda prefix, the same path on
    every node) that users pick with the cluster option software_environment; its Python runs
    the cluster's scheduler and workers (gatewayha.environments, docs/backends.md). Overridden,
    or declared, by GATEWAYHA_ENVIRONMENTS__<NAME>__<KEY>."""

    prefix: str = ""  # absolute: <prefix>/bin/python runs Dask (it needs gatewayha_preload)
    # For the admins and the users' documentation: dask-gateway's option spec has no per-choice
    # text, so it is not served.
    description: str = ""
    # A container image with the same software, for a backend that runs containers; the local
    # backend ignores it.
    image: str = ""


# Environment names: short slugs (lower case, as environment overrides spell them).
ENVIRONMENT_NAME_RE = re.compile(r"\A[a-z0-9][a-z0-9_.-]{0,39}\Z")
# The cluster option that picks one, added to the options by itself when any is declared. Not
# "environment": that option is the variables set in the cluster's processes, as in dask-gateway.
ENVIRONMENT_OPTION = "software_environment"


@dataclass
class LimitSettings:
    # Per user, over the user's active clusters (schedulers and workers); 0 means unlimited
    # (only when set explicitly: the defaults are finite).
    max_clusters: int = 10
    max_cores: float = 32.0
    max_memory_gib: float = 64.0


@dataclass
class OptionSpec:
    field: str
    type: str
    default: Any
    label: str = ""
    min: float | None = None
    max: float | None = None
    options: list[str] | None = None


@dataclass
class Settings:
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    server: ServerSettings = field(default_factory=ServerSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    node: NodeSettings = field(default_factory=NodeSettings)
    backend: BackendSettings = field(default_factory=BackendSettings)
    slurm: SlurmSettings = field(default_factory=SlurmSettings)
    jobs: JobsSettings = field(default_factory=JobsSettings)
    haproxy: HAProxySettings = field(default_factory=HAProxySettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    cluster_options: list[OptionSpec] = field(default_factory=list)
    environments: dict[str, EnvironmentSettings] = field(default_factory=dict)
    # What the file and environment said in deprecated words (each a sentence saying what to
    # write instead): logged once per process, printed by `gatewayha-admin check-config`.
    deprecations: list[str] = field(default_factory=list)


# Settings renamed in a release, old "section.key" -> new: the old names are still read (from the
# file and from GATEWAYHA_<SECTION>__<KEY>) with a deprecation warning, so an upgrade keeps a
# deployed gatewayha.toml working. Setting both the old and the new name is an error.
RENAMED = {
    **{f"worker.{f.name}": f"jobs.{f.name}" for f in dataclasses.fields(JobsSettings) if f.name != "launch_slots"},
    "worker.max_starting": "jobs.launch_slots",
}


_SECTIONS = {
    f.name: f for f in dataclasses.fields(Settings) if f.name not in ("cluster_options", "environments", "deprecations")
}
# What gatewayha-api can serve the app with (server.wsgi, --wsgi).
WSGI_SERVERS = ("granian", "gunicorn")
OPTION_TYPES = {"int", "float", "string", "bool", "select", "mapping"}


def _coerce(name: str, value: Any, typ: Any) -> Any:
    typ = typ if isinstance(typ, str) else getattr(typ, "__name__", str(typ))
    try:
        if typ in ("int",):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if typ in ("float",):
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if typ in ("str",):
            if not isinstance(value, str):
                raise ValueError
            return value
        if typ == "list[str]":
            if isinstance(value, str):  # an environment override: comma- or space-separated
                return value.replace(",", " ").split()
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError
            return list(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected {typ}, got {value!r}") from None
    return value


def _build_section(section: str, raw: dict, written: dict[tuple[str, str], str]) -> Any:
    cls = _SECTIONS[section].default_factory  # type: ignore[union-attr]
    known = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in raw.items():
        name = written.get((section, key), f"{section}.{key}")  # errors name what the user wrote
        if key not in known:
            raise ConfigError(f"{name}: unknown setting")
        values[key] = _coerce(name, value, known[key].type)
    return cls(**values)


def _parse_options(raw: Any) -> list[OptionSpec]:
    if not isinstance(raw, list):
        raise ConfigError("cluster_options: expected an array of tables")
    out = []
    seen = set()
    for i, item in enumerate(raw):
        where = f"cluster_options[{i}]"
        if not isinstance(item, dict) or "field" not in item or "type" not in item:
            raise ConfigError(f"{where}: needs 'field' and 'type'")
        unknown = set(item) - {f.name for f in dataclasses.fields(OptionSpec)}
        if unknown:
            raise ConfigError(f"{where}: unknown keys {sorted(unknown)}")
        spec = OptionSpec(**{"default": None, **item})
        if spec.type not in OPTION_TYPES:
            raise ConfigError(f"{where}.type: one of {sorted(OPTION_TYPES)}, got {spec.type!r}")
        if spec.field in seen:
            raise ConfigError(f"{where}.field: {spec.field!r} declared twice")
        seen.add(spec.field)
        if spec.type == "select" and not spec.options:
            raise ConfigError(f"{where}.options: a select needs choices")
        spec.label = spec.label or spec.field
        # Validate the default against the field's own rules.
        from gatewayha.options import OptionError, validate_value

        try:
            spec.default = validate_value(spec, spec.default)
        except OptionError as exc:
            raise ConfigError(f"{where}.default: {exc}") from None
        out.append(spec)
    return out


def _parse_environments(raw: Any, environ: dict[str, str]) -> dict[str, EnvironmentSettings]:
    """The [environments.<name>] tables, then GATEWAYHA_ENVIRONMENTS__<NAME>__<KEY> (which may
    declare one of its own); _validate_environments checks the values."""
    if not isinstance(raw, dict) or not all(isinstance(t, dict) for t in raw.values()):
        raise ConfigError("environments: expected tables [environments.<name>]")
    tables = {name: dict(table) for name, table in raw.items()}
    for key, value in environ.items():
        if key.startswith("GATEWAYHA_ENVIRONMENTS__"):
            name, sep, setting = key[len("GATEWAYHA_ENVIRONMENTS__") :].lower().rpartition("__")
            if not sep:
                raise ConfigError(f"{key}: write GATEWAYHA_ENVIRONMENTS__<NAME>__<SETTING>")
            tables.setdefault(name, {})[setting] = value
    known = {f.name for f in dataclasses.fields(EnvironmentSettings)}
    out = {}
    for name, table in tables.items():
        for key, value in table.items():
            if key not in known:
                raise ConfigError(f"environments.{name}.{key}: unknown setting")
            _coerce(f"environments.{name}.{key}", value, "str")
        out[name] = EnvironmentSettings(**table)
    return out


_OLD_SECTIONS = {old.partition(".")[0] for old in RENAMED}


def _env_name(dotted: str) -> str:
    section, _, key = dotted.partition(".")
    return f"GATEWAYHA_{section.upper()}__{key.upper()}"


def _deprecated(message: str, deprecations: list[str]) -> None:
    """Records a deprecated word of the configuration; logs it once per process."""
    deprecations.append(message)
    if message not in _deprecations_logged:
        _deprecations_logged.add(message)
        log.warning("%s", message)


def _move_renamed(data: dict, env: bool, written: dict[tuple[str, str], str], deprecations: list[str]) -> None:
    """Moves the settings of ``data`` ({section: {key: value}}, from the file or the environment)
    written under a deprecated name (RENAMED) to their new name, remembering the old one."""
    spell = _env_name if env else str
    for section in [s for s in data if s in _OLD_SECTIONS]:
        table = data.pop(section)
        if not isinstance(table, dict):
            raise ConfigError(f"{section}: expected a table")
        for key, value in table.items():
            old = f"{section}.{key}"
            if old not in RENAMED:
                raise ConfigError(f"{spell(old)}: unknown setting")
            new_section, _, new_key = RENAMED[old].partition(".")
            target = data.setdefault(new_section, {})
            if not isinstance(target, dict):
                raise ConfigError(f"{new_section}: expected a table")
            if new_key in target:
                new = spell(RENAMED[old])
                raise ConfigError(f"{spell(old)}: deprecated, and {new} replaces it: set only {new}")
            target[new_key] = value
            written[(new_section, new_key)] = old
            _deprecated(f"{spell(old)} is deprecated: write {spell(RENAMED[old])} instead", deprecations)


def _apply_env(data: dict, environ: dict[str, str]) -> None:
    for key, value in environ.items():
        if not key.startswith("GATEWAYHA_") or "__" not in key:
            continue
        section, _, name = key[len("GATEWAYHA_") :].lower().partition("__")
        if section not in _SECTIONS and section not in _OLD_SECTIONS:
            continue
        data.setdefault(section, {})[name] = value


def load_settings(path: str | os.PathLike | None = None, environ: dict | None = None) -> Settings:
    """Read the TOML file (``GATEWAYHA_CONFIG`` when no path), apply env overrides, validate.

    Settings written under a deprecated name (RENAMED, auth.type) still work; each is logged once
    per process and listed in the result's ``deprecations``."""
    environ = dict(os.environ if environ is None else environ)
    path = path or environ.get("GATEWAYHA_CONFIG")
    data: dict = {}
    if path:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
    for key in data:
        if key not in _SECTIONS and key not in _OLD_SECTIONS and key not in ("cluster_options", "environments"):
            raise ConfigError(f"{key}: unknown section")
    deprecations: list[str] = []
    written: dict[tuple[str, str], str] = {}  # (section, key) -> the deprecated name it was given
    _move_renamed(data, False, written, deprecations)
    env: dict = {}
    _apply_env(env, environ)
    env_written: dict[tuple[str, str], str] = {}
    _move_renamed(env, True, env_written, deprecations)
    for section, values in env.items():
        cls = _SECTIONS[section].default_factory  # type: ignore[union-attr]
        known = {f.name: f for f in dataclasses.fields(cls)}
        for name, raw in values.items():
            if name not in known:
                raise ConfigError(f"GATEWAYHA_{section.upper()}__{name.upper()}: unknown setting")
            target = data.setdefault(section, {})
            if not isinstance(target, dict):
                raise ConfigError(f"{section}: expected a table")
            target[name] = raw  # a string: _build_section coerces it like a file value
            written.pop((section, name), None)
    written.update(env_written)
    kwargs = {}
    for section in _SECTIONS:
        raw = data.get(section, {})
        if not isinstance(raw, dict):
            raise ConfigError(f"{section}: expected a table")
        kwargs[section] = _build_section(section, raw, written)
    kwargs["cluster_options"] = _parse_options(data.get("cluster_options", []))
    kwargs["environments"] = _parse_environments(data.get("environments", {}), environ)
    settings = Settings(**kwargs)
    validate(settings)
    if settings.auth.type:
        chosen = "[" + ", ".join(f'"{n}"' for n in settings.auth.chosen()) + "]"
        _deprecated(f"auth.type is deprecated: write auth.authenticators = {chosen} instead", deprecations)
    settings.deprecations = deprecations
    return settings


def parse_networks(text: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """``server.trusted_proxies``: comma-separated addresses or networks (may be empty)."""
    out = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            out.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ConfigError(f"server.trusted_proxies: not an address or network: {item!r}") from None
    return out


def validate(s: Settings) -> None:
    if len(s.server.secret) < 16:
        raise ConfigError("server.secret: set a random secret of at least 16 characters")
    if any(len(p) < 16 for p in s.server.secrets[1:]):
        raise ConfigError("server.previous_secrets: each at least 16 characters, separated by commas or spaces")
    _validate_auth(s.auth)
    if not 0 <= s.node.dask_nice <= 19:
        raise ConfigError(f"node.dask_nice: 0 to 19, got {s.node.dask_nice}")
    try:
        ports = [int(p) for p in s.server.reserved_ports.split(",") if p.strip()]
    except ValueError:
        ports = [-1]
    if not all(0 < p < 65536 for p in ports):
        raise ConfigError(f"server.reserved_ports: comma-separated ports, got {s.server.reserved_ports!r}")
    if s.server.wsgi not in WSGI_SERVERS:
        raise ConfigError(f"server.wsgi: 'granian' or 'gunicorn', got {s.server.wsgi!r}")
    if not 2 <= s.server.gunicorn_timeout <= 3600:
        # gunicorn's worker checks in about once a second: below 2 s a busy but live one is killed.
        raise ConfigError(f"server.gunicorn_timeout: 2 to 3600 seconds, got {s.server.gunicorn_timeout}")
    if s.node.isolation not in ("uid", "none"):
        raise ConfigError(f"node.isolation: 'uid' or 'none', got {s.node.isolation!r}")
    if not (1000 <= s.node.dask_uid_min and s.node.dask_uid_count >= 16
            and s.node.dask_uid_min + s.node.dask_uid_count <= 2**31 - 1):  # fmt: skip
        raise ConfigError("node.dask_uid_min/dask_uid_count: a range of >= 16 uids within 1000 .. 2**31-1")
    if not s.node.dask_slice.endswith(".slice") or not all(c.isalnum() or c in "-_." for c in s.node.dask_slice):
        raise ConfigError(f"node.dask_slice: a slice unit name, got {s.node.dask_slice!r}")
    if s.node.launcher not in ("auto", "process", "systemd"):
        raise ConfigError(f"node.launcher: 'auto', 'process' or 'systemd', got {s.node.launcher!r}")
    if not s.node.name or not all(c.isalnum() or c in "-_." for c in s.node.name):
        raise ConfigError(f"node.name: letters, digits, '-', '_' and '.' only, got {s.node.name!r}")
    from gatewayha.backends import backend_class  # it imports this module

    backend_class(s.backend)
    if not is_ipv4(s.node.host):
        # HAProxy's set-dst takes an address, never a name: routes need the node's IPv4.
        raise ConfigError(f"node.host: an IPv4 address, got {s.node.host!r}")
    if s.database.pool_max < s.database.pool_min or s.database.pool_min < 0:
        raise ConfigError("database.pool_max must be >= database.pool_min >= 0")
    if s.jobs.concurrency < 1:
        raise ConfigError("jobs.concurrency: must be >= 1")
    if s.jobs.lease_seconds < 2:
        raise ConfigError("jobs.lease_seconds: must be >= 2")
    if s.cluster.worker_cores <= 0 or s.cluster.worker_memory_gib <= 0:
        raise ConfigError("cluster.worker_cores and cluster.worker_memory_gib must be > 0")
    if s.cluster.start_timeout <= 0 or s.cluster.queue_timeout <= 0:
        raise ConfigError("cluster.start_timeout and cluster.queue_timeout must be > 0")
    if s.jobs.launch_slots < 0:
        raise ConfigError("jobs.launch_slots: must be >= 0 (0: one per CPU)")
    if s.cluster.warm_pool_size < 0:
        raise ConfigError("cluster.warm_pool_size: must be >= 0")
    if s.cluster.max_workers < 0:
        raise ConfigError("cluster.max_workers: must be >= 0")
    if s.cluster.heartbeat_timeout <= s.cluster.heartbeat_period:
        raise ConfigError("cluster.heartbeat_timeout must exceed cluster.heartbeat_period")
    parse_networks(s.server.trusted_proxies)
    if s.server.max_waits_per_user < 1:
        raise ConfigError("server.max_waits_per_user: must be >= 1")
    if not 1 <= s.auth.throttle_window <= 3600:
        raise ConfigError(f"auth.throttle_window: 1 to 3600 seconds, got {s.auth.throttle_window:g}")
    for name in ("throttle_user_failures", "throttle_source_failures"):
        if getattr(s.auth, name) < 1:
            raise ConfigError(f"auth.{name}: must be >= 1")
    for name in ("max_clusters", "max_cores", "max_memory_gib"):
        if getattr(s.limits, name) < 0:
            raise ConfigError(f"limits.{name}: must be >= 0 (0: unlimited)")
    _validate_environments(s)


def _validate_environments(s: Settings) -> None:
    for name, env in s.environments.items():
        if not ENVIRONMENT_NAME_RE.match(name):
            raise ConfigError(f"environments.{name}: a name of 1-40 lower-case letters, digits, '-', '_', '.'")
        if not os.path.isabs(env.prefix) or os.path.normpath(env.prefix) != env.prefix or "\0" in env.prefix:
            raise ConfigError(f"environments.{name}.prefix: an absolute, normalised path, got {env.prefix!r}")
    if any(o.field == ENVIRONMENT_OPTION for o in s.cluster_options):
        raise ConfigError(f"cluster_options: {ENVIRONMENT_OPTION} comes from the [environments.<name>] declared")
    default = s.cluster.default_environment
    if s.environments and default not in s.environments:
        raise ConfigError(f"cluster.default_environment: one of {sorted(s.environments)}, got {default!r}")
    if not s.environments and default != "default":
        raise ConfigError(f"cluster.default_environment: {default!r}, but no [environments.<name>] is declared")


def _validate_auth(auth: AuthSettings) -> None:
    if auth.type and auth.type not in LEGACY_AUTH_TYPES:
        raise ConfigError(f"auth.type: 'basic' or 'simple', got {auth.type!r} (deprecated: use auth.authenticators)")
    if auth.type and auth.authenticators:
        raise ConfigError("auth.type: deprecated, and auth.authenticators replaces it: set only auth.authenticators")
    from gatewayha.auth.authenticators import check_settings  # it imports this module

    check_settings(auth)


# Each deprecation message is logged once per process, however often settings are loaded.
_deprecations_logged: set[str] = set()


def state_path(s: Settings, *parts: str) -> Path:
    return Path(s.node.state_dir, *parts)
