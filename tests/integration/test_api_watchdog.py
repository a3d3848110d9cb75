"""gatewayha-api under a systemd-style watchdog: its granian worker pings while it serves."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

from haproxy_fixture import free_port

from conftest import SECRET
from helpers import datagrams, real_api, wait_until


def pings(sock, seconds: float) -> int:
    return datagrams(sock, seconds).count(b"WATCHDOG=1")


def test_the_worker_pings_systemd_while_it_serves_and_not_while_it_is_stopped(db_dsn, tmp_path: Path):
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(0.1)
    env = dict(
        GATEWAYHA_DATABASE__DSN=db_dsn,
        GATEWAYHA_SERVER__SECRET=SECRET,
        GATEWAYHA_NODE__STATE_DIR=str(tmp_path / "node"),
        NOTIFY_SOCKET=str(tmp_path / "notify.sock"),
        WATCHDOG_USEC="600000",  # a ping every 0.2 s
    )
    try:
        with real_api(tmp_path, f"127.0.0.1:{free_port()}", **env) as api:
            # The first ping comes once the worker has loaded the app and answered itself.
            assert wait_until(lambda: pings(notify, 0.5) > 0, 30, "the first ping")
            assert pings(notify, 1.0) >= 3

            children = Path(f"/proc/{api.pid}/task/{api.pid}/children").read_text().split()
            assert len(children) == 1, children  # one granian worker process
            worker = int(children[0])
            os.kill(worker, signal.SIGSTOP)  # a wedged worker: nothing of it runs
            pings(notify, 0.3)  # one already sent
            assert pings(notify, 1.5) == 0
            os.kill(worker, signal.SIGCONT)
            assert pings(notify, 1.5) >= 3
    finally:
        notify.close()
    assert b"systemd watchdog: pinging every 0.2s" in (tmp_path / "api.log").read_bytes()
