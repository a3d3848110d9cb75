"""gatewayha-api under gunicorn: ``server.wsgi = "gunicorn"`` or ``gatewayha-api --wsgi gunicorn``.

gunicorn is used as a library: each worker process loads the same app as under granian
(``gatewayha.api.wsgi:app``, built by ``create_app``) and serves it with the gthread worker, as
many threads as granian's pool (a long poll holds one).

Liveness is gunicorn's worker timeout, not systemd's watchdog: the worker's main loop checks in
with the main process about once a second, and a worker silent for ``server.gunicorn_timeout``
seconds (stopped, the GIL never released, its loop wedged) is killed (SIGABRT, then SIGKILL) and
replaced, while the instance and its port stay up. So the unit sets no ``WatchdogSec`` for
gunicorn and nothing here needs ``WATCHDOG_USEC``. As under granian, one request thread stuck
on its own stops nothing: the pool's other threads keep serving.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from gunicorn.app.base import BaseApplication
from gunicorn.glogging import Logger

from gatewayha.api.serve import GRACEFUL_STOP_S, HEADER_READ_TIMEOUT_MS, format_bind, pool_size

# HAProxy passes a request whose headers fit its buffer (tune.bufsize, 16 kB): gunicorn takes
# any such header too (its default, 8 kB, answered a 10 kB Authorization with its own 400
# where the app answers 401 as under granian).
MAX_HEADER_BYTES = 16_384


class GunicornLogger(Logger):
    """gunicorn's own lines (start, stop, worker timeouts) in the app's format, on stderr."""

    error_fmt = "%(asctime)s %(levelname)s gunicorn %(message)s"
    datefmt = None


class GunicornServer(BaseApplication):
    """One API instance: gunicorn's main process on ``bind`` (host, port), gthread workers."""

    def __init__(
        self, bind: tuple[str, int], pid_file: str | None, timeout: int, environ: Mapping[str, str] = os.environ
    ):
        processes, threads = pool_size(environ)
        self.options = {
            "bind": [format_bind(*bind)],
            "workers": processes,
            "worker_class": "gthread",
            "threads": threads,
            "timeout": timeout,
            "graceful_timeout": GRACEFUL_STOP_S,
            "keepalive": HEADER_READ_TIMEOUT_MS // 1000,
            "limit_request_field_size": MAX_HEADER_BYTES,
            "pidfile": pid_file,
            # The app logs each request itself (api.middleware.RequestId), as under granian.
            "accesslog": None,
            "errorlog": "-",
            "loglevel": "info",
            "logger_class": GunicornLogger,
            # The environ the app sees is granian's: no peer, not even HAProxy on loopback (trusted
            # by default), sets the scheme (X-Forwarded-Proto) or SCRIPT_NAME/PATH_INFO (a prefix
            # cut off the path HAProxy routed on) through a header.
            "forwarded_allow_ips": "",
            "forwarder_headers": "",
            "secure_scheme_headers": {},
            # No control socket (~/.gunicorn/gunicorn.ctl): instances would share it, and the
            # unit's home is read-only.
            "control_socket_disable": True,
        }
        super().__init__(prog="gatewayha-api")

    def load_config(self) -> None:  # also on SIGHUP (gunicorn reloads, then replaces its workers)
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):  # in each worker process
        from gatewayha.api.wsgi import app

        return app

    def serve(self) -> None:
        self.run()
