"""Settings, option validation, credentials and TLS: pure functions, no services."""

from __future__ import annotations

import logging
import ssl
import time

import pytest
from cryptography import x509

from gatewayha import tls
from gatewayha.auth import secrets as sec
from gatewayha.config import ConfigError, OptionSpec, load_settings
from gatewayha.options import OptionError, cluster_config, options_spec, validate_options

BASE = {"GATEWAYHA_SERVER__SECRET": "s" * 32}


def settings_from(tmp_path, text, env=None):
    p = tmp_path / "c.toml"
    p.write_text(text)
    return load_settings(p, {**BASE, **(env or {})})


def test_environment_overrides_the_file_with_the_fields_type(tmp_path):
    s = settings_from(
        tmp_path,
        "[worker]\nconcurrency = 2\n",
        {"GATEWAYHA_WORKER__CONCURRENCY": "7", "GATEWAYHA_NODE__NAME": "gw2"},
    )
    assert s.jobs.concurrency == 7 and s.node.name == "gw2"


@pytest.mark.parametrize(
    "text,env,where",
    [
        ("[worker]\nconcurrency = 'x'\n", {}, "worker.concurrency"),
        ("[worker]\nbogus = 1\n", {}, "worker.bogus"),
        ("[nonsense]\n", {}, "nonsense"),
        ("", {"GATEWAYHA_WORKER__LEASE_SECONDS": "soon"}, "worker.lease_seconds"),
        ("", {"GATEWAYHA_SERVER__SECRET": "short"}, "server.secret"),
        ("[auth]\ntype = 'ldap'\n", {}, "auth.type"),
        ("[auth]\ntype = 'simple'\n", {}, "auth.simple_password"),
        ("[node]\nhost = 'gw1.example'\n", {}, "node.host"),
        ("", {"GATEWAYHA_NODE__HOST": "127.0.0.1\n"}, "node.host"),
        ("", {"GATEWAYHA_NODE__HOST": "127.0.0.\u0661"}, "node.host"),
        ("[node]\nname = 'a b'\n", {}, "node.name"),
        ("[node]\ndask_nice = 20\n", {}, "node.dask_nice"),
        ("", {"GATEWAYHA_NODE__DASK_NICE": "-1"}, "node.dask_nice"),
        ("[[cluster_options]]\nfield = 'x'\ntype = 'complex'\ndefault = 1\n", {}, "cluster_options[0].type"),
        (
            "[[cluster_options]]\nfield = 'x'\ntype = 'int'\ndefault = 9\nmax = 4\n",
            {},
            "cluster_options[0].default",
        ),
        (
            "[[cluster_options]]\nfield = 'q'\ntype = 'select'\ndefault = 'a'\n",
            {},
            "cluster_options[0].options",
        ),
        ("[cluster]\nheartbeat_period = 30\nheartbeat_timeout = 10\n", {}, "heartbeat_timeout"),
        ("not toml = = =", {}, "c.toml"),
        ("[server]\nwsgi = 'uwsgi'\n", {}, "server.wsgi: 'granian' or 'gunicorn', got 'uwsgi'"),
        ("", {"GATEWAYHA_SERVER__WSGI": "Gunicorn"}, "server.wsgi"),
        ("", {"GATEWAYHA_SERVER__GUNICORN_TIMEOUT": "1"}, "server.gunicorn_timeout: 2 to 3600 seconds, got 1"),
        ("[server]\ngunicorn_timeout = 2.5\n", {}, "server.gunicorn_timeout"),
    ],
)
def test_bad_settings_are_named_in_the_error(tmp_path, text, env, where):
    with pytest.raises(ConfigError) as info:
        settings_from(tmp_path, text, env)
    assert where in str(info.value)


def test_the_wsgi_server_is_granian_unless_set(tmp_path):
    assert settings_from(tmp_path, "").server.wsgi == "granian"
    s = settings_from(tmp_path, "[server]\nwsgi = 'gunicorn'\ngunicorn_timeout = 10\n")
    assert (s.server.wsgi, s.server.gunicorn_timeout) == ("gunicorn", 10)
    assert settings_from(tmp_path, "", {"GATEWAYHA_SERVER__WSGI": "gunicorn"}).server.wsgi == "gunicorn"


