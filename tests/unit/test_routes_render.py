"""Rendering of haproxy.cfg and the route maps, validation, atomic writes, and the runtime
client's parsing — no HAProxy process needed (``haproxy -c`` only checks a file)."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import jinja2
import pytest

from gatewayha.files import write_atomic
from gatewayha.routes import (
    HAProxyRuntime,
    MapEntry,
    RuntimeAPIError,
    default_template_path,
    ensure_map_files,
    render_haproxy_cfg,
    render_map,
    sync_maps,
)
from gatewayha.routes.render import map_paths, validate_address, validate_route_address

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
needs_haproxy = pytest.mark.skipif(not os.path.exists(HAPROXY), reason="haproxy is not installed")

NAME = "0123456789abcdef0123456789abcdef"


def params(tmp_path: Path, **overrides):
    ensure_map_files(tmp_path / "maps")
    return {
        "bind": "127.0.0.1:8000",
        "abns_name": "gatewayha-unit",
        "map_dir": str(tmp_path / "maps"),
        "admin_socket": str(tmp_path / "admin.sock"),
        "api_servers": [
            {"name": "node1-8101", "address": "10.0.0.1:8101"},
            {"name": "node2-8101", "address": "localhost:8101"},
        ],
        "maxconn": 4096,
        "dashboard_jwt_key": "ab" * 32,
        **overrides,
    }


def haproxy_check(tmp_path: Path, cfg: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "haproxy.cfg"
    path.write_text(cfg)
    return subprocess.run([HAPROXY, "-c", "-f", str(path)], check=False, capture_output=True, text=True, timeout=30)


def test_default_template_path_is_the_repository_template():
    path = default_template_path()
    assert path.is_file()
    assert path.parts[-2:] == ("haproxy", "haproxy.cfg.j2")


@needs_haproxy
def test_rendered_config_passes_haproxy_check(tmp_path: Path):
    result = haproxy_check(tmp_path, render_haproxy_cfg(default_template_path(), **params(tmp_path)))

    assert result.returncode == 0, result.stdout + result.stderr
    assert "Configuration file is valid" in result.stdout
    assert "WARNING" not in result.stdout + result.stderr


@needs_haproxy
def test_rendered_config_with_every_option_passes_haproxy_check(tmp_path: Path):
    cfg = render_haproxy_cfg(
        default_template_path(),
        **params(
            tmp_path,
            bind=["127.0.0.1:8000", "127.0.0.2:8000"],
            api_servers=[],
            pidfile=str(tmp_path / "haproxy.pid"),
            log="stdout format raw local0",
            global_extra=["nbthread 2"],
            hard_stop_after="5m",
            timeout_tunnel="2h",
            api_check_inter="500ms",
            api_check_fall=3,
            api_check_rise=1,
        ),
    )
    result = haproxy_check(tmp_path, cfg)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stdout + result.stderr
    assert "bind 127.0.0.2:8000" in cfg
    assert "nbthread 2" in cfg
    assert "hard-stop-after 5m" in cfg


@needs_haproxy
def test_unresolvable_api_server_does_not_stop_haproxy_from_starting(tmp_path: Path):
    servers = [{"name": "gone", "address": "gatewayha-no-such-node.invalid:8101"}]
    cfg = render_haproxy_cfg(default_template_path(), **params(tmp_path, api_servers=servers))

    result = haproxy_check(tmp_path, cfg)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "disabling server" in result.stdout + result.stderr


def test_rendered_config_carries_the_routing_contract(tmp_path: Path):
    cfg = render_haproxy_cfg(default_template_path(), **params(tmp_path))
    maps = tmp_path / "maps"

    for line in (
        f"map({maps}/sni.map)",
        f"map({maps}/dash.map)",
        "bind abns@gatewayha-unit accept-proxy",
        "server http_internal abns@gatewayha-unit send-proxy-v2",
        f"stats socket {tmp_path}/admin.sock mode 600 level admin expose-fd listeners",
        "option httpchk GET /api/health",
        "http-check expect status 200",
        "retry-on conn-failure",
        "option redispatch",
        "retries 2",
        "timeout tunnel 1h",
        "hard-stop-after",
        "http-request set-header X-Request-ID %[unique-id] unless { req.hdr(X-Request-ID) -m found }",
        "http-error status 503 content-type application/json",
        "server node1-8101 10.0.0.1:8101",
        "server node2-8101 localhost:8101",
    ):
        assert line in cfg
    assert "daemon" not in cfg  # the service manager chooses foreground (-Ws) or not


def test_optional_variables_may_be_empty(tmp_path: Path):
    cfg = render_haproxy_cfg(default_template_path(), **params(tmp_path, pidfile="", log="", global_extra=[]))

    assert "pidfile" not in cfg
    assert "log " not in cfg


def test_template_documents_its_variables():
    header = default_template_path().read_text().split("-#}")[0]
    for name in ("bind", "abns_name", "map_dir", "admin_socket", "api_servers", "maxconn", "pidfile", "log"):
        assert f"    {name} " in header, name
    assert "global_extra" in header


def test_missing_variable_is_an_error(tmp_path: Path):
    incomplete = params(tmp_path)
    del incomplete["abns_name"]

    with pytest.raises(jinja2.UndefinedError):
        render_haproxy_cfg(default_template_path(), **incomplete)


def test_map_dir_is_normalised_so_runtime_and_config_name_maps_alike(tmp_path: Path):
    cfg = render_haproxy_cfg(default_template_path(), **params(tmp_path, map_dir=f"{tmp_path}//maps/"))

    assert f"map({map_paths(tmp_path / 'maps')[0]})" in cfg


@pytest.mark.parametrize(
    "overrides",
    [
        {"map_dir": "relative/maps"},
        {"abns_name": "two words"},
        {"admin_socket": "/run/x.sock mode 666"},
        {"bind": ["127.0.0.1:8000", "127.0.0.1:8001 ssl crt /x"]},
        {"api_servers": [{"name": "a b", "address": "10.0.0.1:8101"}]},
        {
            "api_servers": [
                {"name": "a", "address": "10.0.0.1:8101"},
                {"name": "a", "address": "10.0.0.2:8101"},
            ]
        },
        {"api_servers": [{"name": "a", "address": "10.0.0.1"}]},
    ],
    ids=[
        "relative-map-dir",
        "abns-space",
        "socket-injection",
        "bind-injection",
        "server-name",
        "dup",
        "no-port",
    ],
)
def test_bad_config_parameters_are_refused(tmp_path: Path, overrides):
    with pytest.raises(ValueError):
        render_haproxy_cfg(default_template_path(), **params(tmp_path, **overrides))


def test_render_map_writes_sorted_key_value_lines():
    other = "f" * 32
    entries = {f"daskgateway-{other}": "10.0.0.2:40000", f"daskgateway-{NAME}": "10.0.0.1:40001"}

    assert render_map(entries, "sni") == (f"daskgateway-{NAME} 10.0.0.1:40001\ndaskgateway-{other} 10.0.0.2:40000\n")
    assert render_map({}, "dash") == ""


@pytest.mark.parametrize(
    ("kind", "key"),
    [
        ("sni", NAME),
        ("sni", f"daskgateway-{NAME.upper()}"),
        ("sni", f"daskgateway-{NAME}0"),
        ("sni", f"daskgateway-{NAME}\n"),
        ("dash", f"daskgateway-{NAME}"),
        ("dash", NAME[:31]),
        ("dash", "../../etc/passwd"),
        (None, "anything"),
    ],
)
def test_render_map_refuses_keys_that_are_not_cluster_routes(kind, key):
    with pytest.raises(ValueError, match="invalid"):
        render_map({key: "10.0.0.1:8786"}, kind)


@pytest.mark.parametrize(
    "value",
    [
        "10.0.0.1",
        "10.0.0.1:",
        ":8786",
        "10.0.0.1:0",
        "10.0.0.1:65536",
        "10.0.0.1:08786",
        "10.0.0.256:8786",
        "10.0.0.1:8786 x",
        "10.0.0.1:8786\n",
        "[::1]:8786",
        "host_name:80",
        "0.0.0.0:8786",
        "scheduler-1:8786",
        8786,
    ],
)
def test_route_targets_must_be_ipv4_and_port(value):
    with pytest.raises(ValueError, match="invalid"):
        render_map({NAME: value}, "dash")


def test_valid_route_targets_are_accepted():
    for value in ("10.0.0.1:1", "127.0.0.1:65535", "192.168.255.254:8786"):
        assert validate_route_address(value) == value


def test_api_server_addresses_may_be_hostnames():
    assert validate_address("gw-node-2.example:8101") == "gw-node-2.example:8101"
    with pytest.raises(ValueError):
        validate_address("-bad-.example:8101")


def test_write_atomic_creates_replaces_and_skips_unchanged(tmp_path: Path):
    target = tmp_path / "sni.map"

    assert write_atomic(target, "a 1\n") is True
    first = os.stat(target)
    assert stat.S_IMODE(first.st_mode) == 0o644
    assert write_atomic(target, "a 1\n") is False
    assert os.stat(target) == first
    assert write_atomic(target, "b 2\n") is True
    assert os.stat(target).st_ino != first.st_ino
    assert target.read_text() == "b 2\n"
    assert [p.name for p in tmp_path.iterdir()] == ["sni.map"]


def test_write_atomic_leaves_no_temp_file_on_failure(tmp_path: Path):
    target = tmp_path / "sni.map"
    target.mkdir()  # os.replace onto a directory fails

    with pytest.raises(OSError):
        write_atomic(target, "a 1\n")
    assert [p.name for p in tmp_path.iterdir()] == ["sni.map"]


def test_ensure_map_files_creates_empty_maps_and_keeps_existing(tmp_path: Path):
    maps = tmp_path / "run" / "maps"
    ensure_map_files(maps)
    assert {p.name: p.read_text() for p in maps.iterdir()} == {"sni.map": "", "dash.map": ""}

    (maps / "sni.map").write_text(f"daskgateway-{NAME} 10.0.0.1:8786\n")
    ensure_map_files(maps)
    assert (maps / "sni.map").read_text() == f"daskgateway-{NAME} 10.0.0.1:8786\n"


def test_sync_maps_without_runtime_writes_only_files(tmp_path: Path):
    sni = {f"daskgateway-{NAME}": "10.0.0.1:8786"}
    dash = {NAME: "10.0.0.1:8787"}

    counts = sync_maps(None, tmp_path, sni, dash)

    assert counts == {"added": 0, "changed": 0, "removed": 0, "files_changed": 2}
    assert (tmp_path / "sni.map").read_text() == render_map(sni)
    assert (tmp_path / "dash.map").read_text() == render_map(dash)
    assert sync_maps(None, tmp_path, sni, dash)["files_changed"] == 0


def test_sync_maps_validates_everything_before_writing_anything(tmp_path: Path):
    good = {f"daskgateway-{NAME}": "10.0.0.1:8786"}

    with pytest.raises(ValueError):
        sync_maps(None, tmp_path, good, {"not-a-name": "10.0.0.1:8787"})
    assert list(tmp_path.iterdir()) == []


class FakeAdminSocket:
    """A UNIX socket that reads one command per connection, answers it and closes, like
    HAProxy's admin socket in non-interactive mode."""

    def __init__(self, path: Path, respond: bytes | Callable[[bytes], bytes]) -> None:
        self.respond = respond if callable(respond) else (lambda _command: respond)
        self.received: list[bytes] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while not data.endswith(b"\n\n" if b"<<\n" in data else b"\n"):
                    data += conn.recv(65536)
                self.received.append(data)
                conn.sendall(self.respond(data))

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(timeout=5)


