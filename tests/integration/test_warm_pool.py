"""Which pooled schedulers a create may claim, against a real Postgres: only those known alive now."""

from __future__ import annotations

import socket

import psycopg
import pytest
from psycopg.rows import dict_row

from conftest import make_settings
from gatewayha import liveness, warm_pool
from gatewayha.backends.base import ProcessStatus
from gatewayha.db.pool import make_pool
from gatewayha.jobs import handlers

# A pooled scheduler's API port must answer a claim's probe: a listening socket plays it.
_LISTENER = socket.create_server(("127.0.0.1", 0))
MSG = {
    "scheduler_address": "tls://127.0.0.1:1",
    "dashboard_address": "http://127.0.0.1:2",
    "api_address": f"https://127.0.0.1:{_LISTENER.getsockname()[1]}",
}


@pytest.fixture
def settings(db_dsn, tmp_path):
    return make_settings(
        db_dsn,
        tmp_path,
        cluster={"warm_pool_size": 1, "heartbeat_period": 2, "heartbeat_timeout": 30, "idle_timeout": 0},
        jobs={"node_heartbeat_interval": 2},
    )


@pytest.fixture
def conn(db_dsn):
    with psycopg.connect(db_dsn, autocommit=True, row_factory=dict_row) as c:
        c.execute("DELETE FROM warm_pool; DELETE FROM nodes")
        yield c


def pooled(conn, settings, node="n1") -> str:
    """A ready, heartbeating pooled scheduler on ``node`` (whose worker just reported)."""
    liveness.report_node(conn, node, "127.0.0.1", 2)
    [entry], _ = warm_pool.plan_refill(conn, settings, node)
    assert warm_pool.record_heartbeat(conn, entry["name"], MSG)
    return entry["name"]


def claimable(conn, settings) -> str | None:
    """What a create would claim now (rolled back: the entry stays)."""
    _, cfg = warm_pool.default_config(settings)
    row = None
    with conn.transaction() as tx:
        row = warm_pool.claim(conn, settings, cfg)
        raise psycopg.Rollback(tx)
    return row and row["name"]


def test_a_pooled_scheduler_of_a_restarted_node_is_claimable_only_once_verified(conn, settings):
    name = pooled(conn, settings)
    assert claimable(conn, settings) == name
    # The node's worker starts again (its processes may have died with the last one).
    liveness.start_node(conn, "n1", "127.0.0.1", 2)
    assert warm_pool.unverified(conn, "n1") == [name]
    assert claimable(conn, settings) is None
    # Found alive by the new worker: claimable again, and not "unverified" any more.
    assert warm_pool.record_verified(conn, "n1", [name], []) == []
    assert warm_pool.unverified(conn, "n1") == []
    assert claimable(conn, settings) == name
    # A later start, and this time its process is gone: dropped.
    liveness.start_node(conn, "n1", "127.0.0.1", 2)
    assert warm_pool.record_verified(conn, "n1", [], [name]) == [name]
    assert conn.execute("SELECT count(*) AS n FROM warm_pool").fetchone()["n"] == 0


def test_entries_written_by_the_previous_release_count_from_their_creation(conn, settings):
    """Rolling upgrade: the old release never sets verified_at (NULL) nor started_at."""
    name = pooled(conn, settings)
    assert conn.execute("SELECT verified_at FROM warm_pool").fetchone()["verified_at"] is None
    assert claimable(conn, settings) == name


def test_a_pooled_scheduler_is_not_claimed_while_its_node_is_silent(conn, settings):
    name = pooled(conn, settings)
    conn.execute("UPDATE nodes SET last_seen = now() - interval '7 seconds'")  # > 3 reports missed
    assert claimable(conn, settings) is None
    liveness.report_node(conn, "n1", "127.0.0.1", 2)
    assert claimable(conn, settings) == name


def test_a_pooled_scheduler_silent_for_a_few_periods_is_not_claimed_within_the_heartbeat_timeout(conn, settings):
    name = pooled(conn, settings)
    # 3 periods of 2 s missed: well within the 30 s heartbeat timeout (not judged dead, nor
    # dropped by the refill), but no longer trusted for a create.
    conn.execute("UPDATE warm_pool SET last_heartbeat = now() - interval '7 seconds'")
    assert claimable(conn, settings) is None
    _, stopped = warm_pool.plan_refill(conn, settings, "n1")
    assert stopped == []
    assert warm_pool.record_heartbeat(conn, name, MSG)
    assert claimable(conn, settings) == name


