"""Cluster options: the spec served to clients and validation of what they send.

The wire format is dask-gateway's (``dask_gateway.options.Field._from_spec``).
An option whose field name matches a ``[cluster]`` setting (worker_cores,
worker_memory_gib, idle_timeout, ...) overrides that setting for the cluster.
"""

from __future__ import annotations

import fnmatch
import json
import math
import re
from dataclasses import asdict, dataclass
from typing import Any

from gatewayha import environments
from gatewayha.config import ClusterSettings, OptionSpec, Settings
from gatewayha.errors import Unprocessable
from gatewayha.validate import is_env_name


class OptionError(Unprocessable, ValueError):
    """An option value is unknown or invalid (422); a ValueError too, for config validation."""


def validate_value(spec: OptionSpec, x: Any) -> Any:
    name = spec.field
    if spec.type == "int":
        if isinstance(x, bool) or not isinstance(x, int):
            raise OptionError(f"{name} must be an integer, got {x!r}")
    elif spec.type == "float":
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            raise OptionError(f"{name} must be a float, got {x!r}")
        x = float(x)
        if not math.isfinite(x):
            raise OptionError(f"{name} must be finite, got {x!r}")
    elif spec.type == "string":
        if not isinstance(x, str):
            raise OptionError(f"{name} must be a string, got {x!r}")
        if len(x) > 4096:
            raise OptionError(f"{name} is too long")
    elif spec.type == "bool":
        if not isinstance(x, bool):
            raise OptionError(f"{name} must be a bool, got {x!r}")
    elif spec.type == "select":
        if not isinstance(x, str) or x not in (spec.options or []):
            raise OptionError(f"{x!r} is not a valid option for {name}")
    elif spec.type == "mapping":
        if x is None:
            x = {}
        if not isinstance(x, dict):
            raise OptionError(f"{name} must be a dict, got {type(x).__name__!r}")
        try:
            encoded = json.dumps(x)
        except (TypeError, ValueError):
            raise OptionError(f"{name} must be json serializable") from None
        if len(encoded) > 16_384:
            raise OptionError(f"{name} is too large")
    if spec.type in ("int", "float"):
        if spec.min is not None and x < spec.min:
            raise OptionError(f"{name} must be >= {spec.min}, got {x}")
        if spec.max is not None and x > spec.max:
            raise OptionError(f"{name} must be <= {spec.max}, got {x}")
    return x


def option_specs(settings: Settings) -> list[OptionSpec]:
    """The cluster options users may set: ``[[cluster_options]]``, and ``software_environment``
    when environments are declared (gatewayha.environments)."""
    env = environments.option_spec(settings)
    return [*settings.cluster_options, *([env] if env else [])]


def options_spec(specs: list[OptionSpec]) -> list[dict]:
    """The ``cluster_options`` list of ``GET /api/v1/options``."""
    out = []
    for s in specs:
        spec: dict[str, Any] = {"type": s.type}
        if s.type in ("int", "float"):
            spec["min"] = s.min
            spec["max"] = s.max
        if s.type == "select":
            spec["options"] = list(s.options or [])
        out.append({"field": s.field, "label": s.label, "default": s.default, "spec": spec})
    return out


def validate_options(specs: list[OptionSpec], given: Any) -> dict:
    """Fill defaults and check every value; unknown fields are an error."""
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise OptionError("cluster_options must be an object")
    by_name = {s.field: s for s in specs}
    unknown = sorted(set(given) - set(by_name))
    if unknown:
        raise OptionError(f"Unknown cluster options: {', '.join(map(str, unknown))}")
    return {s.field: validate_value(s, given.get(s.field, s.default)) for s in specs}