@pytest.fixture
def fake_admin(tmp_path: Path):
    servers = []

    def start(respond: bytes | Callable[[bytes], bytes]) -> tuple[HAProxyRuntime, FakeAdminSocket]:
        path = tmp_path / f"admin-{len(servers)}.sock"
        servers.append(FakeAdminSocket(path, respond))
        return HAProxyRuntime(path), servers[-1]

    yield start
    for server in servers:
        server.close()


def test_show_map_parses_entries_and_keeps_duplicates(fake_admin):
    key = f"daskgateway-{NAME}"
    rt, server = fake_admin(f"0x1 {key} 10.0.0.1:1\n0x2 {key} 10.0.0.1:2\n\n".encode())

    assert rt.map_entries("/run/maps/sni.map") == [
        MapEntry("0x1", key, "10.0.0.1:1"),
        MapEntry("0x2", key, "10.0.0.1:2"),
    ]
    assert server.received == [b"show map /run/maps/sni.map\n"]


def test_error_answer_raises_runtime_api_error(fake_admin):
    rt, _ = fake_admin(b"Unknown map identifier. Please use #<id> or <file>.\n\n")

    with pytest.raises(RuntimeAPIError, match="Unknown map identifier"):
        rt.show_map("/run/maps/sni.map")
    with pytest.raises(RuntimeAPIError, match="Unknown map identifier"):
        rt.add_map("/run/maps/sni.map", f"daskgateway-{NAME}", "10.0.0.1:1")


