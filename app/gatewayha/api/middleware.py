"""Cross-cutting concerns: request id and authentication."""

from __future__ import annotations

import base64
import binascii
import logging
import threading
import time
import uuid
from collections import OrderedDict

import falcon

from gatewayha.api.throttle import LoginThrottle, SourceAddress, plausible_credential
from gatewayha.auth import secrets as sec
from gatewayha.auth import users
from gatewayha.config import Settings
from gatewayha.errors import Unauthorized

log = logging.getLogger("gatewayha.api")


class RequestId:
    """Use HAProxy's X-Request-ID (or make one), echo it, log every request."""

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        rid = req.get_header("X-Request-ID") or uuid.uuid4().hex
        req.context.request_id = rid[:128]
        req.context.started = time.monotonic()
        resp.set_header("X-Request-ID", req.context.request_id)

    def process_response(self, req, resp, resource, req_succeeded) -> None:
        log.info(
            "request_id=%s user=%s %s %s -> %s %.1fms",
            req.context.get("request_id"),
            req.context.get("user"),
            req.method,
            req.relative_uri,
            resp.status,
            (time.monotonic() - req.context.get("started", time.monotonic())) * 1000,
        )


class DrainBody:
    """Read what is left of a request body before the answer goes out.

    An answer given before the body was read (413, 401, 404, 422 ...) made granian abort the
    connection HAProxy was still sending the body on: the client got a 502 or a cut-off
    answer, and HAProxy counted a response error against a healthy instance (which
    ``observe layer4`` may take out of rotation). Up to ``limit`` bytes are read and dropped;
    a longer body still ends with an abort (HAProxy refuses a Content-Length over that limit
    at the edge).
    """

    def __init__(self, limit: int):
        self.limit = limit

    def process_response(self, req: falcon.Request, resp, resource, req_succeeded) -> None:
        if req.content_length is not None:
            stream = req.bounded_stream
        elif req.get_header("Transfer-Encoding"):
            stream = req.stream  # the server decodes the chunks; empty once the last one is read
        else:
            return
        left = self.limit
        try:
            while left > 0:
                block = stream.read(min(65_536, left))
                if not block:
                    return
                left -= len(block)
        except OSError:
            return  # the client went away


class VerifiedPasswords:
    """Recently verified Basic credentials, so a client that logs in again (every new
    ``Gateway()`` does) does not pay scrypt's ~40 ms of CPU each time.

    Only successes are kept, for ``ttl`` seconds, in this process's memory, keyed by an HMAC
    (server secret) of user, password and the stored hash: a changed password or a removed
    user (the stored hash is still read from the database on every login) misses the cache.
    Concurrent logins with the same credentials (a burst of new clients) wait for the first
    one's verification instead of each paying for scrypt at once.
    """

    def __init__(self, secret: str, ttl: float = 300.0, size: int = 4096):
        self.secret, self.ttl, self.size = secret.encode(), ttl, size
        self._lock = threading.Lock()
        self._seen: OrderedDict[bytes, float] = OrderedDict()
        self._inflight: dict[bytes, threading.Lock] = {}

    def _key(self, name: str, password: str, stored: str) -> bytes:
        msg = "\0".join((name, password, stored)).encode("utf-8", "surrogatepass")
        return sec.hmac.new(self.secret, msg, "sha256").digest()

    def verify(self, name: str, password: str, stored: str | None, before_check=None) -> bool:
        """``before_check`` runs right before scrypt does (not on a cache hit); it may raise
        (the login throttle takes its slot there)."""
        if stored is None:
            if before_check is not None:
                before_check()
            return sec.verify_password(password, stored)  # constant work for unknown users
        key = self._key(name, password, stored)
        with self._lock:
            if self._fresh(key):
                return True
            gate = self._inflight.setdefault(key, threading.Lock())
        with gate:
            ok = False
            try:
                with self._lock:
                    if self._fresh(key):  # the verification we waited for succeeded
                        return True
                if before_check is not None:
                    before_check()
                ok = sec.verify_password(password, stored)
            finally:
                with self._lock:
                    if ok:
                        self._seen[key] = time.monotonic() + self.ttl
                        self._seen.move_to_end(key)
                        while len(self._seen) > self.size:
                            self._seen.popitem(last=False)
                    if self._inflight.get(key) is gate:
                        del self._inflight[key]
        return ok

    def _fresh(self, key: bytes) -> bool:
        expiry = self._seen.get(key)
        return expiry is not None and expiry > time.monotonic()


