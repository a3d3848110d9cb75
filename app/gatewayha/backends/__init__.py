"""Backends: where and how Dask schedulers and workers run (docs/backends.md).

``get_backend`` is the one entry point jobs use; ``Backend`` is the seam a new backend (Slurm,
Kubernetes, ...) implements. ``backend.name`` picks one: a name of ``BUILTIN``, or
``package.module:Class`` for a backend installed beside gatewayha.
"""

from __future__ import annotations

import importlib

from gatewayha.backends.base import Backend, ProcessStatus, SchedulerSpec, State, WorkerSpec
from gatewayha.config import BackendSettings, Settings
from gatewayha.errors import ConfigError

__all__ = [
    "BUILTIN",
    "Backend",
    "ProcessStatus",
    "SchedulerSpec",
    "State",
    "WorkerSpec",
    "backend_class",
    "get_backend",
    "node_bound",
]

# Built-in backends: name -> "module:Class" (imported only when chosen).
BUILTIN = {"local": "gatewayha.backends.local:LocalBackend", "slurm": "gatewayha.backends.slurm:SlurmBackend"}


def backend_class(backend: BackendSettings) -> type[Backend]:
    """The class ``backend.name`` names; ConfigError for an unknown name, a plug-in that does
    not import, or a class that is not a Backend."""
    name = backend.name
    target = BUILTIN.get(name, name)
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr.isidentifier():
        raise ConfigError(
            f"backend.name: one of {', '.join(map(repr, BUILTIN))} or 'package.module:Class', got {name!r}"
        )
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, TypeError, ValueError) as exc:
        raise ConfigError(f"backend.name: cannot load {target!r}: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise ConfigError(f"backend.name: {target!r} is not a gatewayha.backends.base.Backend subclass")
    return cls


def node_bound(settings: Settings) -> bool:
    """Whether the configured backend's processes live on the gateway node that launched them."""
    return backend_class(settings.backend).node_bound


def get_backend(settings: Settings) -> Backend:
    """The configured backend (``backend.name``), made from the settings."""
    return backend_class(settings.backend)(settings)
