"""gatewayha-admin against a real Postgres, run as the operator runs it (a subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import falcon.testing
import psycopg
import pytest
from psycopg.rows import dict_row

from conftest import SECRET, make_settings, new_database
from gatewayha import clusters
from gatewayha.api.app import create_app
from gatewayha.db.pool import make_pool


@pytest.fixture(scope="module")
def dsn(pg_server):
    return new_database(pg_server)


def admin(dsn, *args, stdin=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAYHA_")}
    env.update(GATEWAYHA_DATABASE__DSN=dsn, GATEWAYHA_SERVER__SECRET=SECRET)
    return subprocess.run(
        [sys.executable, "-m", "gatewayha.cli", *args],
        input=stdin,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_migrate_is_idempotent(dsn):
    first = admin(dsn, "migrate")
    assert first.returncode == 0 and "0001_initial.sql" in first.stdout
    second = admin(dsn, "migrate")
    assert second.returncode == 0 and "applied: nothing" in second.stdout


def test_users_add_list_remove(dsn):
    assert admin(dsn, "users", "add", "dora", "--password-stdin", stdin="explorer\n").returncode == 0
    again = admin(dsn, "users", "add", "dora", "--password-stdin", stdin="x\n")
    assert again.returncode == 1 and "already exists" in again.stderr
    assert admin(dsn, "users", "add", "bad name!", "--password-stdin", stdin="x\n").returncode == 1
    assert admin(dsn, "users", "add", "eve", "--password-stdin", stdin="\n").returncode == 2
    listed = json.loads(admin(dsn, "users", "list", "--json").stdout)
    assert [u["name"] for u in listed] == ["dora"] and listed[0]["has_password"] is True
    assert "dora" in admin(dsn, "users", "list").stdout
    assert admin(dsn, "users", "remove", "dora").returncode == 0
    assert admin(dsn, "users", "remove", "dora").returncode == 1


def test_password_set_by_cli_logs_in_and_token_authenticates(dsn, tmp_path):
    import base64

    admin(dsn, "users", "add", "fred", "--password-stdin", stdin="flintstone\n")
    token = admin(dsn, "tokens", "create", "fred").stdout.strip()
    assert token.startswith("gha_")
    settings = make_settings(dsn, tmp_path)
    pool = make_pool(settings.database, "cli-test", open_wait=True)
    try:
        client = falcon.testing.TestClient(create_app(settings, pool))
        good = {"Authorization": "Basic " + base64.b64encode(b"fred:flintstone").decode()}
        assert client.simulate_get("/api/v1/clusters/", headers=good).status_code == 200
        assert client.simulate_get("/api/v1/clusters/", headers={"Authorization": f"token {token}"}).status_code == 200
        # --update changes the password; the old one stops working.
        admin(dsn, "users", "add", "fred", "--update", "--password-stdin", stdin="rubble\n")
        assert client.simulate_get("/api/v1/clusters/", headers=good).status_code == 401
    finally:
        pool.close()
    assert admin(dsn, "tokens", "create", "nobody").returncode == 1


def test_removing_a_user_with_active_clusters_needs_force_and_stops_them(dsn, tmp_path):
    admin(dsn, "users", "add", "gina", "--password-stdin", stdin="pw\n")
    settings = make_settings(dsn, tmp_path)
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        name = clusters.create_cluster(conn, settings, "gina", {})
        conn.execute("UPDATE clusters SET node = 'n9', status = 'RUNNING' WHERE name = %s", (name,))
        refused = admin(dsn, "users", "remove", "gina")
        assert refused.returncode == 1 and "active clusters" in refused.stderr
        assert admin(dsn, "users", "remove", "gina", "--force").returncode == 0
        job = conn.execute("SELECT queue FROM jobs WHERE kind = 'stop_cluster' AND cluster = %s", (name,)).fetchone()
        assert job == {"queue": "node:n9"}  # its node still stops the processes


def test_clusters_and_nodes_listing_and_admin_stop(dsn, tmp_path):
    admin(dsn, "users", "add", "hank", "--password-stdin", stdin="pw\n")
    settings = make_settings(dsn, tmp_path)
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        name = clusters.create_cluster(conn, settings, "hank", {})
        conn.execute("INSERT INTO nodes (name, host) VALUES ('n1', '10.0.0.1')")
    assert name in admin(dsn, "clusters", "list").stdout
    assert "n1" in admin(dsn, "nodes").stdout
    assert admin(dsn, "clusters", "stop", name).returncode == 0
    assert name not in admin(dsn, "clusters", "list").stdout
    assert name in admin(dsn, "clusters", "list", "--all").stdout
    assert admin(dsn, "clusters", "stop", name).returncode == 1


def test_bad_configuration_is_reported_with_its_name(dsn, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[server]\nsecret = "short"\n')
    r = subprocess.run(
        [sys.executable, "-m", "gatewayha.cli", "--config", str(bad), "migrate"],
        capture_output=True,
        text=True,
        env={**os.environ, "GATEWAYHA_DATABASE__DSN": dsn},
    )
    assert r.returncode == 2 and "server.secret" in r.stderr


def test_render_haproxy_writes_the_dashboard_token_key_into_a_file_only_root_reads(dsn, tmp_path):
    from gatewayha.dashboards import jwt_key

    out = tmp_path / "haproxy.cfg"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAYHA_")}
    env.update(GATEWAYHA_SERVER__SECRET=SECRET, GATEWAYHA_HAPROXY__MAP_DIR=str(tmp_path / "maps"))
    env.update(GATEWAYHA_HAPROXY__ADMIN_SOCKET=str(tmp_path / "admin.sock"))
    r = subprocess.run(
        [sys.executable, "-m", "gatewayha.cli", "render-haproxy", "--out", str(out)]
        + ["--bind", "127.0.0.1:8000", "--api", "127.0.0.1:8101"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert f'jwt_verify("HS256","{jwt_key(SECRET)}")' in out.read_text()
    assert out.stat().st_mode & 0o777 == 0o600


def test_reencrypt_moves_stored_keys_to_the_current_secret_after_a_rotation(dsn, tmp_path):
    """Clusters made under SECRET; the service then runs with a new secret and SECRET as a
    previous one: keys still decrypt, `reencrypt` moves them, and after it SECRET may go."""
    from gatewayha import tls

    admin(dsn, "users", "add", "ivy", "--password-stdin", stdin="pw\n")
    settings = make_settings(dsn, tmp_path)
    new = "rotated-secret-0123456789abcdef"
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        name = clusters.create_cluster(conn, settings, "ivy", {})
        before = conn.execute("SELECT tls_key_enc, token_enc FROM clusters WHERE name = %s", (name,)).fetchone()
        key_pem = tls.decrypt_key(SECRET, before["tls_key_enc"], name)

        def run(*secrets: str):
            return subprocess.run(
                [sys.executable, "-m", "gatewayha.cli", "reencrypt"],
                env={
                    **{k: v for k, v in os.environ.items() if not k.startswith("GATEWAYHA_")},
                    "GATEWAYHA_DATABASE__DSN": dsn,
                    "GATEWAYHA_SERVER__SECRET": secrets[0],
                    "GATEWAYHA_SERVER__PREVIOUS_SECRETS": " ".join(secrets[1:]),
                },
                capture_output=True,
                text=True,
                timeout=60,
            )

        # Without the old secret in the ring, nothing can be read, nothing is changed.
        lost = run(new)
        assert lost.returncode == 1 and "unreadable" in lost.stdout, lost.stdout + lost.stderr
        moved = run(new, SECRET)
        assert moved.returncode == 0, moved.stderr
        assert " 0 unreadable" in moved.stdout and "moved" in moved.stdout
        after = conn.execute("SELECT tls_key_enc, token_enc FROM clusters WHERE name = %s", (name,)).fetchone()
        assert tls.decrypt_key(new, after["tls_key_enc"], name) == key_pem
        assert tls.decrypt_token(new, after["token_enc"], name) == tls.decrypt_token(SECRET, before["token_enc"], name)
        assert not tls.needs_reencryption(new, after["tls_key_enc"], name)
        again = run(new)  # the old secret may now go: everything reads under the new one alone
        assert again.returncode == 0 and " 0 moved" in again.stdout, again.stdout
