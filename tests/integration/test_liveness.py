"""API instances report their continuity (gatewayha.liveness.ApiReporter) against a real Postgres."""

from __future__ import annotations

import psycopg
from psycopg.rows import dict_row

from conftest import make_settings
from gatewayha import liveness
from gatewayha.db.pool import make_pool
from helpers import wait_until


def test_api_reporter_keeps_its_run_and_starts_a_new_one_after_a_gap(db_dsn, tmp_path):
    settings = make_settings(db_dsn, tmp_path)
    pool = make_pool(settings.database, "test-liveness", open_wait=True)
    reporter = liveness.ApiReporter(pool, "gw-test").start()
    try:
        with psycopg.connect(db_dsn, autocommit=True, row_factory=dict_row) as db:

            def row():
                return db.execute(
                    "SELECT up_since, last_seen FROM api_instances WHERE name = %s", (reporter.name,)
                ).fetchone()

            first = wait_until(row, 10, "the first report")
            wait_until(lambda: row()["last_seen"] > first["last_seen"], 10, "a second report")
            assert row()["up_since"] == first["up_since"]  # no gap: the same run
            assert liveness.heartbeats_reliable(db, 3600) is False  # up for seconds, not an hour
            assert liveness.heartbeats_reliable(db, 0) is True
            # As if the process had been unable to report for a minute (database away).
            db.execute(
                "UPDATE api_instances SET up_since = now() - interval '1 hour', last_seen = now() - interval '1 minute'"
                " WHERE name = %s",
                (reporter.name,),
            )
            assert liveness.heartbeats_reliable(db, 1) is False  # its last report is stale
            wait_until(
                lambda: db.execute(
                    "SELECT up_since > now() - interval '30 s' AS fresh FROM api_instances WHERE name = %s",
                    (reporter.name,),
                ).fetchone()["fresh"],
                10,
                "a new run after the gap",
            )
            reporter.stop()
            db.execute("DELETE FROM api_instances")
            assert liveness.heartbeats_reliable(db, 3600) is True  # nothing reports: trust heartbeats
    finally:
        reporter.stop()
        pool.close()
