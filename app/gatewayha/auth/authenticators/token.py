"""API tokens (``gatewayha-admin token create``): ``Authorization: token gha_<id>_<secret>``."""

from __future__ import annotations

import falcon

from gatewayha.auth import secrets as sec
from gatewayha.auth import users
from gatewayha.auth.authenticators.base import Authenticator, User, authorization
from gatewayha.errors import Unauthorized


class ApiTokenAuthenticator(Authenticator):
    """A token of the api_tokens table, unexpired. Other ``token`` credentials are cluster
    tokens, which the middleware keeps from every authenticator."""

    scheme = "token"
    # One indexed query per request; a session would outlive the token's revocation.
    session = False

    def authenticate(self, req: falcon.Request) -> User | None:
        scheme, value = authorization(req)
        if scheme != self.scheme or not sec.is_api_token(value):
            return None
        with self.pool.connection() as conn:
            name = users.token_user(conn, value)
        if name is None:
            raise Unauthorized("Invalid API token")
        return User(name)

    # No challenge: a client is given its token beforehand and never asks for one, and a
    # "token" challenge on a user's route would read as a request for a cluster token.
