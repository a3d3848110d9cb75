"""Authenticators: who is calling, from a request's credentials (docs/auth.md).

``auth.authenticators`` names the ones in use, tried in that order. A new one (JupyterHub,
Kerberos) is a module here with an ``Authenticator`` subclass and one line in ``REGISTRY``.
"""

from __future__ import annotations

from gatewayha.auth.authenticators.base import Authenticator, User, authorization
from gatewayha.auth.authenticators.basic import BasicAuthenticator
from gatewayha.auth.authenticators.simple import SharedPasswordAuthenticator
from gatewayha.auth.authenticators.token import ApiTokenAuthenticator
from gatewayha.config import AuthSettings, ConfigError, Settings

__all__ = ["REGISTRY", "Authenticator", "User", "authorization", "build", "check_settings"]

REGISTRY: dict[str, type[Authenticator]] = {
    "token": ApiTokenAuthenticator,
    "basic": BasicAuthenticator,
    "simple": SharedPasswordAuthenticator,
}


def check_settings(auth: AuthSettings) -> None:
    """Raise ConfigError for an unknown name, one named twice, two that read the same
    scheme, or what an authenticator's own settings lack."""
    names = auth.chosen()
    where = "auth.authenticators" if auth.authenticators else "auth.type"
    if not names:
        raise ConfigError(f"auth.authenticators: name at least one of {', '.join(REGISTRY)}")
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise ConfigError(f"{where}: unknown authenticator {unknown[0]!r}; known: {', '.join(REGISTRY)}")
    readers: dict[str, str] = {}
    for name in names:
        scheme = REGISTRY[name].scheme
        if name in readers.values():
            raise ConfigError(f"{where}: {name!r} named twice")
        if scheme in readers:
            raise ConfigError(f"{where}: {readers[scheme]!r} and {name!r} both read {scheme!r} credentials; choose one")
        readers[scheme] = name
        REGISTRY[name].check_settings(auth)


def build(settings: Settings, pool) -> list[Authenticator]:
    """The configured authenticators, in the order they are tried."""
    check_settings(settings.auth)
    return [REGISTRY[name](settings, pool) for name in settings.auth.chosen()]
