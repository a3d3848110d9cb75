"""A backend whose processes are not bound to the gateway node that launched them, for tests:
the local backend declaring ``node_bound = False``. Its processes are real; every node of the
test is given the same ``node.state_dir`` on the same host, so any node finds, checks and stops
what another one launched (what a batch system gives a real backend of this kind).

Like a batch job's, a scheduler's host is not in the state record its start returns: the first
check that finds it running adds it (``ProcessStatus.state``), and the core stores it.

Loaded as a plug-in: ``backend.name = "unbound_backend:UnboundLocalBackend"`` with ``tests/`` on
the Python path."""

import dataclasses

from gatewayha.backends.local import LocalBackend


class UnboundLocalBackend(LocalBackend):
    node_bound = False

    def start_scheduler(self, spec):
        return {k: v for k, v in super().start_scheduler(spec).items() if k != "host"}

    def check_schedulers(self, items):
        out = []
        for (_name, state), status in zip(items, super().check_schedulers(items), strict=True):
            if status.alive and "host" not in (state or {}):
                status = dataclasses.replace(status, state={**(state or {}), "host": self.host})
            out.append(status)
        return out
