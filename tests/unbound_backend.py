"""A backend whose processes are not bound to the gateway node that launched them, for tests:
the local backend declaring ``node_bound = False``. Its processes are real; every node of the
test is given the same ``node.state_dir`` on the same host, so any node finds, checks and stops
what another one launched (what a batch system gives a real backend of this kind).

Loaded as a plug-in: ``backend.name = "unbound_backend:UnboundLocalBackend"`` with ``tests/`` on
the Python path."""

from gatewayha.backends.local import LocalBackend


class UnboundLocalBackend(LocalBackend):
    node_bound = False
