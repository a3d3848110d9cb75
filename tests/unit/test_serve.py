"""gatewayha-api's command line, the server it chooses and the granian/gunicorn settings it derives."""

from __future__ import annotations

import argparse
import logging
import os
import re

import pytest

from gatewayha.api import serve


@pytest.mark.parametrize(
    "bind,expected",
    [("127.0.0.1:8101", ("127.0.0.1", 8101)), ("[::1]:8101", ("::1", 8101)), ("gw1:1", ("gw1", 1))],
)
def test_bind_is_host_and_port(bind, expected):
    assert serve.parse_bind(bind) == expected


@pytest.mark.parametrize("bind", ["8101", ":8101", "host:", "host:http", "host:0", "host:65536"])
def test_a_bad_bind_is_refused(bind):
    with pytest.raises(argparse.ArgumentTypeError):
        serve.parse_bind(bind)


def test_a_bad_bind_exits_with_usage(capsys):
    with pytest.raises(SystemExit) as info:
        serve.main(["--bind", "nowhere"])
    assert info.value.code == 2
    assert "HOST:PORT" in capsys.readouterr().err


def test_server_settings_come_from_the_environment(tmp_path):
    env = {"GATEWAYHA_API_PROCESSES": "3", "GATEWAYHA_API_THREADS": "64"}
    s = serve.server(("127.0.0.1", 8101), str(tmp_path / "api.pid"), env)
    assert (s.bind_addr, s.bind_port, s.workers, s.blocking_threads) == ("127.0.0.1", 8101, 3, 64)
    assert s.interface.value == "wsgi" and s.websockets is False and s.respawn_failed_workers
    assert s.workers_kill_timeout == serve.GRACEFUL_STOP_S and s.pid_file == tmp_path / "api.pid"
    default = serve.server(("127.0.0.1", 8101), None, {})
    assert (default.workers, default.blocking_threads, default.pid_file) == (1, 128, None)


SECRET_ENV = {"GATEWAYHA_SERVER__SECRET": "s" * 32}


@pytest.fixture
def started(monkeypatch):
    """Which server main() starts, with what, instead of starting it (settings from the environment only)."""
    from gatewayha.api import serve_gunicorn

    for key in [k for k in os.environ if k.startswith("GATEWAYHA_")]:
        monkeypatch.delenv(key)
    for key, value in SECRET_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv(serve.BIND_ENV, "")  # main() sets it: restored afterwards
    calls = []

    class Fake:
        def __init__(self, name, *args):
            calls.append((name, *args))

        def serve(self):
            calls.append("served")

    monkeypatch.setattr(serve, "server", lambda *args: Fake("granian", *args))
    monkeypatch.setattr(serve_gunicorn, "GunicornServer", lambda *args: Fake("gunicorn", *args))
    return calls


def test_granian_is_the_default(started):
    serve.main(["--bind", "127.0.0.1:8101"])
    assert started == [("granian", ("127.0.0.1", 8101), None), "served"]


def test_server_wsgi_chooses_gunicorn_with_its_timeout(started, monkeypatch):
    monkeypatch.setenv("GATEWAYHA_SERVER__WSGI", "gunicorn")
    monkeypatch.setenv("GATEWAYHA_SERVER__GUNICORN_TIMEOUT", "7")
    serve.main(["--bind", "[::1]:8101", "--pid-file", "/run/x.pid"])
    assert started == [("gunicorn", ("::1", 8101), "/run/x.pid", 7), "served"]
    assert os.environ[serve.BIND_ENV] == "[::1]:8101"


@pytest.mark.parametrize(
    "setting,flag,expected", [("gunicorn", "granian", "granian"), ("granian", "gunicorn", "gunicorn")]
)
def test_the_flag_overrides_the_setting(started, monkeypatch, setting, flag, expected):
    monkeypatch.setenv("GATEWAYHA_SERVER__WSGI", setting)
    serve.main(["--bind", "127.0.0.1:8101", "--wsgi", flag])
    assert started[0][0] == expected


def test_an_unknown_server_is_a_usage_error(started, capsys):
    with pytest.raises(SystemExit) as info:
        serve.main(["--bind", "127.0.0.1:8101", "--wsgi", "uwsgi"])
    assert info.value.code == 2 and "invalid choice: 'uwsgi'" in capsys.readouterr().err
    assert started == []


def test_a_bad_setting_stops_the_instance_before_any_server_starts(started, monkeypatch, capsys):
    monkeypatch.setenv("GATEWAYHA_SERVER__WSGI", "uwsgi")
    with pytest.raises(SystemExit) as info:
        serve.main(["--bind", "127.0.0.1:8101"])
    assert info.value.code == 2
    assert "gatewayha-api: server.wsgi: 'granian' or 'gunicorn', got 'uwsgi'" in capsys.readouterr().err
    assert started == []


def test_gunicorn_runs_gthread_with_granian_s_pool_and_timeouts(tmp_path):
    from gatewayha.api.serve_gunicorn import MAX_HEADER_BYTES, GunicornLogger, GunicornServer

    env = {"GATEWAYHA_API_PROCESSES": "3", "GATEWAYHA_API_THREADS": "64"}
    cfg = GunicornServer(("::1", 8101), str(tmp_path / "api.pid"), 9, env).cfg
    assert (cfg.bind, cfg.workers, cfg.worker_class_str, cfg.threads) == (["[::1]:8101"], 3, "gthread", 64)
    assert (cfg.timeout, cfg.graceful_timeout, cfg.keepalive) == (9, serve.GRACEFUL_STOP_S, 30)
    assert cfg.pidfile == str(tmp_path / "api.pid") and cfg.limit_request_field_size == MAX_HEADER_BYTES
    assert (cfg.accesslog, cfg.errorlog, cfg.logger_class) == (None, "-", GunicornLogger)
    assert cfg.control_socket_disable and cfg.secure_scheme_headers == {}
    assert cfg.forwarded_allow_ips == [] and cfg.forwarder_headers == []
    default = GunicornServer(("127.0.0.1", 8101), None, 30, {}).cfg
    assert (default.bind, default.workers, default.threads, default.pidfile) == (["127.0.0.1:8101"], 1, 128, None)


def test_gunicorn_lines_have_the_app_s_format():
    from gatewayha.api.serve_gunicorn import GunicornLogger

    formatter = logging.Formatter(GunicornLogger.error_fmt, GunicornLogger.datefmt)
    record = logging.LogRecord("gunicorn.error", logging.CRITICAL, "", 0, "WORKER TIMEOUT (pid:%s)", (42,), None)
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} CRITICAL gunicorn WORKER TIMEOUT \(pid:42\)", formatter.format(record)
    )