@dataclass
class ClusterConfig:
    """What a cluster runs with: [cluster] settings overridden by its options."""

    scheduler_cores: float
    scheduler_memory_gib: float
    worker_cores: float
    worker_memory_gib: float
    worker_threads: int
    idle_timeout: float
    max_workers: int
    heartbeat_period: float
    adaptive_period: float
    environment: dict
    # Batch-system placement (the Slurm backend; dask-gateway's SlurmClusterConfig names):
    # "" means the [slurm] default. Defaults here keep rows stored by older releases loadable.
    partition: str = ""
    account: str = ""
    qos: str = ""
    time_limit: str = ""  # a worker job's walltime (Slurm's format); its Dask lifetime follows
    worker_gpus: int = 0
    # The [environments.<name>] its processes run from; "": node.python (none declared, or a
    # cluster stored by a release without environments: from_json leaves it out).
    software_environment: str = ""

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> ClusterConfig:
        return cls(**data)

    @property
    def threads(self) -> int:
        return self.worker_threads or max(1, math.ceil(self.worker_cores))


_OVERRIDABLE = {
    "scheduler_cores": float,
    "scheduler_memory_gib": float,
    "worker_cores": float,
    "worker_memory_gib": float,
    "worker_threads": int,
    "idle_timeout": float,
    "max_workers": int,
    "partition": str,
    "account": str,
    "qos": str,
    "time_limit": str,
    "worker_gpus": int,
}


def cluster_config(settings: Settings, options: dict) -> ClusterConfig:
    base: ClusterSettings = settings.cluster
    values = {
        "scheduler_cores": base.scheduler_cores,
        "scheduler_memory_gib": base.scheduler_memory_gib,
        "worker_cores": base.worker_cores,
        "worker_memory_gib": base.worker_memory_gib,
        "worker_threads": base.worker_threads,
        "idle_timeout": base.idle_timeout,
        "max_workers": base.max_workers,
        "heartbeat_period": base.heartbeat_period,
        "adaptive_period": base.adaptive_period,
        "environment": {},
        "partition": settings.slurm.partition,
        "account": settings.slurm.account,
        "qos": settings.slurm.qos,
        "time_limit": settings.slurm.worker_time_limit,
        "worker_gpus": 0,
    }
    values["software_environment"] = str(options.get(environments.ENVIRONMENT_OPTION, ""))
    for key, conv in _OVERRIDABLE.items():
        if key in options:
            values[key] = conv(options[key])
    # Options may not raise the server's ceiling on workers.
    values["max_workers"] = min(values["max_workers"], base.max_workers)
    env = options.get("environment")
    if isinstance(env, dict):
        values["environment"] = {str(k): str(v) for k, v in env.items()}
    return ClusterConfig(**values)


# Never settable from cluster options, whatever cluster.environment_allow says: they could
# redirect heartbeats, weaken or replace the comm security, load code into the interpreter
# (preloads, PYTHONSTARTUP, LD_PRELOAD) or forge the launcher's unit marker.
_NEVER_ENV = re.compile(
    r"\A(?:DASK_GATEWAY|DASK_DISTRIBUTED__COMM|DASK_DISTRIBUTED__SCHEDULER__PRELOAD|DASK_DISTRIBUTED__WORKER__PRELOAD"
    r"|DASK_DISTRIBUTED__NANNY__PRELOAD|DASK_INTERNAL|DASK_CONFIG|DASK_ROOT_CONFIG|LD_|PYTHON|GATEWAYHA|JUPYTER"
    r"|DASK_DISTRIBUTED\Z)",
    re.IGNORECASE,
)


def environment_patterns(allow: str) -> tuple[str, ...]:
    return tuple(p for p in re.split(r"[\s,]+", allow) if p)


def split_environment(env: object, patterns: tuple[str, ...]) -> tuple[dict[str, str], list[str]]:
    """(the entries allowed into a cluster's processes, the names refused)."""
    kept, refused = {}, []
    for key, value in (env if isinstance(env, dict) else {}).items():
        key, value = str(key), str(value)
        if (
            is_env_name(key)
            and not _NEVER_ENV.match(key)
            and any(fnmatch.fnmatchcase(key, p) for p in patterns)
            and "\0" not in value
            and "\n" not in value
        ):
            kept[key] = value
        else:
            refused.append(key)
    return kept, refused
