"""Throttle settings, the source address behind HAProxy, credential sanity and the wait cap."""

from __future__ import annotations

import falcon.testing
import pytest

from gatewayha.api.throttle import SourceAddress, WaitSlots, plausible_credential
from gatewayha.auth import secrets as sec
from gatewayha.config import ConfigError, load_settings

BASE = {"GATEWAYHA_SERVER__SECRET": "s" * 16}


def settings(**env):
    return load_settings(None, {**BASE, **env})


def test_default_limits_are_finite_and_throttling_is_on():
    s = settings()
    assert (s.limits.max_clusters, s.limits.max_cores, s.limits.max_memory_gib) == (10, 32.0, 64.0)
    assert (s.auth.throttle_window, s.auth.throttle_user_failures, s.auth.throttle_source_failures) == (60, 10, 30)
    assert s.server.max_waits_per_user == 8


@pytest.mark.parametrize(
    "env, where",
    [
        ({"GATEWAYHA_SERVER__TRUSTED_PROXIES": "127.0.0.1, haproxy"}, "server.trusted_proxies"),
        ({"GATEWAYHA_SERVER__MAX_WAITS_PER_USER": "0"}, "server.max_waits_per_user"),
        ({"GATEWAYHA_AUTH__THROTTLE_WINDOW": "0.5"}, "auth.throttle_window"),
        ({"GATEWAYHA_AUTH__THROTTLE_WINDOW": "86400"}, "auth.throttle_window"),
        ({"GATEWAYHA_AUTH__THROTTLE_USER_FAILURES": "0"}, "auth.throttle_user_failures"),
        ({"GATEWAYHA_AUTH__THROTTLE_SOURCE_FAILURES": "-1"}, "auth.throttle_source_failures"),
        ({"GATEWAYHA_LIMITS__MAX_CORES": "-1"}, "limits.max_cores"),
    ],
)
def test_bad_throttle_settings_are_named(env, where):
    with pytest.raises(ConfigError, match=where):
        settings(**env)


def source(req_headers=None, remote="127.0.0.1", trusted="127.0.0.1, ::1"):
    env = falcon.testing.create_environ(headers=req_headers or {}, remote_addr=remote)
    return SourceAddress(settings(GATEWAYHA_SERVER__TRUSTED_PROXIES=trusted))(falcon.Request(env))


def test_the_source_is_haproxys_last_x_forwarded_for_entry_only_from_a_trusted_peer():
    assert source({"X-Forwarded-For": "1.2.3.4, 203.0.113.9"}) == "203.0.113.9"
    assert source({"X-Forwarded-For": "203.0.113.9"}, remote="198.51.100.1") == "198.51.100.1"
    assert source({"X-Forwarded-For": "garbage"}) == "127.0.0.1"
    assert source({}, remote="10.0.0.2", trusted="") == "10.0.0.2"
    assert source({"X-Forwarded-For": "10.0.0.9"}, remote="10.0.0.2", trusted="10.0.0.0/24") == "10.0.0.9"
    # IPv6 counts per /64; IPv4-mapped as IPv4
    assert source({"X-Forwarded-For": "2001:db8:1:2:3:4:5:6"}) == "2001:db8:1:2::/64"
    assert source({"X-Forwarded-For": "::ffff:192.0.2.5"}) == "192.0.2.5"


def test_only_printable_ascii_of_a_sane_length_is_a_credential():
    assert plausible_credential("Basic YWxpY2U6eA==")
    for bad in ("token é", "token \x00", "x" * 4097, "Basic \u00ff"):
        assert not plausible_credential(bad)


def test_token_and_cookie_checks_refuse_non_ascii_instead_of_raising():
    assert sec.cluster_token_ok("s" * 16, "c", "é", None) is False
    assert sec.cluster_token_ok("s" * 16, "c", "é", b"x" * 32) is False
    assert sec.check_session_cookie("s" * 16, "alice|9999999999|" + "é" * 64) is None
    assert sec.check_session_cookie("s" * 16, "\udcff|1|2") is None


def test_wait_slots_cap_one_user_and_give_slots_back():
    slots = WaitSlots(2)
    with slots.slot("a") as one, slots.slot("a") as two, slots.slot("a") as three, slots.slot("b") as other:
        assert (one, two, three, other) == (True, True, False, True)
        assert slots.held("a") == 2
    with slots.slot("a", wanted=False) as w:
        assert w is False
    assert slots.held("a") == 0 and slots.held("b") == 0