SPECS = [
    OptionSpec("worker_cores", "int", 1, min=1, max=4),
    OptionSpec("worker_memory_gib", "float", 1.0, min=0.5, max=8),
    OptionSpec("queue", "select", "a", options=["a", "b"]),
    OptionSpec("environment", "mapping", {}),
]


def test_defaults_fill_in_and_values_are_checked():
    assert validate_options(SPECS, {"worker_cores": 2}) == {
        "worker_cores": 2,
        "worker_memory_gib": 1.0,
        "queue": "a",
        "environment": {},
    }
    for bad in (
        {"worker_cores": 0},
        {"worker_memory_gib": float("nan")},
        {"queue": "c"},
        {"x": 1},
        {"environment": {"a": object()}},
    ):
        with pytest.raises(OptionError):
            validate_options(SPECS, bad)


def test_spec_has_the_client_format():
    spec = options_spec(SPECS)
    assert spec[0] == {
        "field": "worker_cores",
        "label": "",
        "default": 1,
        "spec": {"type": "int", "min": 1, "max": 4},
    }
    assert spec[2]["spec"] == {"type": "select", "options": ["a", "b"]}


def test_options_override_cluster_settings_but_not_the_worker_ceiling(tmp_path):
    s = settings_from(tmp_path, "[cluster]\nmax_workers = 10\n")
    cfg = cluster_config(s, {"worker_cores": 3, "max_workers": 1000, "environment": {"A": 1}})
    assert cfg.worker_cores == 3.0 and cfg.threads == 3 and cfg.max_workers == 10
    assert cfg.environment == {"A": "1"}


def test_password_hash_verifies_only_the_right_password():
    # spaces and "!" are not in the base64 alphabet: the plain text can never
    # appear in the hash by chance
    pw = "a pass phrase!"
    h = sec.hash_password(pw)
    assert h.startswith("scrypt$") and pw not in h
    assert sec.verify_password(pw, h)
    assert not sec.verify_password("a pass Phrase!", h)
    assert not sec.verify_password(pw, None)
    assert not sec.verify_password(pw, "md5$garbage")


def test_session_cookie_is_bound_to_secret_user_and_expiry():
    c = sec.make_session_cookie("k" * 20, "ann", 60)
    assert sec.check_session_cookie("k" * 20, c) == "ann"
    assert sec.check_session_cookie("other-secret-xxxxx", c) is None
    user, exp, kid, mac = c.split("|")
    assert kid == sec.key_id("k" * 20)
    assert sec.check_session_cookie("k" * 20, f"bob|{exp}|{kid}|{mac}") is None
    assert sec.check_session_cookie("k" * 20, f"ann|{int(exp) + 999}|{kid}|{mac}") is None
    assert sec.check_session_cookie("k" * 20, f"ann|{exp}|{sec.key_id('other-secret-xxxxx')}|{mac}") is None
    assert sec.check_session_cookie("k" * 20, c, now=time.time() + 120) is None


OLD, NEW = "old-secret-0123456789", "new-secret-9876543210"


def test_a_rotated_secret_still_verifies_during_the_grace_period_and_not_after():
    """server.secret = NEW, previous_secrets = OLD: what OLD signed still passes, what NEW
    signs names NEW's key id; once OLD leaves the ring, OLD's cookies are refused."""
    old_cookie = sec.make_session_cookie(OLD, "ann", 60)
    ring = (NEW, OLD)
    assert sec.check_session_cookie(ring, old_cookie) == "ann"
    new_cookie = sec.make_session_cookie(NEW, "ann", 60)
    assert new_cookie.split("|")[2] == sec.key_id(NEW) != sec.key_id(OLD)
    assert sec.check_session_cookie(ring, new_cookie) == "ann"
    assert sec.check_session_cookie((NEW,), old_cookie) is None
    # A key id naming NEW with OLD's signature: only the named key is tried.
    user, exp, _, mac = old_cookie.split("|")
    assert sec.check_session_cookie(ring, f"{user}|{exp}|{sec.key_id(NEW)}|{mac}") is None
    # Cookies of the previous release (user|expiry|mac, no key id) are tried against the ring.
    legacy_body = f"ann|{exp}"
    legacy = f"{legacy_body}|{sec._mac(OLD, b'session', legacy_body)}"
    assert sec.check_session_cookie(ring, legacy) == "ann"
    assert sec.check_session_cookie((NEW,), legacy) is None


