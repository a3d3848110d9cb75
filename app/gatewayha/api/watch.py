"""Wake long polls (``GET /api/v1/clusters/{name}?wait``) when their cluster changes.

One LISTEN connection per API process on the cluster-changed channel(s)
(gatewayha.lifecycle.CHANNELS: the new name and, for one release, the old "routes" one that
nodes of the previous release still NOTIFY during a rolling upgrade): every change a waiter cares
about (the first heartbeat makes a cluster RUNNING, a stop, a failure) is NOTIFYed there
with the cluster's name, by whichever API instance or job runner made it. A waiter is woken
at once instead of at its next poll (up to ``server.wait_poll_interval`` later, 0.25–0.5 s
into a storm). Polling stays as the fallback: a waiter that misses a notification (the
LISTEN connection was down) still sees the change at its next poll, and every waiter is
woken when the connection comes back.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from gatewayha import lifecycle
from gatewayha.config import DatabaseSettings
from gatewayha.db.pool import listen_forever

log = logging.getLogger("gatewayha.api.watch")


class ClusterWatch:
    def __init__(self, db: DatabaseSettings, application_name: str = "gatewayha-api-watch"):
        self.db = db
        self.application_name = application_name
        self.listening = threading.Event()
        self.stopped = threading.Event()
        self._waiters: dict[str, set[threading.Event]] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="gatewayha-watch", daemon=True)

    def start(self) -> ClusterWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()
        self._thread.join(5)

    @contextmanager
    def watching(self, name: str) -> Iterator[threading.Event]:
        """An event set whenever ``name`` may have changed. Clear it *before* reading the
        cluster: a change after the read then always ends the wait that follows."""
        event = threading.Event()
        with self._lock:
            self._waiters.setdefault(name, set()).add(event)
        try:
            yield event
        finally:
            with self._lock:
                events = self._waiters.get(name)
                if events is not None:
                    events.discard(event)
                    if not events:
                        del self._waiters[name]

    def _wake(self, name: str | None) -> None:
        with self._lock:
            if name is None:
                events = [e for s in self._waiters.values() for e in s]
            else:
                events = list(self._waiters.get(name, ()))
        for e in events:
            e.set()

    def _connected(self, conn) -> None:
        self.listening.set()
        self._wake(None)  # whatever changed while nobody listened

    def _lost(self, exc) -> None:
        if self.listening.is_set():
            log.warning("LISTEN connection lost (%s); long polls poll until it is back", exc)
        self.listening.clear()

    def _run(self) -> None:
        listen_forever(
            self.db,
            self.application_name,
            lifecycle.CHANNELS,
            self.stopped,
            lambda n: self._wake(n.payload),
            self._connected,
            self._lost,
        )
        self.listening.clear()
