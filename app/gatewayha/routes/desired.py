"""The routes Postgres says every HAProxy should have: one per RUNNING cluster."""

from __future__ import annotations

import psycopg


def _hostport(address: str | None) -> str | None:
    if not address or "://" not in address:
        return None
    return address.split("://", 1)[1].rstrip("/")


def desired_routes(conn: psycopg.Connection) -> tuple[dict[str, str], dict[str, str]]:
    """(sni map, dashboard map) for every RUNNING cluster."""
    sni: dict[str, str] = {}
    dash: dict[str, str] = {}
    rows = conn.execute(
        "SELECT name, scheduler_address, dashboard_address FROM clusters"
        " WHERE status = 'RUNNING' AND scheduler_address IS NOT NULL"
    ).fetchall()
    for r in rows:
        target = _hostport(r["scheduler_address"])
        if target:
            sni[f"daskgateway-{r['name']}"] = target
        board = _hostport(r["dashboard_address"])
        if board:
            dash[r["name"]] = board
    return sni, dash
