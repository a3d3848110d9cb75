"""Numbered SQL migrations applied under an advisory lock, in two kinds (expand, then contract):

- **expand** (``migrations/NNNN_*.sql``): adds what the new release needs and keeps the previous
  release working. ``gatewayha-admin migrate`` applies them; each node runs it as it is
  upgraded, while the others still run the old code.
- **contract** (``migrations/contract/NNNN_*.sql``): drops what only the previous release used.
  Applied only by ``gatewayha-admin migrate --contract``, once every node runs the new release
  (playbooks/upgrade.yml runs it at its end); contract NNNN waits for expand NNNN, so a
  release's contractions follow its expansions.

Several nodes may migrate at once: the advisory lock serialises them and the second finds
nothing left to do.
"""

from __future__ import annotations

import re
from importlib import resources

import psycopg

_LOCK_KEY = 0x6761_7465_7761_7968  # "gatewayh"
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")

# The applied versions of each kind: expand in schema_migrations (as before contract
# migrations existed), contract in a table of its own (the numbers may repeat).
_TABLES = {"expand": "schema_migrations", "contract": "schema_contract_migrations"}
_FOLDERS = {"expand": "migrations", "contract": "migrations/contract"}


def available(kind: str = "expand") -> list[tuple[int, str, str]]:
    """(version, file name, sql) of every migration of ``kind`` shipped, in order."""
    out = []
    folder = resources.files("gatewayha.db")
    for part in _FOLDERS[kind].split("/"):
        folder = folder.joinpath(part)
    for entry in folder.iterdir():
        m = _NAME.match(entry.name)
        if m:
            out.append((int(m.group(1)), entry.name, entry.read_text()))
    out.sort()
    versions = [v for v, _, _ in out]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two {kind} migrations share a version number")
    return out


def _ensure_tables(conn: psycopg.Connection) -> None:
    for table in _TABLES.values():  # fixed names, never input
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {table} ("
            " version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )


def _applied(conn: psycopg.Connection, kind: str) -> set[int]:
    return {r["version"] for r in conn.execute(f"SELECT version FROM {_TABLES[kind]}").fetchall()}


def _apply(conn: psycopg.Connection, kind: str, upto: int | None = None) -> list[str]:
    applied: list[str] = []
    done = _applied(conn, kind)
    for version, name, sql in available(kind):
        if version in done or (upto is not None and version > upto):
            continue
        with conn.transaction():
            conn.execute(sql)
            conn.execute(f"INSERT INTO {_TABLES[kind]} (version, name) VALUES (%s, %s)", (version, name))
        applied.append(name if kind == "expand" else f"contract/{name}")
    return applied


def migrate(conn: psycopg.Connection, contract: bool = False) -> list[str]:
    """Apply the missing expand migrations, and with ``contract`` the contract ones their
    expansions allow; return the names applied. `conn` must be autocommit, with dict rows."""
    conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
    try:
        _ensure_tables(conn)
        applied = _apply(conn, "expand")
        if contract:
            applied += _apply(conn, "contract", upto=current_version(conn))
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return applied


def pending_contract(conn: psycopg.Connection) -> list[str]:
    """Contract migrations shipped and not applied yet (``migrate --contract`` applies them)."""
    row = conn.execute("SELECT to_regclass('schema_contract_migrations') IS NOT NULL AS present").fetchone()
    done = _applied(conn, "contract") if row["present"] else set()
    return [name for version, name, _ in available("contract") if version not in done]


def current_version(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT coalesce(max(version), 0) AS v FROM schema_migrations").fetchone()
    return row["v"]
