"""Abuse bounds of the API: login throttling, a cap on one user's long polls, sane credentials.

Login throttling (``LoginThrottle``) counts failed password checks per user name and per
source address in Postgres (``login_failures``, migration 0007), so the limits hold across
every API instance on every node. A fixed window of ``auth.throttle_window`` seconds starts at
a key's first failure; once a key has ``auth.throttle_user_failures`` (user) or
``auth.throttle_source_failures`` (source) failures in its window, Basic logins for it are
answered 429 with Retry-After (the rest of the window) before any password hash is computed.
Successes never count, and a lock-out ends with its window.

The check costs a successful login nothing extra in round trips: it is one subquery of the
query that reads the stored password hash anyway (``lookup``). Only a password check that
runs scrypt (not one answered by the process's cache of verified passwords) first takes a
slot atomically (``reserve``: a conditional upsert, source before user) and gives it back on
success (``release``: the source's, then the user's, one row at a time): a burst of
concurrent guesses cannot slip past the limit between the check and the count. Concurrent
logins of one user with the same password share one scrypt run
(auth.authenticators.basic.VerifiedPasswords) and so one slot.

The source address is the peer's, or, when the peer is a trusted proxy (``server.
trusted_proxies``: HAProxy, on loopback or on a peer node), the last X-Forwarded-For entry,
the one that HAProxy (``option forwardfor``) appended. IPv6 sources count per /64.
"""

from __future__ import annotations

import ipaddress
import math
import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

import falcon

from gatewayha.config import Settings, parse_networks
from gatewayha.errors import TooManyRequests

# Longest Authorization header or session cookie looked at; real ones are far shorter.
MAX_CREDENTIAL_CHARS = 4096

_LOOKUP = """
SELECT (SELECT password_hash FROM users WHERE name = %(user)s) AS password_hash,
       max(f.window_start) + make_interval(secs => %(window)s) - now() AS locked_for
FROM login_failures f
WHERE f.window_start > now() - make_interval(secs => %(window)s)
  AND ((f.scope = 'user' AND f.key = %(user)s AND f.failures >= %(user_max)s)
    OR (f.scope = 'source' AND f.key = %(source)s AND f.failures >= %(source_max)s))
"""

# A slot is taken for the source first; the user's only when the source had one, so a source
# over its limit cannot lock other users out. A key whose window has passed starts a new one.
_UPSERT = """
INSERT INTO login_failures AS f (scope, key, window_start, failures)
SELECT %(scope)s, %(key)s, now(), 1 {guard}
ON CONFLICT (scope, key) DO UPDATE SET
    window_start = CASE WHEN f.window_start <= now() - make_interval(secs => %(window)s)
                        THEN now() ELSE f.window_start END,
    failures = CASE WHEN f.window_start <= now() - make_interval(secs => %(window)s)
                    THEN 1 ELSE f.failures + 1 END
WHERE f.window_start <= now() - make_interval(secs => %(window)s) OR f.failures < %(max)s
RETURNING window_start
"""


def _upsert(scope: str, guard: str = "") -> str:
    sql = _UPSERT.format(guard=guard)
    for name in ("scope", "key", "max"):
        sql = sql.replace(f"%({name})s", f"%({scope}_{name})s")
    return sql


_RESERVE = f"""
WITH src AS ({_upsert("source")}),
     usr AS ({_upsert("user", "WHERE EXISTS (SELECT 1 FROM src)")})
SELECT (SELECT window_start FROM src) AS source_start,
       (SELECT window_start FROM usr) AS user_start,
       (SELECT window_start FROM login_failures WHERE scope = 'source' AND key = %(source_key)s) AS source_old,
       (SELECT window_start FROM login_failures WHERE scope = 'user' AND key = %(user_key)s) AS user_old,
       now() AS now
"""

# One row per statement, the source's first: each runs as its own transaction (autocommit), so
# a release never holds one row while it waits for the other. One UPDATE of both rows locked
# them in scan order, the user's first at times, while a concurrent reserve held the source's
# and waited for the same user's: Postgres broke the deadlock by failing one (seen as 503s in
# molecule's STORM-100, 100 logins by 4 users from one address).
_RELEASE = """
UPDATE login_failures SET failures = failures - 1
WHERE failures > 0 AND scope = %s AND key = %s AND window_start = %s
"""

_PURGE = "DELETE FROM login_failures WHERE window_start <= now() - make_interval(secs => %s)"


@dataclass(frozen=True)
class Slot:
    user: str
    source: str
    user_start: datetime
    source_start: datetime


def _too_many(seconds: float) -> TooManyRequests:
    retry = max(1, math.ceil(seconds))
    return TooManyRequests(f"Too many failed logins; try again in {retry} s", {"Retry-After": str(retry)})


