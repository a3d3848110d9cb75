"""The authenticator interface: from a request's credentials to a ``User``, or to none.

An authenticator looks at the credentials of its own scheme (``scheme``: the first word of
the Authorization header, in lower case) and answers one of three ways:

- a ``User``: the caller is this user;
- ``None``: these credentials are not its kind, or there are none; the next one is asked;
- ``Unauthorized`` raised: credentials of its kind that are wrong (a bad password, a revoked
  token, garbled encoding). The search ends there, with a 401.

Everything around it belongs to the middleware (api.middleware.Authenticate): the session
cookie (checked before any authenticator, issued after a success when ``session`` is set),
adding new user names to the users table (``provisions``), cluster tokens (never seen by an
authenticator), the 401 with every configured authenticator's challenge.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    import falcon

    from gatewayha.config import AuthSettings, Settings


@dataclass(frozen=True)
class User:
    """Who is calling. Only ``name`` survives a session cookie (see Authenticator.session)."""

    name: str
    groups: frozenset[str] = frozenset()
    admin: bool = False


def authorization(req: falcon.Request) -> tuple[str, str]:
    """The Authorization header as (scheme in lower case, credentials); ("", "") without one."""
    scheme, _, value = (req.get_header("Authorization") or "").partition(" ")
    return scheme.lower(), value.strip()


class Authenticator(abc.ABC):
    """One way of telling who a caller is; a subclass plus a line in ``REGISTRY`` adds one."""

    # The Authorization scheme it reads, in lower case. Two configured authenticators may not
    # read the same one: the first would answer (or refuse) every such credential.
    scheme: ClassVar[str]
    # Whether a success is remembered in the session cookie, so the next requests skip this
    # authenticator. The cookie carries the user's name only: an authenticator whose users
    # have groups or admin rights leaves this False until the cookie carries them too.
    session: ClassVar[bool] = True
    # Whether the names it returns may be new to the users table (the middleware adds them).
    provisions: ClassVar[bool] = False

    def __init__(self, settings: Settings, pool) -> None:
        self.settings = settings
        self.pool = pool

    @classmethod
    def check_settings(cls, auth: AuthSettings) -> None:
        """Raise config.ConfigError, naming the setting, for what this authenticator needs."""
        return None  # nothing, by default

    @abc.abstractmethod
    def authenticate(self, req: falcon.Request) -> User | None:
        """The caller, None when the credentials are not this one's kind, or raise Unauthorized."""

    def challenge(self) -> str | None:
        """The WWW-Authenticate challenge a 401 carries for this authenticator (None: none)."""
        return None

    def response_headers(self, req: falcon.Request, user: User) -> dict[str, str]:
        """Headers for the answer to a request this authenticator accepted (a Kerberos
        mutual-authentication token: kept on ``req.context`` by ``authenticate``)."""
        return {}
