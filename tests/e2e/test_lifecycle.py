"""The local stack's lifecycle: `down` after a killed process, `down && up` again, a node restart."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

from helpers import wait_until


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"  # a zombie is gone


def _free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _live(field: int, value: int) -> list[int]:
    """Live processes whose /proc/<pid>/stat ``field`` (counted after the command name: 1 is
    the parent, 2 the process group) is ``value``."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rfind(")") + 2 :].split()[field]) == value and _alive(int(d.name)):
                out.append(int(d.name))
    return out


def _group(pgid: int) -> list[int]:
    """Live processes of a process group."""
    return _live(2, pgid)


def children(pid: int) -> list[int]:
    return _live(1, pid)


def test_down_after_a_killed_api_main_process_then_down_and_up_twice(stack):
    port = stack.api_ports[0]
    main = stack.pid(f"api-{port}")
    workers = children(main)
    assert workers, "the API instance's granian worker"
    os.kill(main, signal.SIGKILL)  # the main process only: its worker lives on, holding the port
    wait_until(lambda: not _alive(main), 10, "the killed main process to go")
    assert all(_alive(w) for w in workers) and not _free(port), "the orphaned granian worker keeps the port"

    started = stack.pids() + workers
    stack.assert_down(stack.run("down", check=False), started)

    # `down && up` succeeds every time, the example (a create, which may claim a pooled
    # scheduler, scale and compute) included.
    for attempt in (1, 2):
        up = stack.run("up", check=False, GATEWAYHA_EXAMPLE="1")
        assert up.returncode == 0, f"up #{attempt}:\n{up.stdout}\n{up.stderr}"
        assert "example done" in up.stdout, up.stdout
        if attempt == 1:
            started = stack.pids()
            stack.assert_down(stack.run("down", check=False), started)
    # The stack is up again for the other tests (and the fixture's own down).


def test_gunicorn_instances_leave_with_their_main_process_switch_with_up_and_stop_with_down(tls_stack):
    """The TLS stack runs gunicorn (make up WSGI=gunicorn). A killed main process takes its worker
    with it (the worker notices within a second, finishes what it has in flight on its kept-alive
    connections for up to its graceful timeout, 25 s, and exits; granian's stays, above); `up`
    with another WSGI server restarts the instances under it; `down` stops every instance and
    every worker."""
    s = tls_stack
    port, other = s.api_ports
    main = s.pid(f"api-{port}")
    [worker] = children(main)
    os.kill(main, signal.SIGKILL)
    wait_until(lambda: not _alive(worker) and _free(port), 35, "gunicorn's worker to leave with its main process")

    up = s.run("up", check=False, GATEWAYHA_WSGI="granian")
    assert up.returncode == 0, up.stdout + up.stderr
    assert f"restarting the API instance on :{other} under granian" in up.stdout, up.stdout
    assert f"API instances (ports {port} {other}) under granian" in up.stdout
    assert [s.served_by(p) for p in s.api_ports] == ["granian", "granian"]

    up = s.run("up", check=False)  # the fixture's WSGI=gunicorn
    assert up.returncode == 0, up.stdout + up.stderr
    assert [s.served_by(p) for p in s.api_ports] == ["gunicorn", "gunicorn"]
    workers = [w for p in s.api_ports for w in children(s.pid(f"api-{p}"))]
    assert len(workers) == 2
    s.assert_down(s.run("down", check=False), s.pids() + workers)

    up = s.run("up", check=False)  # up again for the fixture's own down
    assert up.returncode == 0, up.stdout + up.stderr


def test_a_create_right_after_a_node_restart_gets_no_dead_pooled_scheduler(stack, gateway):
    """Both nodes' job runners and pooled schedulers die; the job runners start again; a create at
    once, before the workers have even reported, must not be handed a pooled scheduler that died
    (its heartbeat is not yet overdue and its node still looks alive: the claim's probe of its
    port refuses it)."""

    def ready_pool():
        with stack.db() as conn:
            return conn.execute("SELECT name, node FROM warm_pool WHERE ready_at IS NOT NULL").fetchall()

    pool = wait_until(lambda: len(ready_pool()) == 2 and ready_pool(), 90, "a ready pooled scheduler per node")
    dead = {r["name"] for r in pool}
    with stack.db() as conn:
        before = {r["name"]: r["started_at"] for r in conn.execute("SELECT name, started_at FROM nodes")}
    try:
        for n in (1, 2):
            os.kill(stack.pid(f"worker-{n}"), signal.SIGKILL)
        groups = []
        for name in dead:
            node = next(r["node"] for r in pool if r["name"] == name)
            pidfile = stack.state / f"node-{node.split('-')[1]}" / "run" / f"{name}-scheduler.pid"
            groups.append(int(pidfile.read_text().split()[0]))
            os.killpg(groups[-1], signal.SIGKILL)
        wait_until(lambda: not any(_alive(stack.pid(f"worker-{n}")) for n in (1, 2)), 10, "the workers to go")
        # Dead, not dying: a process killed a moment ago may still hold its listening socket (the
        # claim's probe would rightly take it then; seen under load).
        wait_until(lambda: not any(_group(g) for g in groups), 10, "the pooled schedulers to go")

        name = gateway.submit()  # at once: the dead entries' last heartbeats are within the timeout
        assert name not in dead
    finally:
        # The workers again (also when the test fails: the next tests need them).
        up = stack.run("up", check=False)
    assert up.returncode == 0, up.stdout + up.stderr

    def restarted():
        with stack.db() as conn:
            now = {r["name"]: r["started_at"] for r in conn.execute("SELECT name, started_at FROM nodes")}
        return all(now[n] > before[n] for n in before)

    wait_until(restarted, 30, "both workers to start a new incarnation")
    gateway.stop_cluster(name)  # it was PENDING while no worker ran; start another one now
    name = gateway.submit()
    assert name not in dead
    cluster = gateway.connect(name)
    try:
        cluster.scale(1)
        client = cluster.get_client()
        client.wait_for_workers(1, timeout=120)
        assert client.submit(lambda: 7 * 6).result() == 42
        client.close()
    finally:
        cluster.shutdown()
