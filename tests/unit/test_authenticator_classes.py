"""Authenticators on their own (no database: pool=None, so any query would fail the test) and
the [auth] settings that choose them."""

from __future__ import annotations

import base64
import dataclasses
import logging

import falcon.testing
import pytest

from gatewayha import config
from gatewayha.auth import authenticators
from gatewayha.auth.authenticators import REGISTRY, Authenticator, User
from gatewayha.auth.authenticators.basic import BasicAuthenticator
from gatewayha.auth.authenticators.simple import SharedPasswordAuthenticator
from gatewayha.auth.authenticators.token import ApiTokenAuthenticator
from gatewayha.config import ConfigError, load_settings
from gatewayha.errors import Unauthorized

BASE = {"GATEWAYHA_SERVER__SECRET": "s" * 32}


def settings_from(tmp_path, text: str = "", **env):
    p = tmp_path / "c.toml"
    p.write_text(text)
    return load_settings(p, {**BASE, **env})


def request(authorization: str | None = None):
    headers = {} if authorization is None else {"Authorization": authorization}
    return falcon.testing.create_req(path="/api/v1/clusters", headers=headers)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture
def deprecations(monkeypatch):
    """A process that has logged no deprecation yet."""
    monkeypatch.setattr(config, "_deprecations_logged", set())


# --- the User value -------------------------------------------------------------------