def test_keys_encrypted_under_a_previous_secret_decrypt_and_are_marked_for_reencryption():
    from cryptography.exceptions import InvalidTag

    from gatewayha import tls

    blob = tls.encrypt_key(OLD, "PEM", "a" * 32)
    assert tls.decrypt_key((NEW, OLD), blob, "a" * 32) == "PEM"
    assert tls.needs_reencryption(NEW, blob, "a" * 32)
    assert not tls.needs_reencryption(OLD, blob, "a" * 32)
    with pytest.raises(InvalidTag):
        tls.decrypt_key((NEW,), blob, "a" * 32)
    with pytest.raises(InvalidTag):
        tls.decrypt_key((NEW, OLD), blob, "b" * 32)  # bound to its cluster, whatever the key


def test_previous_secrets_are_parsed_and_checked(tmp_path):
    from gatewayha.config import ConfigError, load_settings

    env = {"GATEWAYHA_SERVER__SECRET": NEW, "GATEWAYHA_SERVER__PREVIOUS_SECRETS": f"{OLD}, {NEW} x" + "y" * 16}
    assert load_settings(environ=env).server.secrets == (NEW, OLD, "x" + "y" * 16)
    with pytest.raises(ConfigError, match="previous_secrets"):
        load_settings(environ={**env, "GATEWAYHA_SERVER__PREVIOUS_SECRETS": "short"})


def test_cluster_tokens_are_per_cluster_and_per_secret():
    # Random tokens: only their digest is compared; nothing derives them from the name or secret.
    t, digest = sec.new_cluster_token()
    assert len(t) >= 43 and t != sec.new_cluster_token()[0]
    assert sec.cluster_token_ok("k" * 20, "a" * 32, t, digest)
    assert not sec.cluster_token_ok("k" * 20, "a" * 32, t + "x", digest)
    assert not sec.cluster_token_ok("k" * 20, "a" * 32, sec.legacy_cluster_token("k" * 20, "a" * 32), digest)
    assert not sec.cluster_token_ok("k" * 20, "a" * 32, "é\udcff", digest)  # garbled: no exception
    # A row of the previous release (no digest) accepts only its HMAC, until it stops.
    legacy = sec.legacy_cluster_token("k" * 20, "a" * 32)
    assert sec.cluster_token_ok("k" * 20, "a" * 32, legacy, None)
    assert not sec.cluster_token_ok("k" * 20, "b" * 32, legacy, None)
    assert not sec.cluster_token_ok("j" * 20, "a" * 32, legacy, None)
    assert "/" not in t  # the preload would read a token with "/" as a file path


def test_api_tokens_parse_and_store_only_a_digest():
    token, token_id, digest = sec.new_api_token()
    assert sec.parse_api_token(token) == (token_id, digest)
    assert sec.parse_api_token("gha__x") is None and sec.parse_api_token("abc") is None


def test_cluster_keypair_is_ecdsa_with_dask_internal_san_and_works_for_mutual_tls(tmp_path):
    cert_pem, key_pem = tls.new_keypair("c" * 32)
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["dask-internal"]
    assert cert.public_key().curve.name == "secp256r1"
    (tmp_path / "c.pem").write_text(cert_pem)
    (tmp_path / "k.pem").write_text(key_pem)
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tmp_path / "c.pem"))
    ctx.check_hostname = False
    ctx.load_cert_chain(str(tmp_path / "c.pem"), str(tmp_path / "k.pem"))  # as the client does


def test_key_encryption_round_trips_and_is_bound_to_the_cluster():
    from cryptography.exceptions import InvalidTag

    blob = tls.encrypt_key("k" * 20, "PEM", "a" * 32)
    assert b"PEM" not in blob
    assert tls.decrypt_key("k" * 20, blob, "a" * 32) == "PEM"
    with pytest.raises(InvalidTag):
        tls.decrypt_key("k" * 20, blob, "b" * 32)
    with pytest.raises(InvalidTag):
        tls.decrypt_key("j" * 20, blob, "a" * 32)


# --- deprecated names: the job runner's [worker] section became [jobs] --------------------------


@pytest.fixture
def fresh_deprecations(monkeypatch):
    """A process that has logged no deprecation yet."""
    from gatewayha import config

    monkeypatch.setattr(config, "_deprecations_logged", set())


# gatewayha.toml as the role rendered it before the rename (roles/gatewayha/templates/gatewayha.toml.j2).
DEPLOYED_BEFORE_THE_RENAME = """
[server]
secret = "0123456789abcdef0123"
[worker]
concurrency = 3
max_starting = 2
node_timeout = 15
"""


