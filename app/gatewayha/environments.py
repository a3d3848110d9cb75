"""Software environments: which Python runs a cluster's scheduler and workers.

Admins declare environments (``[environments.<name>]``: a venv or conda prefix, the same path on
every node that runs Dask); users pick one with the cluster option ``software_environment``
(a select of the declared names, added to ``GET /api/v1/options`` by itself; default
``cluster.default_environment``), so a notebook can match the Dask on its cluster. Without any
declared, ``node.python`` (else the gateway's own interpreter) runs Dask, as before.

Every backend resolves the interpreter here: ``python_for`` and ``bin_dir_for`` give the path a
command line names (on the machine that runs it: a Slurm backend's compute nodes), and
``require_python`` checks it exists on this machine (the local backend's start). The
environment's Python needs dask, distributed, dask-gateway and gatewayha_preload (the
scheduler's preloads); its Dask version is the one clients see.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from gatewayha.config import ENVIRONMENT_OPTION, EnvironmentSettings, OptionSpec, Settings
from gatewayha.errors import BackendRefused, ConfigError

__all__ = [
    "ENVIRONMENT_OPTION",
    "bin_dir_for",
    "chosen",
    "node_python",
    "option_spec",
    "prefix_bin_dirs",
    "python_for",
    "require_python",
]


def option_spec(settings: Settings) -> OptionSpec | None:
    """The ``software_environment`` option (a select of the declared names), or None when no
    environment is declared."""
    if not settings.environments:
        return None
    return OptionSpec(
        field=ENVIRONMENT_OPTION,
        type="select",
        default=settings.cluster.default_environment,
        label="Software environment",
        options=sorted(settings.environments),
    )


def node_python(settings: Settings) -> str:
    """The interpreter without a declared environment: node.python, else the gateway's own.
    Absolute, not resolved: a venv's bin/python is a symlink and its bin dir matters."""
    python = settings.node.python or sys.executable
    found = python if os.path.isabs(python) else shutil.which(python)
    if not found:
        raise ConfigError(f"node.python: {python!r} not found")
    return found


def chosen(settings: Settings, config: object) -> tuple[str, EnvironmentSettings] | None:
    """(name, environment) a cluster runs from (``config``: its ClusterConfig), or None for
    node.python: none picked (a cluster stored before environments were declared) or none
    declared. BackendRefused when the name is no longer declared."""
    name = getattr(config, ENVIRONMENT_OPTION, "") or ""
    if not name:
        return None
    env = settings.environments.get(name)
    if env is None:
        declared = sorted(settings.environments)
        raise BackendRefused(f"software environment {name!r} is not declared (declared: {declared})")
    return name, env


def python_for(settings: Settings, config: object) -> str:
    """Absolute path of the interpreter that runs the cluster's scheduler and workers:
    ``<prefix>/bin/python`` of its environment, else ``node_python``. Not checked to exist
    (a backend may run it on another machine): see require_python."""
    picked = chosen(settings, config)
    return str(Path(picked[1].prefix) / "bin" / "python") if picked else node_python(settings)


def bin_dir_for(settings: Settings, config: object) -> str:
    """The interpreter's bin dir (first on the processes' PATH, as in an activated venv)."""
    return os.path.dirname(python_for(settings, config))


def require_python(settings: Settings, config: object, where: str) -> str:
    """python_for, checked to be executable on this machine (``where``: its name for the
    message): else BackendRefused naming the environment, which fails the cluster at once."""
    python = python_for(settings, config)
    if not os.access(python, os.X_OK):
        picked = chosen(settings, config)
        what = f"software environment {picked[0]!r}" if picked else "node.python"
        raise BackendRefused(f"{what}: {python} is not an executable on {where}")
    return python


def prefix_bin_dirs(settings: Settings) -> list[Path]:
    """The bin dirs of the declared environments present on this machine (the local backend
    opens them for the clusters' uids)."""
    return [Path(e.prefix) / "bin" for e in settings.environments.values() if os.path.isdir(e.prefix)]
