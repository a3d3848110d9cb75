"""Numbered SQL migrations applied under an advisory lock.

Several nodes may run ``gatewayha-admin migrate`` at once: the advisory lock
serialises them and the second finds nothing left to do.
"""

from __future__ import annotations

import re
from importlib import resources

import psycopg

_LOCK_KEY = 0x6761_7465_7761_7968  # "gatewayh"
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def available() -> list[tuple[int, str, str]]:
    """(version, file name, sql) of every migration shipped, in order."""
    out = []
    for entry in resources.files("gatewayha.db").joinpath("migrations").iterdir():
        m = _NAME.match(entry.name)
        if m:
            out.append((int(m.group(1)), entry.name, entry.read_text()))
    out.sort()
    versions = [v for v, _, _ in out]
    if len(set(versions)) != len(versions):
        raise RuntimeError("two migrations share a version number")
    return out


def migrate(conn: psycopg.Connection) -> list[str]:
    """Apply what is missing; return the names applied. `conn` must be autocommit, with dict rows."""
    applied: list[str] = []
    conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in conn.execute("SELECT version FROM schema_migrations").fetchall()}
        for version, name, sql in available():
            if version in done:
                continue
            with conn.transaction():
                conn.execute(sql)
                conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (version, name))
            applied.append(name)
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return applied


def current_version(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT coalesce(max(version), 0) AS v FROM schema_migrations").fetchone()
    return row["v"]