class LoginThrottle:
    # One failure in this many also removes the rows whose window has passed.
    PURGE_ONE_IN = 50

    def __init__(self, settings: Settings):
        auth = settings.auth
        self.window = float(auth.throttle_window)
        self.user_max = auth.throttle_user_failures
        self.source_max = auth.throttle_source_failures

    def lookup(self, conn, user: str, source: str) -> str | None:
        """The user's stored password hash; raises TooManyRequests when ``user`` or ``source``
        is locked out. One query: the check rides on the read the login needs anyway."""
        row = conn.execute(
            _LOOKUP,
            {
                "user": user,
                "source": source,
                "window": self.window,
                "user_max": self.user_max,
                "source_max": self.source_max,
            },
        ).fetchone()
        if row["locked_for"] is not None:
            raise _too_many(row["locked_for"].total_seconds())
        return row["password_hash"]

    def reserve(self, conn, user: str, source: str) -> Slot:
        """Count one attempt for ``source`` and ``user`` before a password check runs;
        raises TooManyRequests (nothing counted for the user) when either is at its limit."""
        row = conn.execute(
            _RESERVE,
            {
                "source_scope": "source",
                "source_key": source,
                "source_max": self.source_max,
                "user_scope": "user",
                "user_key": user,
                "user_max": self.user_max,
                "window": self.window,
            },
        ).fetchone()
        if random.randrange(self.PURGE_ONE_IN) == 0:
            conn.execute(_PURGE, (self.window,))
        if row["source_start"] is None or row["user_start"] is None:
            # A concurrent attempt took the last slot between lookup() and here. When only the
            # user was at its limit, the source's attempt stays counted.
            old = row["source_old"] if row["source_start"] is None else row["user_old"]
            left = self.window - (row["now"] - old).total_seconds() if old is not None else self.window
            raise _too_many(left)
        return Slot(user, source, row["user_start"], row["source_start"])

    def release(self, conn, slot: Slot) -> None:
        """A successful check: its attempt does not count."""
        conn.execute(_RELEASE, ("source", slot.source, slot.source_start))
        conn.execute(_RELEASE, ("user", slot.user, slot.user_start))

    def record_failure(self, conn, user: str, source: str) -> None:
        """Count a failed check that took no slot (the "simple" authenticator: no scrypt runs)."""
        try:
            self.reserve(conn, user, source)
        except TooManyRequests:
            pass


class SourceAddress:
    """The client's address, as a throttling key."""

    def __init__(self, settings: Settings):
        self.trusted = parse_networks(settings.server.trusted_proxies)

    def __call__(self, req: falcon.Request) -> str:
        peer = _address(req.remote_addr)
        if peer is not None and any(peer in net for net in self.trusted):
            forwarded = req.get_header("X-Forwarded-For")
            if forwarded:
                # HAProxy appends its own entry (or header line, joined with a comma): the
                # last one is the address it saw; the ones before are the client's claims.
                claimed = _address(forwarded.rsplit(",", 1)[-1])
                if claimed is not None:
                    peer = claimed
        if peer is None:
            return (req.remote_addr or "unknown")[:64]
        if peer.version == 6:
            if peer.ipv4_mapped is not None:
                return str(peer.ipv4_mapped)
            return str(ipaddress.IPv6Network((peer, 64), strict=False))
        return str(peer)


def _address(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not text:
        return None
    text = text.strip()
    if len(text) > 64:
        return None
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def plausible_credential(value: str) -> bool:
    """Whether a credential (Authorization header, cookie) is worth parsing: printable ASCII
    of a sane length. Anything else is 401, never a parse or comparison error."""
    return len(value) <= MAX_CREDENTIAL_CHARS and value.isascii() and value.isprintable()


class WaitSlots:
    """At most ``cap`` concurrent long polls per user in this process.

    A long poll (GET …?wait) holds a request thread for up to server.wait_timeout. Beyond
    the cap the request is answered at once, without waiting: the stock client polls again
    half a second later (it treats any 4xx other than 404/409/422 as fatal, so a 429 would
    fail its ``new_cluster``).
    """

    def __init__(self, cap: int):
        self.cap = cap
        self._lock = threading.Lock()
        self._held: dict[str, int] = {}

    @contextmanager
    def slot(self, user: str, wanted: bool = True) -> Iterator[bool]:
        """Yields whether this request may wait."""
        if not wanted:
            yield False
            return
        with self._lock:
            granted = self._held.get(user, 0) < self.cap
            if granted:
                self._held[user] = self._held.get(user, 0) + 1
        try:
            yield granted
        finally:
            if granted:
                with self._lock:
                    left = self._held[user] - 1
                    if left:
                        self._held[user] = left
                    else:
                        del self._held[user]

    def held(self, user: str) -> int:
        with self._lock:
            return self._held.get(user, 0)