def test_a_user_is_a_frozen_value_with_no_groups_and_no_admin_right_by_default():
    user = User("alice")
    assert (user.groups, user.admin) == (frozenset(), False)
    assert user == User("alice") and hash(user) == hash(User("alice"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        user.admin = True  # type: ignore[misc]


# --- choosing authenticators ------------------------------------------------------------


def test_without_auth_settings_api_tokens_then_basic_are_used(tmp_path, deprecations, caplog):
    with caplog.at_level(logging.WARNING, logger="gatewayha.config"):
        s = settings_from(tmp_path)
    assert s.auth.chosen() == ["token", "basic"]
    assert "deprecated" not in caplog.text


def test_authenticators_are_tried_in_the_order_written(tmp_path):
    s = settings_from(tmp_path, '[auth]\nauthenticators = ["basic", "token"]\n')
    assert s.auth.chosen() == ["basic", "token"]
    assert [type(a) for a in authenticators.build(s, None)] == [BasicAuthenticator, ApiTokenAuthenticator]


def test_an_environment_override_names_authenticators_separated_by_commas(tmp_path):
    s = settings_from(
        tmp_path, GATEWAYHA_AUTH__AUTHENTICATORS="simple, token", GATEWAYHA_AUTH__SIMPLE_PASSWORD="shared"
    )
    assert s.auth.chosen() == ["simple", "token"]


@pytest.mark.parametrize("legacy, chosen", [("basic", ["token", "basic"]), ("simple", ["token", "simple"])])
def test_the_deprecated_auth_type_still_works_and_is_logged_once(tmp_path, deprecations, caplog, legacy, chosen):
    text = f'[auth]\ntype = "{legacy}"\nsimple_password = "shared"\n'
    with caplog.at_level(logging.WARNING, logger="gatewayha.config"):
        first = settings_from(tmp_path, text)
        settings_from(tmp_path, text)
    assert first.auth.chosen() == chosen
    warnings = [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()]
    assert len(warnings) == 1 and "auth.authenticators = " + str(chosen).replace("'", '"') in warnings[0]


@pytest.mark.parametrize(
    "text, env, message",
    [
        ('[auth]\nauthenticators = ["token", "ldap"]\n', {}, "auth.authenticators: unknown authenticator 'ldap'"),
        ("", {"GATEWAYHA_AUTH__AUTHENTICATORS": "basic,kerberos"}, "unknown authenticator 'kerberos'"),
        ('[auth]\nauthenticators = ["Basic"]\n', {}, "unknown authenticator 'Basic'; known: token, basic, simple"),
        ('[auth]\nauthenticators = ["basic", "basic"]\n', {}, "'basic' named twice"),
        ('[auth]\nauthenticators = ["basic", "simple"]\n', {}, "'basic' and 'simple' both read 'basic'"),
        ('[auth]\nauthenticators = ["token", 7]\n', {}, "auth.authenticators: expected list[str]"),
        ("[auth]\nauthenticators = 7\n", {}, "auth.authenticators: expected list[str]"),
        ('[auth]\nauthenticators = ["simple"]\n', {}, "auth.simple_password: required by the 'simple'"),
        ('[auth]\nauthenticators = ["simple"]\nsimple_password = "\u20ac"\n', {}, "auth.simple_password: latin-1"),
        ('[auth]\ntype = "basic"\nauthenticators = ["basic"]\n', {}, "set only auth.authenticators"),
        ('[auth]\ntype = "kerberos"\n', {}, "auth.type: 'basic' or 'simple'"),
    ],
)
def test_bad_authenticator_settings_are_refused_with_a_clear_message(tmp_path, text, env, message):
    with pytest.raises(ConfigError) as exc:
        settings_from(tmp_path, text, **env)
    assert message in str(exc.value)


def test_settings_changed_after_loading_are_checked_again_when_the_app_builds_them(tmp_path):
    s = settings_from(tmp_path)
    bad = dataclasses.replace(s, auth=dataclasses.replace(s.auth, authenticators=["token", "jupyterhub"]))
    with pytest.raises(ConfigError, match="unknown authenticator 'jupyterhub'"):
        authenticators.build(bad, None)


def test_a_new_authenticator_is_one_class_and_one_registry_line(tmp_path, monkeypatch):
    class Header(Authenticator):
        scheme = "x-test"

        def authenticate(self, req):
            return None

    monkeypatch.setitem(REGISTRY, "header", Header)
    s = settings_from(tmp_path, '[auth]\nauthenticators = ["header", "basic"]\n')
    assert [type(a) for a in authenticators.build(s, None)] == [Header, BasicAuthenticator]


def test_every_registered_authenticator_reads_one_scheme():
    for name, cls in REGISTRY.items():
        assert issubclass(cls, Authenticator), name
        assert cls.scheme and cls.scheme == cls.scheme.lower(), name


# --- each authenticator, before it would ask the database ---------------------------------


@pytest.fixture
def settings(tmp_path):
    return settings_from(tmp_path, '[auth]\nrealm = "r1"\nsimple_password = "shared"\n')


@pytest.mark.parametrize("cls", [BasicAuthenticator, SharedPasswordAuthenticator])
@pytest.mark.parametrize(
    "header", [None, "", "Basic", "Basic ", "Bearer abc", "token gha_a_b", "Negotiate YII=", "Basicx " + "YTpi"]
)
def test_basic_authenticators_pass_on_what_is_not_basic(settings, cls, header):
    assert cls(settings, None).authenticate(request(header)) is None


@pytest.mark.parametrize("cls", [BasicAuthenticator, SharedPasswordAuthenticator])
@pytest.mark.parametrize(
    "header, message",
    [
        ("Basic !!!notbase64", "Malformed Basic credentials"),
        ("Basic " + base64.b64encode(b"alice:secret").decode()[:-2], "Malformed Basic credentials"),  # truncated
        ("Basic YWxp Y2U6c2VjcmV0", "Malformed Basic credentials"),
        ("Basic " + base64.b64encode(b"no-colon").decode(), "Invalid user name or password"),
        (basic("", "secret"), "Invalid user name or password"),
        (basic("a" * 65, "secret"), "Invalid user name or password"),
        (basic("al ice", "secret"), "Invalid user name or password"),
        (basic("alice|9999999999", "secret"), "Invalid user name or password"),  # a forged cookie's shape
        ("Basic " + base64.b64encode("\u00e9l\u00e8ve:x".encode("latin1")).decode(), "Invalid user name or password"),
    ],
)
def test_garbled_basic_credentials_are_refused_before_any_query(settings, cls, header, message):
    with pytest.raises(Unauthorized) as exc:
        cls(settings, None).authenticate(request(header))
    assert exc.value.message == message


@pytest.mark.parametrize("cls", [BasicAuthenticator, SharedPasswordAuthenticator])
def test_basic_authenticators_challenge_with_the_realm(settings, cls):
    assert cls(settings, None).challenge() == 'Basic realm="r1"'


@pytest.mark.parametrize("header", [None, basic("alice", "x"), "token", "token 0f" * 8, "token abc", "Bearer gha_a_b"])
def test_the_token_authenticator_passes_on_all_but_api_tokens(settings, header):
    assert ApiTokenAuthenticator(settings, None).authenticate(request(header)) is None


def test_api_tokens_send_no_challenge_and_open_no_session(settings):
    token = ApiTokenAuthenticator(settings, None)
    assert token.challenge() is None and token.session is False and token.provisions is False
    assert token.response_headers(request(), User("alice")) == {}


def test_only_the_shared_password_adds_users_and_both_basics_open_sessions():
    assert SharedPasswordAuthenticator.provisions and not BasicAuthenticator.provisions
    assert SharedPasswordAuthenticator.session and BasicAuthenticator.session
