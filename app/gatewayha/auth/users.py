"""Users and API tokens in Postgres."""

from __future__ import annotations

import psycopg

from gatewayha import lifecycle, validate
from gatewayha.auth import secrets as sec
from gatewayha.errors import GatewayError


class UserError(GatewayError, ValueError):
    """A user or token operation refused (bad name, empty password, unknown user)."""


def check_name(name: str) -> str:
    if not validate.is_user_name(name):
        raise UserError(f"invalid user name {name!r}: 1-64 of letters, digits, '.', '_', '@', '-'")
    return name


def add_user(conn: psycopg.Connection, name: str, password: str | None, replace: bool = False) -> bool:
    """Create a user (or, with replace, set its password). Returns True when created."""
    check_name(name)
    if password is not None and len(password) < 1:
        raise UserError("empty password")
    pw_hash = sec.hash_password(password) if password is not None else None
    if replace:
        row = conn.execute(
            "INSERT INTO users (name, password_hash) VALUES (%s, %s)"
            " ON CONFLICT (name) DO UPDATE SET password_hash = excluded.password_hash"
            " RETURNING (xmax = 0) AS created",
            (name, pw_hash),
        ).fetchone()
        return bool(row["created"])
    row = conn.execute(
        "INSERT INTO users (name, password_hash) VALUES (%s, %s) ON CONFLICT DO NOTHING RETURNING name",
        (name, pw_hash),
    ).fetchone()
    if row is None:
        raise UserError(f"user {name} already exists")
    return True


def ensure_user(conn: psycopg.Connection, name: str) -> None:
    conn.execute("INSERT INTO users (name) VALUES (%s) ON CONFLICT DO NOTHING", (check_name(name),))


def remove_user(conn: psycopg.Connection, name: str) -> bool:
    return conn.execute("DELETE FROM users WHERE name = %s RETURNING name", (name,)).fetchone() is not None


def list_users(conn: psycopg.Connection) -> list[dict]:
    return conn.execute(
        """
        SELECT u.name, u.created_at, u.password_hash IS NOT NULL AS has_password,
               (SELECT count(*) FROM clusters c WHERE c.owner = u.name
                  AND c.status = ANY(%s)) AS active_clusters
        FROM users u ORDER BY u.name
        """,
        (lifecycle.names(lifecycle.ACTIVE),),
    ).fetchall()


def password_hash(conn: psycopg.Connection, name: str) -> str | None:
    row = conn.execute("SELECT password_hash FROM users WHERE name = %s", (name,)).fetchone()
    return row["password_hash"] if row else None


def create_token(conn: psycopg.Connection, user: str, days: float | None = None) -> str:
    token, token_id, digest = sec.new_api_token()
    with conn.transaction():
        if conn.execute("SELECT 1 FROM users WHERE name = %s", (user,)).fetchone() is None:
            raise UserError(f"no user {user}")
        conn.execute(
            "INSERT INTO api_tokens (id, user_name, secret_hash, expires_at)"
            " VALUES (%s, %s, %s, CASE WHEN %s::float8 IS NULL THEN NULL"
            " ELSE now() + make_interval(secs => %s::float8 * 86400) END)",
            (token_id, user, digest, days, days),
        )
    return token


def token_user(conn: psycopg.Connection, token: str) -> str | None:
    parsed = sec.parse_api_token(token)
    if parsed is None:
        return None
    token_id, digest = parsed
    row = conn.execute(
        "SELECT user_name, secret_hash FROM api_tokens WHERE id = %s AND (expires_at IS NULL OR expires_at > now())",
        (token_id,),
    ).fetchone()
    if row is None or not sec.hmac.compare_digest(bytes(row["secret_hash"]), digest):
        return None
    return row["user_name"]
