"""Dashboard tokens and the one rule of who may see a dashboard (gatewayha.dashboards)."""

from __future__ import annotations

import base64
import hashlib
import json
import time

from gatewayha import dashboards
from gatewayha.auth import secrets as sec

SECRET = "unit-secret-0123456789abcdef"
NAME = "0123456789abcdef0123456789abcdef"


def test_key_is_the_one_the_ansible_role_derives():
    # roles/haproxy: ('gatewayha-dashboard-jwt:' ~ gatewayha_secret) | hash('sha256')
    assert dashboards.jwt_key(SECRET) == hashlib.sha256(f"gatewayha-dashboard-jwt:{SECRET}".encode()).hexdigest()
    assert dashboards.jwt_key(SECRET) != dashboards.jwt_key(SECRET + "x")


def test_token_is_an_hs256_jwt_naming_user_cluster_and_expiry():
    token = dashboards.make_token(SECRET, "alice", NAME, 600, now=1_000_000)
    header, payload, _ = token.split(".")
    pad = lambda s: s + "=" * (-len(s) % 4)  # noqa: E731
    assert json.loads(base64.urlsafe_b64decode(pad(header))) == {
        "alg": "HS256",
        "typ": "JWT",
        "kid": sec.key_id(SECRET),
    }
    claims = json.loads(base64.urlsafe_b64decode(pad(payload)))
    assert claims == {"sub": "alice", "aud": NAME, "iat": 1_000_000, "exp": 1_000_600}


def test_check_token_accepts_only_an_unexpired_token_for_this_cluster_and_key():
    token = dashboards.make_token(SECRET, "alice", NAME, 600)
    assert dashboards.check_token(SECRET, token, NAME) == "alice"
    assert dashboards.check_token(SECRET, token, "f" * 32) is None
    assert dashboards.check_token("another-secret-0123456789", token, NAME) is None
    assert dashboards.check_token(SECRET, token, NAME, now=time.time() + 601) is None
    header, payload, mac = token.split(".")
    other = dashboards.make_token(SECRET, "mallory", NAME, 600).split(".")[1]
    assert dashboards.check_token(SECRET, f"{header}.{other}.{mac}", NAME) is None
    for junk in (None, "", "a.b", "a.b.c", "x" * 50):
        assert dashboards.check_token(SECRET, junk, NAME) is None


def test_only_the_owner_may_view_today():
    row = {"owner": "alice", "name": NAME}
    assert dashboards.may_view("alice", row)
    assert not dashboards.may_view("bob", row)
    assert not dashboards.may_view("", row)


def test_a_token_signed_under_a_previous_secret_passes_while_that_secret_is_in_the_ring():
    old, new = "old-secret-0123456789abcdef", SECRET
    token = dashboards.make_token(old, "alice", NAME, 600)
    assert dashboards.check_token((new, old), token, NAME) == "alice"
    assert dashboards.check_token((new,), token, NAME) is None
    assert dashboards.check_token((new, old), dashboards.make_token(new, "bob", NAME, 600), NAME) == "bob"
