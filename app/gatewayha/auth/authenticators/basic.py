"""Basic credentials checked against the users table (scrypt hashes), with login throttling."""

from __future__ import annotations

import abc
import base64
import binascii
import threading
import time
from collections import OrderedDict

import falcon

from gatewayha import validate
from gatewayha.api.throttle import LoginThrottle, SourceAddress
from gatewayha.auth import secrets as sec
from gatewayha.auth.authenticators.base import Authenticator, User, authorization
from gatewayha.config import Settings
from gatewayha.errors import Unauthorized

WRONG = "Invalid user name or password"


def basic_credentials(value: str) -> tuple[str, str]:
    """(user name, password) of a Basic credential; Unauthorized for a garbled one or a name
    that could be no user's (validate.is_user_name)."""
    try:
        decoded = base64.b64decode(value, validate=True).decode("latin1")
        name, sep, password = decoded.partition(":")
    except (binascii.Error, ValueError):
        raise Unauthorized("Malformed Basic credentials") from None
    if not sep or not validate.is_user_name(name):
        raise Unauthorized(WRONG)
    return name, password


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


class BasicScheme(Authenticator):
    """What every ``Authorization: Basic`` authenticator shares: decoding, login throttling
    (api.throttle: 429 before any password check) and the challenge; ``login`` checks."""

    scheme = "basic"

    def __init__(self, settings: Settings, pool) -> None:
        super().__init__(settings, pool)
        self.throttle = LoginThrottle(settings)
        self.source = SourceAddress(settings)

    def authenticate(self, req: falcon.Request) -> User | None:
        scheme, value = authorization(req)
        if scheme != self.scheme or not value:
            return None
        name, password = basic_credentials(value)
        return self.login(name, password, self.source(req))

    @abc.abstractmethod
    def login(self, name: str, password: str, source: str) -> User:
        """The user these credentials name, or raise Unauthorized (or TooManyRequests)."""

    def challenge(self) -> str:
        return f'Basic realm="{self.settings.auth.realm}"'


class BasicAuthenticator(BasicScheme):
    """A user of the users table and its password (scrypt). The lock-out check rides on the
    query that reads the stored hash; a throttle slot is taken only when scrypt runs, and
    given back on success."""

    def __init__(self, settings: Settings, pool) -> None:
        super().__init__(settings, pool)
        self.verified = VerifiedPasswords(settings.server.secret)

    def login(self, name: str, password: str, source: str) -> User:
        with self.pool.connection() as conn:
            stored = self.throttle.lookup(conn, name, source)  # users.password_hash, and the check
        slots = []

        def reserve() -> None:
            with self.pool.connection() as conn:
                slots.append(self.throttle.reserve(conn, name, source))

        if not self.verified.verify(name, password, stored, before_check=reserve):
            raise Unauthorized(WRONG)
        if slots:  # a success does not count against the user or the source
            with self.pool.connection() as conn:
                self.throttle.release(conn, slots[0])
        return User(name)
