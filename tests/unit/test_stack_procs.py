"""scripts/stack_procs.py: stops a service's session when its leader already died, and only
processes that carry the stack's marker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import alive, wait_until

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "stack_procs.py"


@pytest.fixture
def spawned():
    """Sessions started by the test: whatever is left of them is killed at the end."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def session_with_orphans(tmp_path: Path, marker: str, spawned: list[int]) -> tuple[Path, int, int]:
    """A session leader (killed -9 here) whose two children live on: one with the marker in its
    environment, one without. Returns (pidfile naming the dead leader, marked, unmarked)."""
    out = tmp_path / "children"
    key, _, value = marker.partition("=")
    leader = subprocess.Popen(
        ["bash", "-c", f'sleep 300 & a=$!; env -u {key} sleep 301 & echo "$a $!" > {out}; wait'],
        env={**os.environ, key: value},
        start_new_session=True,
    )
    marked, unmarked = map(int, wait_until(lambda: out.exists() and out.read_text().split(), 10, "the children"))
    spawned += [marked, unmarked]
    pidfile = tmp_path / "service.pid"
    pidfile.write_text(f"{leader.pid}\n")
    os.kill(leader.pid, signal.SIGKILL)
    leader.wait()
    assert alive(marked) and alive(unmarked)
    return pidfile, marked, unmarked


def test_stop_finds_the_members_of_a_session_whose_leader_died(tmp_path, spawned):
    marker = f"GATEWAYHA_LOCAL_STACK={tmp_path}"
    pidfile, marked, unmarked = session_with_orphans(tmp_path, marker, spawned)
    res = subprocess.run([sys.executable, SCRIPT, "stop", "--marker", marker, pidfile], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert not alive(marked)
    assert alive(unmarked)  # same session, no marker: not ours


def test_stop_kills_what_ignores_sigterm(tmp_path, spawned):
    marker = f"GATEWAYHA_LOCAL_STACK={tmp_path}"
    p = subprocess.Popen(
        ["bash", "-c", "trap '' TERM; while :; do sleep 0.1; done"],
        env={**os.environ, "GATEWAYHA_LOCAL_STACK": str(tmp_path)},
        start_new_session=True,
    )
    spawned.append(p.pid)
    (tmp_path / "x.pid").write_text(f"{p.pid}\n")
    t0 = time.monotonic()
    res = subprocess.run(
        [sys.executable, SCRIPT, "stop", "--timeout", "1", "--marker", marker, tmp_path / "x.pid"],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    assert p.wait(5) == -signal.SIGKILL
    assert time.monotonic() - t0 < 10
    assert "SIGKILL" in res.stderr


def test_sweep_stops_every_marked_process_and_no_other(tmp_path, spawned):
    marker = f"GATEWAYHA_LOCAL_STACK={tmp_path}"
    _, marked, unmarked = session_with_orphans(tmp_path, marker, spawned)
    other = f"GATEWAYHA_LOCAL_STACK={tmp_path}-other"  # another stack's marker
    p = subprocess.Popen(["sleep", "302"], env={**os.environ, "GATEWAYHA_LOCAL_STACK": f"{tmp_path}-other"})
    spawned.append(p.pid)
    res = subprocess.run([sys.executable, SCRIPT, "sweep", "--marker", marker], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert not alive(marked)
    assert alive(unmarked) and alive(p.pid), other
    assert f"stopping {marked}" in res.stderr
