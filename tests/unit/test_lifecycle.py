"""The cluster lifecycle's table: every transition it does not list is refused, and nothing
outside gatewayha.lifecycle spells a status (issue 14's `git grep`, as a test)."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

from gatewayha import lifecycle
from gatewayha.errors import Conflict
from gatewayha.lifecycle import (
    CLUSTER_TRANSITIONS,
    WORKER_TRANSITIONS,
    ClusterStatus,
    IllegalTransition,
    WorkerStatus,
    check_cluster,
    check_worker,
)

C, W = ClusterStatus, WorkerStatus

CLUSTER_ALLOWED = {
    (C.PENDING, C.RUNNING),  # first heartbeat (or a pooled scheduler handed out)
    (C.PENDING, C.STOPPING),  # stop of a placed cluster
    (C.PENDING, C.STOPPED),  # stop before any node placed it
    (C.PENDING, C.FAILED),  # failed before placement, or its node was lost
    (C.RUNNING, C.STOPPING),
    (C.RUNNING, C.FAILED),  # its node was lost
    (C.STOPPING, C.STOPPED),
    (C.STOPPING, C.FAILED),
}
WORKER_ALLOWED = {
    (W.PENDING, W.RUNNING),
    (W.PENDING, W.STOPPING),
    (W.PENDING, W.STOPPED),
    (W.PENDING, W.FAILED),  # its backend (not node-bound) reported the process gone
    (W.RUNNING, W.STOPPING),
    (W.RUNNING, W.STOPPED),
    (W.RUNNING, W.FAILED),
    (W.STOPPING, W.STOPPED),
}


def test_the_tables_allow_exactly_the_documented_transitions():
    assert {(a, b) for a, bs in CLUSTER_TRANSITIONS.items() for b in bs} == CLUSTER_ALLOWED
    assert {(a, b) for a, bs in WORKER_TRANSITIONS.items() for b in bs} == WORKER_ALLOWED


@pytest.mark.parametrize("current, new", sorted(CLUSTER_ALLOWED))
def test_an_allowed_cluster_transition_passes(current, new):
    check_cluster(current, new)
    check_cluster(str(current), str(new))  # as read from a row


@pytest.mark.parametrize("current, new", sorted(set(itertools.product(ClusterStatus, repeat=2)) - CLUSTER_ALLOWED))
def test_an_illegal_cluster_transition_is_refused(current, new):
    with pytest.raises(IllegalTransition, match=f"from {current} to {new}"):
        check_cluster(current, new)


@pytest.mark.parametrize("current, new", sorted(set(itertools.product(WorkerStatus, repeat=2)) - WORKER_ALLOWED))
def test_an_illegal_worker_transition_is_refused(current, new):
    with pytest.raises(IllegalTransition):
        check_worker(current, new)


@pytest.mark.parametrize("current, new", [("RUNNING", "GONE"), ("LOST", "RUNNING"), ("running", "STOPPING")])
def test_an_unknown_status_is_refused_not_a_crash(current, new):
    with pytest.raises(IllegalTransition):
        check_cluster(current, new)


def test_an_illegal_transition_is_a_conflict_for_the_api():
    assert issubclass(IllegalTransition, Conflict)


def test_sources_are_read_from_the_table():
    assert lifecycle.cluster_sources(C.RUNNING) == ["PENDING"]
    assert lifecycle.cluster_sources(C.FAILED) == ["PENDING", "RUNNING", "STOPPING"]
    assert lifecycle.worker_sources(W.STOPPED) == ["PENDING", "RUNNING", "STOPPING"]
    assert lifecycle.cluster_sources(C.PENDING) == []


def test_groups_and_stop_targets():
    assert lifecycle.ACTIVE == (C.PENDING, C.RUNNING, C.STOPPING)
    assert set(lifecycle.ACTIVE).isdisjoint(lifecycle.ENDED)
    assert set(lifecycle.STOP_TARGETS) == {C.STOPPED, C.FAILED}
    assert lifecycle.stop_target(failed=True) == C.FAILED
    assert lifecycle.stop_target(failed=False) == C.STOPPED
    # A final status leads nowhere.
    assert all(not CLUSTER_TRANSITIONS[s] for s in lifecycle.ENDED)


def test_every_lifecycle_query_is_a_named_sql_file_that_exists():
    from gatewayha.lifecycle import store

    source = Path(store.__file__).read_text()
    used = set(re.findall(r'sql\("([a-z_]+)"\)', source))
    shipped = {p.stem for p in (Path(store.__file__).parent / "sql").glob("*.sql")}
    assert used and used == shipped


APP = Path(lifecycle.__file__).resolve().parents[1]
STATUS_LITERAL = re.compile(r"""['"](PENDING|RUNNING|STOPPING|STOPPED|FAILED)['"]""")


def _status_literals(root: Path) -> list[str]:
    found = []
    for path in sorted(root.rglob("*")):
        if path.suffix not in (".py", ".sql") or not path.is_file():
            continue
        rel = path.relative_to(root).as_posix()
        if rel.startswith(("lifecycle/", "db/migrations/")) or rel == "backends/slurm.py":
            # The lifecycle itself, the schema's history (its CHECK constraints), and Slurm's
            # job states (PENDING, RUNNING, FAILED are Slurm's words there, not a cluster's).
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if STATUS_LITERAL.search(line):
                found.append(f"{rel}:{n}: {line.strip()}")
    return found


def test_no_status_literal_outside_the_lifecycle_package():
    found = _status_literals(APP)
    assert not found, "statuses are gatewayha.lifecycle's names, bound as parameters:\n" + "\n".join(found)


def test_the_literal_check_finds_a_status_literal(tmp_path):
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "x.py").write_text("conn.execute(\"UPDATE clusters SET status = 'FAILED'\")\n")
    (tmp_path / "lifecycle").mkdir()
    (tmp_path / "lifecycle" / "ok.py").write_text('RUNNING = "RUNNING"\n')
    assert _status_literals(tmp_path) == ["jobs/x.py:1: conn.execute(\"UPDATE clusters SET status = 'FAILED'\")"]


def test_each_stop_reason_says_why_and_whether_it_is_a_failure():
    r = lifecycle.reasons
    assert (str(r.by_owner("carol")), r.by_owner("carol").target) == ("Shut down by user carol", C.STOPPED)
    assert r.BY_SCHEDULER.target == r.BY_ADMINISTRATOR.target == C.STOPPED
    assert r.owner_removed("bob").text == "owner bob removed by an administrator"
    assert (r.max_lifetime(3600).text, r.max_lifetime(3600).failed) == ("reached the maximum lifetime of 3600 s", False)
    failures = [r.no_heartbeat(12), r.did_not_start(30), r.never_placed(600), r.node_lost("n1", 4.5)]
    assert [f.text for f in failures] == [
        "no heartbeat for 12 s",
        "did not start within 30 s",
        "no node could start it within 600 s",
        "node n1 lost (unseen for 4.5 s)",
    ]
    assert all(f.target == C.FAILED for f in failures)
