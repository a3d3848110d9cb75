"""The connection pool against a real Postgres: cheap checkouts, and a server that went away."""

from __future__ import annotations

import threading

import psycopg
from psycopg.rows import dict_row

from conftest import make_settings
from gatewayha.db.pool import make_pool


def test_after_the_server_drops_every_connection_one_request_fails_not_one_per_connection(db_dsn, tmp_path):
    """Connections returned less than 2 s ago are handed out unchecked; once one comes back
    broken, every checkout is checked for a while, so the dead siblings are replaced first."""
    settings = make_settings(db_dsn, tmp_path)
    settings.database.pool_min = 4
    settings.database.pool_max = 4
    pool = make_pool(settings.database, "test-pool-suspect", open_wait=True)
    try:
        barrier = threading.Barrier(4)

        def use():  # all four connections in use at once, then back in the pool
            with pool.connection() as conn:
                barrier.wait(10)
                conn.execute("SELECT 1")

        threads = [threading.Thread(target=use) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        with psycopg.connect(db_dsn, autocommit=True, row_factory=dict_row) as admin:
            killed = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity"
                " WHERE application_name = 'test-pool-suspect'"
            ).fetchone()["n"]
        assert killed == 4
        failures = 0
        for _ in range(8):
            try:
                with pool.connection() as conn:
                    conn.execute("SELECT 1")
            except psycopg.OperationalError:
                failures += 1
        assert failures == 1
    finally:
        pool.close()