class Authenticate:
    """Resolve the caller from a session cookie, Basic credentials or a token.

    Resources declare ``auth``: "none", "user" (a person), or "cluster_token"
    / "user_or_cluster_token" (the scheduler of the named cluster). Without
    credentials the answer is 401 with WWW-Authenticate: the stock client
    only sends credentials after that challenge.
    """

    def __init__(self, settings: Settings, pool):
        self.settings = settings
        self.pool = pool
        self.verified = VerifiedPasswords(settings.server.secret)
        self.throttle = LoginThrottle(settings)
        self.source = SourceAddress(settings)
        self.challenge = {"WWW-Authenticate": f'Basic realm="{settings.auth.realm}"'}
        self.secure_cookie = settings.server.public_url.startswith("https://")

    def process_resource(self, req: falcon.Request, resp: falcon.Response, resource, params) -> None:
        mode = getattr(resource, "auth", "user")
        if mode == "none" or resource is None:
            return
        req.context.user = None
        req.context.cluster_token = None
        header = req.get_header("Authorization") or ""
        if not plausible_credential(header):  # non-ASCII, control characters, oversized
            raise Unauthorized("Malformed credentials", self.challenge)
        scheme, _, value = header.partition(" ")
        scheme = scheme.lower()
        value = value.strip()
        if scheme == "token" and value:
            if value.startswith("gha_"):
                with self.pool.connection() as conn:
                    user = users.token_user(conn, value)
                if user is None:
                    raise Unauthorized("Invalid API token", self.challenge)
                req.context.user = user
            elif "cluster_token" in mode:
                req.context.cluster_token = value
                return
            else:
                raise Unauthorized("Cluster tokens are not accepted here", self.challenge)
        elif mode == "cluster_token":
            raise Unauthorized("A cluster token is required", {"WWW-Authenticate": "token"})
        elif scheme == "basic" and value:
            req.context.user = self._basic(value, req)
            cookie = sec.make_session_cookie(
                self.settings.server.secret, req.context.user, self.settings.server.cookie_max_age
            )
            resp.set_cookie(
                self.settings.server.cookie_name,
                cookie,
                max_age=self.settings.server.cookie_max_age,
                # Only the API needs it: never sent with a dashboard request (api/browser_guard.py).
                path="/api/",
                secure=self.secure_cookie,
                http_only=True,
                same_site="Strict",
            )
        else:
            cookie = (req.get_cookie_values(self.settings.server.cookie_name) or [None])[0]
            ok = cookie and plausible_credential(cookie)
            user = sec.check_session_cookie(self.settings.server.secrets, cookie) if ok else None
            if user is None:
                raise Unauthorized("Authentication required", self.challenge)
            req.context.user = user

    def _basic(self, value: str, req: falcon.Request) -> str:
        try:
            decoded = base64.b64decode(value, validate=True).decode("latin1")
            name, sep, password = decoded.partition(":")
        except (binascii.Error, ValueError):
            raise Unauthorized("Malformed Basic credentials", self.challenge) from None
        if not sep or not users.USER_NAME.match(name):
            raise Unauthorized("Invalid user name or password", self.challenge)
        auth = self.settings.auth
        source = self.source(req)
        # Throttled (429) before any password check: api.throttle.
        if auth.type == "simple":
            with self.pool.connection() as conn:
                self.throttle.lookup(conn, name, source)
                if not sec.hmac.compare_digest(password.encode("latin1"), auth.simple_password.encode("latin1")):
                    self.throttle.record_failure(conn, name, source)
                    raise Unauthorized("Invalid user name or password", self.challenge)
                users.ensure_user(conn, name)
            return name
        with self.pool.connection() as conn:
            stored = self.throttle.lookup(conn, name, source)  # users.password_hash, and the check
        slots = []

        def reserve() -> None:
            with self.pool.connection() as conn:
                slots.append(self.throttle.reserve(conn, name, source))

        if not self.verified.verify(name, password, stored, before_check=reserve):
            raise Unauthorized("Invalid user name or password", self.challenge)
        if slots:  # a success does not count against the user or the source
            with self.pool.connection() as conn:
                self.throttle.release(conn, slots[0])
        return name
