"""Credential primitives shared by every instance: nothing here keeps state.

- Passwords: scrypt (stdlib hashlib), ``scrypt$n$r$p$salt$hash`` in the users table.
- Session cookie: ``user|expiry|kid|hmac``; any instance holding the server secret
  accepts it, so a client moved between instances is not challenged again and
  the password hash is not recomputed per request.
- Rotation: what is signed or encrypted uses ``server.secret``; what is checked or decrypted
  also accepts ``server.previous_secrets`` (a *ring*: the current secret first). A signed value
  names its key (``kid``, :func:`key_id`), so the check tries that one key; values made before
  key ids (3-field cookies) are tried against every key of the ring.
- Cluster tokens: random per cluster; only their sha256 is checked (``cluster_token_ok``). The
  HMAC of the name under the server secret (``legacy_cluster_token``) is accepted only for
  clusters made by a release before 0005_cluster_tokens.sql, until they stop.
- API tokens: ``gha_<id>_<secret>``; only sha256(secret) is stored.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Sequence

_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1


def hash_password(password: str) -> str:
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


# A hash to check against when the user does not exist, so timing does not
# tell which user names exist.
_DUMMY_HASH = hash_password(secrets.token_hex(8))


def verify_password(password: str, stored: str | None) -> bool:
    target = stored or _DUMMY_HASH
    try:
        scheme, n, r, p, salt, digest = target.split("$")
        if scheme != "scrypt":
            return False
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p), dklen=32)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, base64.b64decode(digest)) and stored is not None


def _mac(secret: str, purpose: bytes, msg: str) -> str:
    data = purpose + b"\0" + msg.encode("utf-8", "surrogateescape")
    return hmac.new(secret.encode(), data, hashlib.sha256).hexdigest()


def ring(secrets_: str | Sequence[str]) -> tuple[str, ...]:
    """The keys a check may use, the current one first (a lone secret is a ring of one)."""
    return (secrets_,) if isinstance(secrets_, str) else tuple(secrets_)


def key_id(secret: str) -> str:
    """A short public name of a secret: says which key signed, tells nothing about it."""
    return hashlib.sha256(b"gatewayha-key-id\0" + secret.encode()).hexdigest()[:8]


def keys_named(secrets_: str | Sequence[str], kid: str | None) -> tuple[str, ...]:
    """The keys of the ring a value signed under ``kid`` may have used (all of them for None)."""
    keys = ring(secrets_)
    return keys if kid is None else tuple(k for k in keys if key_id(k) == kid)


def make_session_cookie(secret: str, user: str, max_age: int, now: float | None = None) -> str:
    expiry = int((now or time.time()) + max_age)
    body = f"{user}|{expiry}|{key_id(secret)}"
    return f"{body}|{_mac(secret, b'session', body)}"


def check_session_cookie(secrets_: str | Sequence[str], value: str, now: float | None = None) -> str | None:
    """The user name a valid, unexpired cookie names; None for anything else."""
    try:
        parts = value.split("|")
        if len(parts) == 4:
            user, expiry, kid, mac = parts
        else:  # made before key ids: user|expiry|mac
            (user, expiry, mac), kid = parts, None
        expiry_i = int(expiry)
    except (ValueError, AttributeError):
        return None
    body = "|".join(parts[:-1])
    if not any(_same(mac, _mac(key, b"session", body)) for key in keys_named(secrets_, kid)):
        return None
    if expiry_i < (now or time.time()):
        return None
    return user


def legacy_cluster_token(secret: str, cluster_name: str) -> str:
    """The token of a cluster made before tokens were random (no token_hash in its row)."""
    return _mac(secret, b"cluster-token", cluster_name)


def new_cluster_token() -> tuple[str, bytes]:
    """(token, sha256(token)): 256 random bits, derivable from nothing."""
    token = secrets.token_urlsafe(32)
    while is_api_token(token):  # 1 in 2**24: it would be taken for a user's API token
        token = secrets.token_urlsafe(32)
    return token, hashlib.sha256(token.encode()).digest()


def cluster_token_ok(secrets_: str | Sequence[str], cluster_name: str, token: str, stored_hash: bytes | None) -> bool:
    """Whether ``token`` is the cluster's, given the row's token_hash (None: a legacy row)."""
    raw = token.encode("utf-8", "surrogateescape")
    if stored_hash is None:
        return any(hmac.compare_digest(legacy_cluster_token(k, cluster_name).encode(), raw) for k in ring(secrets_))
    return hmac.compare_digest(hashlib.sha256(raw).digest(), bytes(stored_hash))


def _same(given: str, expected: str) -> bool:
    """Constant-time comparison of a client's string with ours; False (never TypeError, as
    compare_digest raises on non-ASCII str) for anything a client may send."""
    if not isinstance(given, str):
        return False
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode())


API_TOKEN_PREFIX = "gha_"


def is_api_token(credential: str) -> bool:
    """Whether a ``token`` credential claims to be an API token; any other is a cluster token
    (hex, or base64url that ``new_cluster_token`` never lets begin so)."""
    return credential.startswith(API_TOKEN_PREFIX)


def new_api_token() -> tuple[str, str, bytes]:
    """Return (token, id, secret_hash)."""
    token_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(24)
    return f"{API_TOKEN_PREFIX}{token_id}_{secret}", token_id, hashlib.sha256(secret.encode()).digest()


def parse_api_token(token: str) -> tuple[str, bytes] | None:
    """Return (id, sha256(secret)) for a well-formed API token."""
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != "gha" or not parts[1] or not parts[2]:
        return None
    return parts[1], hashlib.sha256(parts[2].encode()).digest()
