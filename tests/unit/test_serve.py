"""gatewayha-api's command line and the granian settings it derives from the environment."""

from __future__ import annotations

import argparse

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
