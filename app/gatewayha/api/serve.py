"""``gatewayha-api --bind HOST:PORT [--pid-file FILE] [--wsgi granian|gunicorn]``: one API instance.

The WSGI app (``gatewayha.api.wsgi:app``) runs under granian by default (``server.wsgi``, or
``--wsgi``, which overrides it): HTTP/1.1 is parsed and the connections are kept in Rust, and
Python runs only the app, each request on a thread of a pool. Under gunicorn's gthread worker
the dispatch loop (epoll, re-registering each keep-alive connection after every request, handing
it to the thread pool) was 41 % of the API's Python time, and a constant answer served about
3,100 req/s through HAProxy on this machine; under granian, 8,500 (bench/profile.md, finding 14).
gunicorn (``gatewayha.api.serve_gunicorn``) remains a choice: the same app, and its worker
timeout instead of systemd's watchdog (granian has no hung-worker timeout).

Settings from the environment (the systemd unit's EnvironmentFile, the local stack):
GATEWAYHA_API_PROCESSES  worker processes (1; scale out with more instances instead)
GATEWAYHA_API_THREADS    request threads per process (128): a long poll (GET …?wait, up to
                         ~20 s) holds one, and in a storm of 100 creates 100 clients poll at
                         once; under granian threads are started on demand and end after 30 s idle.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Mapping
from pathlib import Path

from gatewayha.config import WSGI_SERVERS, ConfigError, load_settings

# Where this instance listens, for its worker processes (the systemd watchdog probes it).
BIND_ENV = "GATEWAYHA_API_BIND"
# A long poll ends within ~20 s; on SIGTERM in-flight requests get this long to finish.
GRACEFUL_STOP_S = 25
# How long a kept-alive connection (HAProxy's) may wait for its next request's headers.
HEADER_READ_TIMEOUT_MS = 30_000


class _IntendedThreads(logging.Filter):
    """Drops granian's start-up warning about many threads: they are meant for long polls."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Python threads" not in record.getMessage()


# granian's own lines (start, stop, worker respawns) in the app's format, on stderr.
LOG_CONFIG = {
    "filters": {"intended_threads": {"()": _IntendedThreads}},
    "formatters": {
        "generic": {"()": "logging.Formatter", "fmt": "%(asctime)s %(levelname)s granian %(message)s"},
        "access": {"()": "logging.Formatter", "fmt": "%(message)s"},
    },
    "handlers": {
        "console": {
            "formatter": "generic",
            "class": "logging.StreamHandler",
            "stream": "ext://sys.stderr",
            "filters": ["intended_threads"],
        },
        "access": {"formatter": "access", "class": "logging.StreamHandler", "stream": "ext://sys.stderr"},
    },
}


def parse_bind(bind: str) -> tuple[str, int]:
    host, sep, port = bind.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"--bind wants HOST:PORT, not {bind!r}")
    return host.strip("[]"), int(port)


def format_bind(host: str, port: int) -> str:
    """``parse_bind``'s inverse: HOST:PORT, an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def pool_size(environ: Mapping[str, str] = os.environ) -> tuple[int, int]:
    """(worker processes, request threads per process) of an instance, under either server."""
    return int(environ.get("GATEWAYHA_API_PROCESSES", "1")), int(environ.get("GATEWAYHA_API_THREADS", "128"))


def server(bind: tuple[str, int], pid_file: str | None = None, environ=os.environ):
    """The granian server for ``bind`` (host, port: ``parse_bind``'s answer)."""
    from granian import Granian
    from granian.constants import HTTPModes, Interfaces
    from granian.http import HTTP1Settings

    host, port = bind
    processes, threads = pool_size(environ)
    return Granian(
        "gatewayha.api.wsgi:app",
        address=host,
        port=port,
        interface=Interfaces.WSGI,
        workers=processes,
        blocking_threads=threads,
        http=HTTPModes.http1,
        http1_settings=HTTP1Settings(header_read_timeout=HEADER_READ_TIMEOUT_MS, keep_alive=True),
        websockets=False,
        # A worker that dies is started again; the instance (and its port) stays up.
        respawn_failed_workers=True,
        respawn_interval=1.0,
        workers_kill_timeout=GRACEFUL_STOP_S,
        pid_file=Path(pid_file) if pid_file else None,
        log_dictconfig=LOG_CONFIG,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="gatewayha-api", description=__doc__.split("\n\n")[0])
    # argparse turns parse_bind's ArgumentTypeError into a usage error (exit 2).
    parser.add_argument("--bind", required=True, type=parse_bind, help="HOST:PORT to listen on")
    parser.add_argument("--pid-file", help="write the main process's PID here")
    parser.add_argument("--wsgi", choices=WSGI_SERVERS, help="the WSGI server (default: server.wsgi, granian)")
    args = parser.parse_args(argv)
    # The workers read the settings again; a bad one stops the instance here, named, at once.
    try:
        settings = load_settings()
    except ConfigError as exc:
        parser.exit(2, f"gatewayha-api: {exc}\n")
    wsgi = args.wsgi or settings.server.wsgi
    os.environ[BIND_ENV] = format_bind(*args.bind)
    if wsgi == "gunicorn":
        from gatewayha.api.serve_gunicorn import GunicornServer

        GunicornServer(args.bind, args.pid_file, settings.server.gunicorn_timeout).serve()
    else:
        server(args.bind, args.pid_file).serve()


if __name__ == "__main__":
    main()
