"""The routes Postgres says every HAProxy should have: one per RUNNING cluster."""

from __future__ import annotations

import logging

import psycopg

from gatewayha.lifecycle import ClusterStatus
from gatewayha.routes.render import validate_route_address
from gatewayha.validate import reported_address

log = logging.getLogger("gatewayha.routes")


def _hostport(name: str, key: str, address: str | None) -> str | None:
    """host:port of a reported address (gatewayha.validate), or None (logged) when it cannot
    be a route.

    One bad row must not block every other route on the node, so it is skipped.
    """
    if not address:
        return None
    try:
        parsed = reported_address(key, address)
        return validate_route_address(f"{parsed.host}:{parsed.port}")
    except ValueError as exc:
        log.error("cluster %s: no route for %r: %s", name, address, exc)
        return None


def desired_routes(conn: psycopg.Connection) -> tuple[dict[str, str], dict[str, str]]:
    """(sni map, dashboard map) for every RUNNING cluster."""
    sni: dict[str, str] = {}
    dash: dict[str, str] = {}
    rows = conn.execute(
        "SELECT name, scheduler_address, dashboard_address FROM clusters"
        " WHERE status = %s AND scheduler_address IS NOT NULL",
        (ClusterStatus.RUNNING,),
    ).fetchall()
    for r in rows:
        target = _hostport(r["name"], "scheduler_address", r["scheduler_address"])
        if target:
            sni[f"daskgateway-{r['name']}"] = target
        board = _hostport(r["name"], "dashboard_address", r["dashboard_address"])
        if board:
            dash[r["name"]] = board
    return sni, dash
