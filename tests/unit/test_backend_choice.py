"""``[backend]``: which backend runs Dask (gatewayha.backends.backend_class), and the batched
check of the systemd launcher."""

from __future__ import annotations

import pytest

from conftest import make_settings
from gatewayha.backends import backend_class, get_backend, node_bound
from gatewayha.backends.launcher import SystemdLauncher
from gatewayha.backends.local import LocalBackend
from gatewayha.errors import ConfigError


def test_local_is_the_default_and_is_node_bound(tmp_path):
    settings = make_settings("postgresql://unused/x", tmp_path, node={"launcher": "process", "isolation": "none"})
    assert settings.backend.name == "local"
    assert type(get_backend(settings)) is LocalBackend
    assert node_bound(settings) is True


def test_a_plugin_is_named_module_colon_class(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "site_backend.py").write_text(
        "from gatewayha.backends.local import LocalBackend\n"
        "class Elsewhere(LocalBackend):\n    node_bound = False\n"
        "class NotABackend:\n    pass\n"
    )
    settings = make_settings(
        "postgresql://unused/x",
        tmp_path,
        backend={"name": "site_backend:Elsewhere"},
        node={"launcher": "process", "isolation": "none"},
    )
    assert backend_class(settings.backend).__name__ == "Elsewhere"
    assert get_backend(settings).node_bound is False and node_bound(settings) is False
    with pytest.raises(ConfigError, match="not a gatewayha.backends.base.Backend subclass"):
        make_settings("postgresql://unused/x", tmp_path, backend={"name": "site_backend:NotABackend"})


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("kubernetes", "one of 'local', 'slurm' or 'package.module:Class', got 'kubernetes'"),
        ("", "got ''"),
        ("site_backend:", "got 'site_backend:'"),
        (":Cls", "got ':Cls'"),
        ("no_such_module_here:Backend", "cannot load 'no_such_module_here:Backend'"),
        ("gatewayha.backends.local:NoSuchClass", "cannot load"),
        ("..relative:Cls", "cannot load"),
        ("gatewayha.backends.local:LocalBackend()", "got"),
    ],
)
def test_an_unknown_backend_is_a_clear_config_error(tmp_path, name, message):
    with pytest.raises(ConfigError, match="backend.name: .*" + message.replace("(", r"\(").replace(")", r"\)")):
        make_settings("postgresql://unused/x", tmp_path, backend={"name": name})


def test_the_systemd_launcher_checks_many_units_with_one_systemctl_call(tmp_path):
    calls = tmp_path / "calls"
    systemctl = tmp_path / "systemctl"
    # is-active prints one state per unit, in order, and exits non-zero when any is not active.
    systemctl.write_text(
        f'#!/bin/sh\necho "$@" >> {calls}\nshift 2\n'
        'for u; do case "$u" in *b-scheduler*) echo inactive;; *c-scheduler*) echo failed;;'
        " *) echo active;; esac; done\n"
        "exit 3\n"
    )
    systemctl.chmod(0o755)
    launcher = SystemdLauncher(systemctl=str(systemctl))
    units = [f"{c * 32}-scheduler" for c in "abcd"]
    assert launcher.running_many(units) == [True, False, False, True]
    assert launcher.running_many([]) == []
    assert len(calls.read_text().splitlines()) == 1
