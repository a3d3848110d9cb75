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


def test_migrate_leaves_the_contract_migrations_to_migrate_contract(dsn):
    """Expand-then-contract: a plain migrate (each node's, as it is upgraded) only lists them."""
    plain = admin(dsn, "migrate")
    assert plain.returncode == 0 and "contract migrations pending: 0009_drop_generation.sql" in plain.stdout
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT 1 FROM information_schema.columns WHERE column_name = 'generation'").fetchone()
    contract = admin(dsn, "migrate", "--contract")
    assert contract.returncode == 0 and "applied: contract/0009_drop_generation.sql" in contract.stdout
    assert "pending" not in contract.stdout
    with psycopg.connect(dsn) as conn:
        assert not conn.execute("SELECT 1 FROM information_schema.columns WHERE column_name = 'generation'").fetchone()
    again = admin(dsn, "migrate", "--contract")
    assert again.returncode == 0 and "applied: nothing" in again.stdout and "pending" not in again.stdout


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
    with psycopg.connect(dsn, autocommit=True) as conn:  # the scheduler's last heartbeat asked for 3
        conn.execute("UPDATE clusters SET target_workers = 3 WHERE name = %s", (name,))
    [row] = [line.split() for line in admin(dsn, "clusters", "list").stdout.splitlines() if line.startswith(name)]
    assert row[4] == "0/3", row  # WORKERS: running / target
    assert "n1" in admin(dsn, "nodes").stdout
    drained = admin(dsn, "nodes", "drain", "n1")
    assert drained.returncode == 0 and "drained" in drained.stdout
    [row] = [line.split() for line in admin(dsn, "nodes").stdout.splitlines() if line.startswith("n1 ")]
    assert row[3] == "yes", row  # the DRAINING column
    assert admin(dsn, "nodes", "undrain", "n1").returncode == 0
    assert "yes" not in [line.split()[3] for line in admin(dsn, "nodes").stdout.splitlines()[1:]]
    unknown = admin(dsn, "nodes", "drain", "nobody")
    assert unknown.returncode == 1 and "no node nobody" in unknown.stderr
    assert admin(dsn, "clusters", "stop", name).returncode == 0
    assert name not in admin(dsn, "clusters", "list").stdout
    assert name in admin(dsn, "clusters", "list", "--all").stdout
    assert admin(dsn, "clusters", "stop", name).returncode == 1


def test_clusters_end_all_records_every_active_cluster_as_ended(dsn, tmp_path):
    """What the local stack's `make down` runs once the whole gateway is stopped."""
    admin(dsn, "users", "add", "ivy", "--password-stdin", stdin="pw\n")
    settings = make_settings(dsn, tmp_path)
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        names = [clusters.create_cluster(conn, settings, "ivy", {}) for _ in range(2)]
    assert admin(dsn, "clusters", "end-all").returncode == 2  # the reason is required
    ended = admin(dsn, "clusters", "end-all", "--reason", "local stack stopped")
    assert ended.returncode == 0 and "ended" in ended.stdout
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        rows = conn.execute("SELECT status, reason FROM clusters WHERE name = ANY(%s)", (names,)).fetchall()
        assert [(r["status"], r["reason"]) for r in rows] == [("STOPPED", "local stack stopped")] * 2
        assert not conn.execute("SELECT 1 FROM clusters WHERE status IN ('PENDING', 'RUNNING', 'STOPPING')").fetchone()


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


@pytest.mark.parametrize(
    "typo, named",
    [
        ('[auth]\ntyp = "simple"\n', "typ"),  # a misspelt setting
        ("[clustr]\n", "clustr"),  # a misspelt section
        ("[cluster]\nheartbeat_timeout = 1\nheartbeat_period = 5\n", "heartbeat_timeout"),  # a bad value
        ('[cluster]\nmax_workers = "many"\n', "max_workers"),  # a wrong type
        ("[node\n", "bad.toml"),  # not TOML at all
    ],
)
def test_check_config_names_what_is_wrong_in_the_file_alone(tmp_path, typo, named):
    """What the appliance role runs on the rendered gatewayha.toml before installing it: the
    file alone is judged (GATEWAYHA_* overrides in the environment cannot hide a typo)."""
    good = '[database]\ndsn = "postgresql://u@db/gatewayha"\n[server]\nsecret = "0123456789abcdef0123"\n'
    env = {**os.environ, "GATEWAYHA_SERVER__SECRET": "an-override-that-must-not-count"}
    run = [sys.executable, "-m", "gatewayha.cli", "check-config"]
    ok = tmp_path / "ok.toml"
    ok.write_text(good)
    r = subprocess.run([*run, str(ok)], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0 and "valid" in r.stdout, r.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text(good + typo)
    r = subprocess.run([*run, str(bad)], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 1 and named in r.stderr and "Traceback" not in r.stderr, r.stderr


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
