"""Per-key gates inside one API process: one request per key at a time.

All of one user's creates serialise on the user's row lock in Postgres (limits are checked
under it). Without a gate, a burst of creates by one user fills the connection pool with
transactions that only wait for that lock, and every other request (health checks, GETs,
heartbeats) times out waiting for a connection. Behind the gate, the other threads wait
without holding a connection; at most one per process waits in Postgres.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from gatewayha.errors import Unavailable


class KeyedGate:
    def __init__(self, timeout: float):
        self.timeout = timeout
        self._mutex = threading.Lock()
        self._entries: dict[str, list] = {}  # key -> [lock, number of threads holding or waiting]

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self._mutex:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = [threading.Lock(), 0]
            entry[1] += 1
        try:
            if not entry[0].acquire(timeout=self.timeout):
                raise Unavailable("Too many concurrent requests for this user; try again")
            try:
                yield
            finally:
                entry[0].release()
        finally:
            with self._mutex:
                entry[1] -= 1
                if entry[1] == 0:
                    del self._entries[key]

    def __len__(self) -> int:
        with self._mutex:
            return len(self._entries)
