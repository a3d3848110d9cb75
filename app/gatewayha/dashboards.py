"""Who may see a cluster's dashboard, and the signed cookie HAProxy checks per request.

A dashboard (``/clusters/<name>/...``) is served by the tenant's own scheduler. HAProxy lets a
request through to it only with a valid dashboard token for *that* cluster: an HS256 JWT
(``sub`` = user, ``aud`` = cluster name, ``exp``) in the ``gatewayha-dashboard`` cookie,
verified on the proxy itself with ``jwt_verify`` (haproxy/haproxy.cfg.j2). Without one the
request reaches the API (api/dashboards.py), which checks the caller's credentials, asks
:func:`may_view` and only then signs a token. So the decision "who may see this cluster" is
taken here and nowhere else; HAProxy only enforces the API's signature (a later issue adds
admins and groups in :func:`may_view`).

The signing key is derived from ``server.secret`` (:func:`jwt_key`) and rendered into
haproxy.cfg (mode 0600). The Ansible role derives the same key with
``('gatewayha-dashboard-jwt:' ~ secret) | hash('sha256')``. During a rotation of the server
secret HAProxy and :func:`check_token` also accept tokens signed under
``server.previous_secrets`` (rendered as ``dashboard_jwt_previous_keys``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from gatewayha.auth.secrets import key_id, keys_named

COOKIE = "gatewayha-dashboard"
_KEY_PREFIX = "gatewayha-dashboard-jwt:"
_HEADER = {"alg": "HS256", "typ": "JWT"}


def jwt_key(secret: str) -> str:
    """The HS256 key shared by the API (signs) and HAProxy (verifies): 64 hex characters."""
    return hashlib.sha256((_KEY_PREFIX + secret).encode()).hexdigest()


def may_view(user: str, cluster: Mapping[str, Any]) -> bool:
    """Whether ``user`` may see this cluster's dashboard: the one place that decides it.

    ``cluster`` is its row from the clusters table (``owner`` at least). Today: its owner only.
    """
    return bool(user) and user == cluster["owner"]


def dashboard_path(name: str) -> str:
    """The path prefix a cluster's dashboard is served under (its cookie's Path)."""
    return f"/clusters/{name}/"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def make_token(secret: str, user: str, cluster: str, ttl: int, now: float | None = None) -> str:
    """A dashboard token for one user and one cluster, valid for ``ttl`` seconds; its header
    names the key (``kid``), so a check during a rotation knows which one to try."""
    issued = int(now if now is not None else time.time())
    claims = {"sub": user, "aud": cluster, "iat": issued, "exp": issued + int(ttl)}
    encode = lambda obj: _b64(json.dumps(obj, separators=(",", ":")).encode())  # noqa: E731
    signing_input = f"{encode({**_HEADER, 'kid': key_id(secret)})}.{encode(claims)}"
    mac = hmac.new(jwt_key(secret).encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"


def check_token(secrets: str | Sequence[str], token: str | None, cluster: str, now: float | None = None) -> str | None:
    """The user a valid, unexpired token for this cluster names; None otherwise.

    The same checks HAProxy makes (signature under the current or a previous key, ``aud``
    equal to the cluster, ``exp`` ahead).
    """
    try:
        header, payload, mac = (token or "").split(".")
        head = json.loads(_unb64(header))
        if head.get("alg") != "HS256":
            return None
        given = _unb64(mac)
        signed = f"{header}.{payload}".encode()
        if not any(
            hmac.compare_digest(given, hmac.new(jwt_key(k).encode(), signed, hashlib.sha256).digest())
            for k in keys_named(secrets, head.get("kid"))
        ):
            return None
        claims = json.loads(_unb64(payload))
        if claims.get("aud") != cluster or int(claims["exp"]) <= (now if now is not None else time.time()):
            return None
        user = claims.get("sub")
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return user if isinstance(user, str) and user else None
