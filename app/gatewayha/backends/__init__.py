"""Backends: where and how Dask schedulers and workers run.

``get_backend`` is the one entry point jobs use; ``Backend`` is the seam a new
backend (Slurm, Kubernetes, ...) implements.
"""

from __future__ import annotations

from gatewayha.backends.base import Backend, SchedulerSpec, WorkerSpec
from gatewayha.config import Settings

__all__ = ["Backend", "SchedulerSpec", "WorkerSpec", "get_backend"]


def get_backend(settings: Settings) -> Backend:
    """The backend for this node (only "local" exists for now)."""
    from gatewayha.backends.launcher import make_launcher
    from gatewayha.backends.local import LocalBackend

    return LocalBackend(settings, make_launcher(settings))
