"""Shared fixtures: a throwaway Postgres for the whole run, a fresh database per test module."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import psycopg
import pytest

from gatewayha.auth import secrets as sec
from gatewayha.config import load_settings

ROOT = Path(__file__).resolve().parents[1]
PG_SCRIPT = ROOT / "scripts" / "pg.sh"
SECRET = "test-secret-0123456789abcdef"


def pytest_runtest_logreport(report):
    """A failure's report at once, not only in the summary at the end: a run cut short (a test
    over its --timeout ends the session) still shows why earlier tests failed."""
    if report.failed:
        print(f"\n=== {report.nodeid} ({report.when}) FAILED\n{report.longreprtext}\n", flush=True)


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory):
    """A Postgres server of its own for this test run (stopped at the end)."""
    existing = os.environ.get("GATEWAYHA_TEST_PG")
    if existing:
        yield existing
        return
    d = tmp_path_factory.mktemp("pg")
    dsn = subprocess.run([str(PG_SCRIPT), "start", str(d)], check=True, capture_output=True, text=True).stdout
    try:
        yield dsn.strip()
    finally:
        subprocess.run([str(PG_SCRIPT), "stop", str(d)], check=False)


def new_database(server_dsn: str) -> str:
    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return server_dsn.rsplit("/", 1)[0] + "/" + name


def make_settings(dsn: str, tmp: Path, **sections) -> object:
    env = {
        "GATEWAYHA_DATABASE__DSN": dsn,
        "GATEWAYHA_SERVER__SECRET": SECRET,
        "GATEWAYHA_NODE__STATE_DIR": str(tmp / "node"),
        "GATEWAYHA_HAPROXY__MAP_DIR": str(tmp / "maps"),
    }
    for section, values in sections.items():
        for k, v in values.items():
            env[f"GATEWAYHA_{section.upper()}__{k.upper()}"] = str(v)
    return load_settings(None, env)


@pytest.fixture(scope="module")
def db_dsn(pg_server):
    """A migrated, empty database for one test module."""
    from gatewayha.db.migrate import migrate

    dsn = new_database(pg_server)
    with psycopg.connect(dsn, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
        migrate(conn)
    return dsn


@pytest.fixture
def scrypt_calls(monkeypatch):
    """Every password hash computed (sec.verify_password) while the test runs."""
    calls = []
    real = sec.verify_password

    def counting(password, stored):
        calls.append(password)
        return real(password, stored)

    monkeypatch.setattr(sec, "verify_password", counting)
    return calls
