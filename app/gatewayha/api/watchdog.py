"""systemd's watchdog for an API instance: granian has no hung-worker timeout of its own.

Under systemd with ``WatchdogSec=`` (it sets WATCHDOG_USEC and NOTIFY_SOCKET; the unit says
``NotifyAccess=all`` so that granian's worker process, a child, may answer), a thread in the
worker asks its own instance for ``/api/version`` over loopback every third of the period
and sends ``WATCHDOG=1`` for each answer. An instance that no longer serves (every request
thread stuck, the GIL never released, the HTTP side wedged) stops the pings; systemd then
kills and restarts it, as gunicorn's worker timeout did. ``/api/version`` reads no database:
a Postgres outage (503s, recovered by itself) must not restart every instance.

Outside systemd (the local stack, tests without those variables) nothing is started.
"""

from __future__ import annotations

import argparse
import http.client
import logging
import os
import socket
import threading
import time
from collections.abc import Mapping

from gatewayha.api.serve import BIND_ENV, parse_bind

log = logging.getLogger("gatewayha.api")

# A wildcard bind is probed on loopback.
_LOOPBACK = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}


def notify(socket_path: str, message: bytes) -> None:
    """sd_notify(3): one datagram to systemd's socket (``@…`` is in the abstract namespace)."""
    address = "\0" + socket_path[1:] if socket_path.startswith("@") else socket_path
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.sendto(message, address)


def serving(host: str, port: int, timeout: float) -> bool:
    """Whether the instance answers ``GET /api/version`` with 200 within ``timeout``."""
    conn = http.client.HTTPConnection(_LOOPBACK.get(host, host), port, timeout=timeout)
    try:
        conn.request("GET", "/api/version")
        response = conn.getresponse()
        response.read()
        return response.status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def start(environ: Mapping[str, str] = os.environ, stop: threading.Event | None = None) -> threading.Thread | None:
    """Start the pinging thread if systemd asked for a watchdog; return it (or None). It runs
    until ``stop`` is set (the process's life, without one)."""
    socket_path, usec, bind = environ.get("NOTIFY_SOCKET"), environ.get("WATCHDOG_USEC"), environ.get(BIND_ENV)
    if not socket_path or not usec or not bind:
        return None
    try:
        period = int(usec) / 1e6
        host, port = parse_bind(bind)
    except (ValueError, argparse.ArgumentTypeError) as exc:
        log.warning("systemd watchdog not started: %s", exc)
        return None
    if period <= 0:
        return None
    every = period / 3
    stop = stop or threading.Event()

    def run() -> None:
        while not stop.is_set():
            started = time.monotonic()
            if serving(host, port, timeout=every):
                try:
                    notify(socket_path, b"WATCHDOG=1")
                except OSError as exc:
                    log.warning("systemd watchdog: cannot notify %s: %s", socket_path, exc)
            else:
                log.warning("systemd watchdog: %s:%s did not answer /api/version; no ping", host, port)
            stop.wait(max(0.0, every - (time.monotonic() - started)))

    thread = threading.Thread(target=run, name="systemd-watchdog", daemon=True)
    thread.start()
    log.info("systemd watchdog: pinging every %.1fs while %s:%s answers", every, host, port)
    return thread
