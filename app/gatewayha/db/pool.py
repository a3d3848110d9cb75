"""Connection pool with bounded waits: a dead database is an error, never a hang."""

from __future__ import annotations

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from gatewayha.config import DatabaseSettings


class DatabaseUnavailable(Exception):
    """Postgres cannot be reached or did not answer in time (HTTP 503)."""


# Errors that mean "the database is not there", as opposed to a bug in a query.
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


def make_pool(db: DatabaseSettings, application_name: str, open_wait: bool = False) -> ConnectionPool:
    pool = ConnectionPool(
        db.dsn,
        min_size=db.pool_min,
        max_size=db.pool_max,
        kwargs={**connect_kwargs(db, application_name), "autocommit": True, "row_factory": dict_row},
        timeout=db.pool_timeout,
        # A connection broken while idle (database restart) is found and replaced on checkout.
        check=ConnectionPool.check_connection,
        reconnect_timeout=0,  # never give up reconnecting in the background
        open=False,
        name=application_name,
    )
    pool.open(wait=open_wait, timeout=db.pool_timeout)
    return pool


def connect(db: DatabaseSettings, application_name: str, autocommit: bool = True) -> psycopg.Connection:
    """One dedicated connection (LISTEN, migrations)."""
    return psycopg.connect(db.dsn, autocommit=autocommit, row_factory=dict_row, **connect_kwargs(db, application_name))