def test_a_pooled_scheduler_of_an_earlier_release_serving_plain_http_is_not_claimed_but_replaced(conn, settings):
    """Rolling upgrade: a pooled scheduler started before this release reports an http:// control
    API, which the API never sends a token to (gatewayha.control): a cluster made of it could not
    be scaled. It is never handed out (though it answers and is fresh), and the next refill drops
    it and starts a new one."""
    name = pooled(conn, settings)
    assert claimable(conn, settings) == name
    old = {**MSG, "api_address": MSG["api_address"].replace("https://", "http://")}
    conn.execute("UPDATE warm_pool SET api_address = %s WHERE name = %s", (old["api_address"], name))
    assert warm_pool.record_heartbeat(conn, name, old)
    assert warm_pool.answers(old["api_address"])  # alive: only the scheme keeps it out
    assert claimable(conn, settings) is None
    to_start, stopped = warm_pool.plan_refill(conn, settings, "n1")
    assert stopped == [name] and len(to_start) == 1


def test_a_drained_node_hands_out_no_pooled_scheduler_and_keeps_no_pool(conn, settings):
    """gatewayha-admin nodes drain: the node's ready pooled scheduler is no longer claimable,
    its refill stops it and starts none; undrained, it is claimable and refilled again."""
    name = pooled(conn, settings)
    assert claimable(conn, settings) == name
    assert liveness.set_draining(conn, "n1", True)
    assert liveness.report_node(conn, "n1", "127.0.0.1", 2) is True  # what its worker learns
    assert claimable(conn, settings) is None
    to_start, stopped = warm_pool.plan_refill(conn, settings, "n1")
    assert (to_start, stopped) == ([], [name])
    assert liveness.set_draining(conn, "n1", False)
    assert liveness.report_node(conn, "n1", "127.0.0.1", 2) is False
    [entry], _ = warm_pool.plan_refill(conn, settings, "n1")
    assert warm_pool.record_heartbeat(conn, entry["name"], MSG)
    assert claimable(conn, settings) == entry["name"]
    assert not liveness.set_draining(conn, "no-such-node", True)


class FakeBackend:
    def __init__(self, running: set[str]):
        self.running = running
        self.stopped: list[str] = []

    node_bound = True

    def check_schedulers(self, items) -> list[ProcessStatus]:
        return [ProcessStatus(name in self.running) for name, _state in items]

    def stop_cluster(self, name: str, scheduler_state=None, worker_states=None) -> None:
        self.stopped.append(name)


def test_verify_pool_keeps_the_live_and_drops_the_dead(conn, settings):
    alive = pooled(conn, settings, "n1")
    dead = pooled(conn, settings, "n2")
    conn.execute("UPDATE warm_pool SET node = 'n1'")  # two entries of n1
    liveness.start_node(conn, "n1", "127.0.0.1", 2)
    pool = make_pool(settings.database, "test-warm-pool", open_wait=True)
    try:
        backend = FakeBackend({alive})
        ctx = handlers.Context(settings, pool, backend, "n1")
        assert handlers.verify_pool(ctx) == [dead]
        assert backend.stopped == [dead]
        assert handlers.verify_pool(ctx) == []  # nothing left to check
    finally:
        pool.close()
    assert [r["name"] for r in conn.execute("SELECT name FROM warm_pool").fetchall()] == [alive]
    assert claimable(conn, settings) == alive


def test_a_pooled_scheduler_that_does_not_answer_is_dropped_not_claimed(conn, settings):
    """Killed a moment ago: the database still says alive (fresh heartbeat, node reporting),
    but its port does not answer: the claim drops it and a second live one is taken instead."""
    dead = pooled(conn, settings)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    conn.execute("UPDATE warm_pool SET api_address = %s WHERE name = %s", (f"https://127.0.0.1:{closed}", dead))
    assert claimable(conn, settings) is None
    _, cfg = warm_pool.default_config(settings)
    with conn.transaction():
        assert warm_pool.claim(conn, settings, cfg) is None
    assert conn.execute("SELECT 1 FROM warm_pool WHERE name = %s", (dead,)).fetchone() is None
    live = pooled(conn, settings, node="n2")
    assert claimable(conn, settings) == live