def test_no_answer_is_an_error_not_success(fake_admin):
    # HAProxy closes without a word when a payload overflows its buffer.
    rt, _ = fake_admin(b"")

    with pytest.raises(RuntimeAPIError, match="no answer"):
        rt.del_map("/run/maps/sni.map", f"daskgateway-{NAME}")


@pytest.mark.parametrize(
    ("key", "value"),
    [("a b", "1"), ("a;show info", "1"), ("a", "1\nclear map /x"), ("#0x1", "1"), ("@1", "1"), ("", "1")],
)
def test_runtime_refuses_arguments_that_could_inject_commands(fake_admin, key, value):
    rt, server = fake_admin(b"\n")

    with pytest.raises(ValueError, match="unsafe"):
        rt.add_map("/run/maps/sni.map", key, value)
    assert server.received == []


def test_runtime_names_maps_by_absolute_path(fake_admin):
    rt, _ = fake_admin(b"\n")

    with pytest.raises(ValueError, match="absolute"):
        rt.show_map("maps/sni.map")


def test_replace_map_prepares_fills_in_chunks_and_commits(fake_admin):
    def respond(command: bytes) -> bytes:
        return b"New version created: 7\n\n" if command.startswith(b"prepare") else b"\n"

    rt, server = fake_admin(respond)
    entries = {f"daskgateway-{uuid.uuid4().hex}": "10.0.0.1:8786" for _ in range(400)}

    rt.replace_map("/run/maps/sni.map", entries)

    sent = [r.decode() for r in server.received]
    assert sent[0] == "prepare map /run/maps/sni.map\n"
    assert sent[-1] == "commit map @7 /run/maps/sni.map\n"
    payloads = sent[1:-1]
    assert len(payloads) > 1
    assert all(p.startswith("add map @7 /run/maps/sni.map <<\n") and p.endswith("\n\n") for p in payloads)
    assert all(len(p) < 16384 for p in payloads)
    lines = [line for p in payloads for line in p.splitlines()[1:] if line]
    assert dict(line.split(" ") for line in lines) == entries