def test_a_deployed_file_with_the_old_worker_section_still_works_and_says_what_to_write(
    tmp_path, fresh_deprecations, caplog
):
    p = tmp_path / "gatewayha.toml"
    p.write_text(DEPLOYED_BEFORE_THE_RENAME)
    with caplog.at_level(logging.WARNING, logger="gatewayha.config"):
        s = load_settings(p, {})
        again = load_settings(p, {})
    assert (s.jobs.concurrency, s.jobs.launch_slots, s.jobs.node_timeout) == (3, 2, 15)
    assert s.jobs.starting_slots() == 2
    assert (
        s.deprecations
        == again.deprecations
        == [
            "worker.concurrency is deprecated: write jobs.concurrency instead",
            "worker.max_starting is deprecated: write jobs.launch_slots instead",
            "worker.node_timeout is deprecated: write jobs.node_timeout instead",
        ]
    )
    # Logged once per process, however often the file is read.
    assert [r.getMessage() for r in caplog.records] == s.deprecations


def test_the_new_names_give_the_same_settings_without_a_warning(tmp_path, fresh_deprecations, caplog):
    text = DEPLOYED_BEFORE_THE_RENAME.replace("[worker]", "[jobs]").replace("max_starting", "launch_slots")
    with caplog.at_level(logging.WARNING, logger="gatewayha.config"):
        s = settings_from(tmp_path, text)
    assert (s.jobs.concurrency, s.jobs.launch_slots, s.jobs.node_timeout) == (3, 2, 15)
    assert s.deprecations == [] and not caplog.records


def test_an_old_environment_override_still_works_and_is_named_in_the_warning(tmp_path, fresh_deprecations):
    s = settings_from(tmp_path, "[jobs]\nlaunch_slots = 1\n", {"GATEWAYHA_WORKER__MAX_STARTING": "5"})
    assert s.jobs.launch_slots == 5
    assert s.deprecations == [
        "GATEWAYHA_WORKER__MAX_STARTING is deprecated: write GATEWAYHA_JOBS__LAUNCH_SLOTS instead"
    ]


@pytest.mark.parametrize(
    "text,env,message",
    [
        (
            "[worker]\nconcurrency = 2\n[jobs]\nconcurrency = 3\n",
            {},
            "worker.concurrency: deprecated, and jobs.concurrency replaces it: set only jobs.concurrency",
        ),
        (
            "",
            {"GATEWAYHA_WORKER__MAX_STARTING": "1", "GATEWAYHA_JOBS__LAUNCH_SLOTS": "2"},
            "GATEWAYHA_WORKER__MAX_STARTING: deprecated, and GATEWAYHA_JOBS__LAUNCH_SLOTS",
        ),
        ("[worker]\nlaunch_slots = 2\n", {}, "worker.launch_slots: unknown setting"),
        ("[jobs]\nmax_starting = 2\n", {}, "jobs.max_starting: unknown setting"),
        ("", {"GATEWAYHA_WORKER__BOGUS": "1"}, "GATEWAYHA_WORKER__BOGUS: unknown setting"),
        ("worker = 3\n", {}, "worker: expected a table"),
        ("[worker]\nmax_starting = -1\n", {}, "jobs.launch_slots: must be >= 0"),
    ],
)
def test_an_old_name_is_refused_beside_its_new_one_and_never_accepted_in_the_new_section(
    tmp_path, fresh_deprecations, text, env, message
):
    with pytest.raises(ConfigError) as info:
        settings_from(tmp_path, text, env)
    assert message in str(info.value)


def test_check_config_prints_the_deprecations_of_a_valid_file(tmp_path, fresh_deprecations, capsys):
    from gatewayha.cli import main

    p = tmp_path / "gatewayha.toml"
    p.write_text(DEPLOYED_BEFORE_THE_RENAME)
    assert main(["check-config", str(p)]) == 0
    out, err = capsys.readouterr()
    assert out == f"{p}: valid\n"
    assert f"{p}: warning: worker.max_starting is deprecated: write jobs.launch_slots instead\n" in err
    p.write_text(DEPLOYED_BEFORE_THE_RENAME.replace("[worker]", "[jobs]").replace("max_starting", "launch_slots"))
    assert main(["check-config", str(p)]) == 0
    assert capsys.readouterr().err == ""
