"""One shared password for any user name: dask-gateway's SimpleAuthenticator (for trials)."""

from __future__ import annotations

from gatewayha.auth import secrets as sec
from gatewayha.auth.authenticators.base import User
from gatewayha.auth.authenticators.basic import WRONG, BasicScheme
from gatewayha.config import AuthSettings, ConfigError, Settings
from gatewayha.errors import Unauthorized


class SharedPasswordAuthenticator(BasicScheme):
    """``Authorization: Basic`` with any user name and ``auth.simple_password``; a name seen
    for the first time becomes a user. Failures are throttled like Basic's."""

    provisions = True

    def __init__(self, settings: Settings, pool) -> None:
        super().__init__(settings, pool)
        self.password = settings.auth.simple_password.encode("latin1")

    @classmethod
    def check_settings(cls, auth: AuthSettings) -> None:
        if not auth.simple_password:
            raise ConfigError("auth.simple_password: required by the 'simple' authenticator")
        try:
            auth.simple_password.encode("latin1")
        except UnicodeEncodeError:
            raise ConfigError("auth.simple_password: latin-1 characters only (what Basic carries)") from None

    def login(self, name: str, password: str, source: str) -> User:
        with self.pool.connection() as conn:
            self.throttle.lookup(conn, name, source)  # 429 when locked out
            if not sec.hmac.compare_digest(password.encode("latin1"), self.password):
                self.throttle.record_failure(conn, name, source)
                raise Unauthorized(WRONG)
        return User(name)