@needs_haproxy
def test_https_config_passes_haproxy_check_and_keeps_health_plain(tmp_path: Path):
    from gatewayha import pki

    crt = pki.ensure(tmp_path / "tls", ["127.0.0.1"]).server_pem
    cfg = render_haproxy_cfg(
        default_template_path(),
        **params(tmp_path, tls_crt=str(crt), limit_exempt=["10.0.0.0/8"], limit_http_rate=10, hsts_max_age=60),
    )
    result = haproxy_check(tmp_path, cfg)

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"ssl crt {crt}" in cfg
    assert "redirect scheme https code 308 if !{ ssl_fc } !{ path /api/health }" in cfg
    assert 'Strict-Transport-Security "max-age=60"' in cfg
    assert "acl limit_exempt src 127.0.0.1 ::1 10.0.0.0/8" in cfg
    assert "sc_http_req_rate(1) gt 10" in cfg


def test_plain_config_has_no_tls_and_no_redirect(tmp_path: Path):
    cfg = render_haproxy_cfg(default_template_path(), **params(tmp_path))
    rules = "\n".join(line for line in cfg.splitlines() if not line.lstrip().startswith("#"))
    assert "ssl crt" not in rules and "redirect" not in rules and "Strict-Transport-Security" not in rules
    assert "be_https_chain" not in rules


@pytest.mark.parametrize(
    "overrides",
    [
        {"tls_crt": "/etc/a b.pem"},
        {"limit_exempt": ["not-a-network"]},
        {"limit_http_rate": -1},
        {"limit_conn_cur": "10; reject"},
        {"hsts_max_age": True},
    ],
)
def test_bad_tls_and_limit_parameters_are_refused(tmp_path: Path, overrides):
    with pytest.raises(ValueError):
        render_haproxy_cfg(default_template_path(), **params(tmp_path, **overrides))
