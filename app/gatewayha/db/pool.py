"""Connection pool with bounded waits: a dead database is an error, never a hang."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from gatewayha.config import DatabaseSettings

# Errors that mean "the database is not there", as opposed to a bug in a query: the API answers
# them as gatewayha.errors.DatabaseUnavailable (503).
UNAVAILABLE_ERRORS = (PoolTimeout, psycopg.OperationalError, psycopg.errors.AdminShutdown)


def connect_kwargs(db: DatabaseSettings, application_name: str) -> dict:
    return {
        "connect_timeout": db.connect_timeout,
        "application_name": application_name,
        # Bounded statements and lock waits; keepalives notice a vanished server.
        "options": f"-c statement_timeout={db.statement_timeout_ms} -c lock_timeout={db.statement_timeout_ms}"
        " -c idle_in_transaction_session_timeout=60000",
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 3,
        "keepalives_count": 3,
    }


# A connection back in the pool within this many seconds is handed out again unchecked: under
# load that saves a round trip per request (py-spy: a fifth of a GET's CPU); one idle longer,
# which may have outlived a database restart, is checked on checkout and replaced if broken.
CHECK_IDLE_AFTER = 2.0
# Once a connection comes back broken (the server went away under it), its siblings probably
# are too: for this long every checkout is checked, so a restarted database costs about one
# failed request per pool, not one per pooled connection.
SUSPECT_FOR = 10.0


class _Pool(ConnectionPool):
    def __init__(self, *args, **kwargs):
        self._suspect_until = 0.0
        super().__init__(*args, check=self._check_if_idle, **kwargs)

    def _check_if_idle(self, conn: psycopg.Connection) -> None:
        now = time.monotonic()
        if now < self._suspect_until or now - getattr(conn, "_gatewayha_returned", 0.0) > CHECK_IDLE_AFTER:
            ConnectionPool.check_connection(conn)

    def putconn(self, conn: psycopg.Connection) -> None:
        now = time.monotonic()
        if conn.broken or conn.closed:
            self._suspect_until = now + SUSPECT_FOR
        conn._gatewayha_returned = now
        super().putconn(conn)


def make_pool(
    db: DatabaseSettings, application_name: str, open_wait: bool = False, max_size: int | None = None
) -> ConnectionPool:
    size = db.pool_max if max_size is None else max_size
    pool = _Pool(
        db.dsn,
        min_size=min(db.pool_min, size),
        max_size=size,
        kwargs={**connect_kwargs(db, application_name), "autocommit": True, "row_factory": dict_row},
        timeout=db.pool_timeout,
        # A connection broken while idle (database restart) is found and replaced on checkout
        # (see _Pool).
        reconnect_timeout=0,  # never give up reconnecting in the background
        open=False,
        name=application_name,
    )
    pool.open(wait=open_wait, timeout=db.pool_timeout)
    return pool


def connect(db: DatabaseSettings, application_name: str, autocommit: bool = True) -> psycopg.Connection:
    """One dedicated connection (LISTEN, migrations)."""
    return psycopg.connect(db.dsn, autocommit=autocommit, row_factory=dict_row, **connect_kwargs(db, application_name))


def listen_forever(
    db: DatabaseSettings,
    application_name: str,
    channels: Iterable[str],
    stopped: threading.Event,
    on_notify: Callable[[psycopg.Notify], None],
    on_connect: Callable[[psycopg.Connection], None],
    on_lost: Callable[[psycopg.Error], None],
) -> None:
    """LISTEN on ``channels`` until ``stopped``, reconnecting after a lost connection (0.5 s,
    doubling to 10 s). ``on_connect`` runs after every (re)connection, to catch up on what was
    missed while nobody listened; ``on_notify`` for each notification."""
    delay = 0.5
    while not stopped.is_set():
        try:
            with connect(db, application_name) as conn:
                for channel in channels:
                    conn.execute(f"LISTEN {channel}")
                on_connect(conn)
                delay = 0.5
                while not stopped.is_set():
                    for n in conn.notifies(timeout=1.0):
                        on_notify(n)
        except psycopg.Error as exc:
            on_lost(exc)
            stopped.wait(delay)
            delay = min(delay * 2, 10)
