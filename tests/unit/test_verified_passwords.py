"""Recently verified Basic credentials skip scrypt (gatewayha.auth.authenticators.basic.VerifiedPasswords)."""

from __future__ import annotations

import threading
import time

from gatewayha.auth import secrets as sec
from gatewayha.auth.authenticators import basic


def test_a_repeated_login_skips_scrypt(scrypt_calls):
    stored = sec.hash_password("right")
    cache = basic.VerifiedPasswords("s" * 32)
    assert cache.verify("alice", "right", stored)
    assert cache.verify("alice", "right", stored)
    assert scrypt_calls == ["right"]


def test_failures_are_never_cached(scrypt_calls):
    stored = sec.hash_password("right")
    cache = basic.VerifiedPasswords("s" * 32)
    assert not cache.verify("alice", "wrong", stored)
    assert not cache.verify("alice", "wrong", stored)
    assert len(scrypt_calls) == 2
    assert not cache.verify("nobody", "right", None)  # unknown user: still the full work


def test_a_changed_password_or_other_user_misses_the_cache(scrypt_calls):
    old, new = sec.hash_password("right"), sec.hash_password("right")
    cache = basic.VerifiedPasswords("s" * 32)
    assert cache.verify("alice", "right", old)
    assert cache.verify("alice", "right", new)  # same password, new hash: verified again
    assert not cache.verify("bob", "right", sec.hash_password("other"))
    assert not cache.verify("alice", "wrong", new)
    assert len(scrypt_calls) == 4


def test_entries_expire_and_the_cache_is_bounded(scrypt_calls, monkeypatch):
    stored = sec.hash_password("right")
    cache = basic.VerifiedPasswords("s" * 32, ttl=10, size=2)
    now = [1000.0]
    monkeypatch.setattr(basic.time, "monotonic", lambda: now[0])
    assert cache.verify("alice", "right", stored)
    now[0] += 11
    assert cache.verify("alice", "right", stored)  # expired: scrypt again
    assert len(scrypt_calls) == 2
    others = [sec.hash_password(p) for p in ("p1", "p2")]
    cache.verify("u1", "p1", others[0])
    cache.verify("u2", "p2", others[1])
    assert len(cache._seen) == 2


def test_a_burst_of_logins_with_the_same_credentials_pays_for_one_scrypt(monkeypatch):
    stored = sec.hash_password("right")
    calls = []
    real = sec.verify_password

    def slow(password, stored):
        calls.append(password)
        time.sleep(0.3)  # long enough for every thread below to arrive meanwhile
        return real(password, stored)

    monkeypatch.setattr(sec, "verify_password", slow)
    cache = basic.VerifiedPasswords("s" * 32)
    results = []

    def login():
        results.append(cache.verify("alice", "right", stored))

    threads = [threading.Thread(target=login) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == [True] * 8
    assert calls == ["right"]
    assert cache._inflight == {}
    # A wrong password in the same burst is still checked, and still refused.
    assert not cache.verify("alice", "wrong", stored)
    assert calls == ["right", "wrong"]
