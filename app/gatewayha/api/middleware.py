"""Cross-cutting concerns: request id, request bodies and authentication."""

from __future__ import annotations

import logging
import time
import uuid

import falcon

from gatewayha import validate
from gatewayha.api.access import Access
from gatewayha.api.throttle import plausible_credential
from gatewayha.auth import authenticators, users
from gatewayha.auth import secrets as sec
from gatewayha.auth.authenticators import User, authorization
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
        user = req.context.get("user")
        log.info(
            "request_id=%s user=%s %s %s -> %s %.1fms",
            req.context.get("request_id"),
            user.name if user else None,
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


class Authenticate:
    """Who is calling, for every resource but ``Access.PUBLIC`` ones (api.access).

    In this order:

    1. An Authorization header that is no printable ASCII of a sane length: 401.
    2. Cluster tokens (``Authorization: token <t>``, anything but an API token's shape): on a
       scheduler's resource it is kept in ``req.context.cluster_token`` for the resource to
       check against its cluster; anywhere else it is refused. No user authenticator ever
       sees one, and a scheduler's resource never asks them.
    3. The session cookie (issued here, after a login by an authenticator with ``session``).
    4. The configured authenticators (``auth.authenticators``, gatewayha.auth.authenticators)
       in order; the first to name a user wins, the first to refuse the credentials ends it.

    ``req.context.user`` is then a ``User``. Without one: 401 with every configured
    authenticator's challenge: the stock client only sends credentials after a 401.
    """

    def __init__(self, settings: Settings, pool):
        self.settings = settings
        self.pool = pool
        self.authenticators = authenticators.build(settings, pool)
        challenges = [c for c in (a.challenge() for a in self.authenticators) if c]
        # Several challenges share one field (RFC 9110 11.6.1): Falcon writes one line per name.
        self.challenge = {"WWW-Authenticate": ", ".join(challenges)} if challenges else {}
        self.secure_cookie = settings.server.public_url.startswith("https://")

    def process_resource(self, req: falcon.Request, resp: falcon.Response, resource, params) -> None:
        access = getattr(resource, "auth", Access.USER)
        if resource is None or access is Access.PUBLIC:
            return
        req.context.user = None
        req.context.cluster_token = None
        if not plausible_credential(req.get_header("Authorization") or ""):  # non-ASCII, control characters, oversized
            raise Unauthorized("Malformed credentials", self.challenge)
        if self._cluster_token(req, access):
            return
        req.context.user = self._session(req) or self._authenticate(req, resp)

    def _cluster_token(self, req: falcon.Request, access: Access) -> bool:
        """Whether the request is a scheduler's (its token kept for the resource to check)."""
        scheme, value = authorization(req)
        presented = scheme == "token" and bool(value)
        if access is Access.SCHEDULER:
            if not presented:
                raise Unauthorized("A cluster token is required", {"WWW-Authenticate": "token"})
        elif not presented or sec.is_api_token(value):
            return False
        elif access is not Access.USER_OR_SCHEDULER:
            raise Unauthorized("Cluster tokens are not accepted here", self.challenge)
        req.context.cluster_token = value
        return True

    def _session(self, req: falcon.Request) -> User | None:
        cookie = (req.get_cookie_values(self.settings.server.cookie_name) or [None])[0]
        if not cookie or not plausible_credential(cookie):
            return None
        name = sec.check_session_cookie(self.settings.server.secrets, cookie)
        return None if name is None else User(name)

    def _authenticate(self, req: falcon.Request, resp: falcon.Response) -> User:
        for authenticator in self.authenticators:
            try:
                user = authenticator.authenticate(req)
            except Unauthorized as exc:
                raise Unauthorized(exc.message, {**self.challenge, **exc.headers}) from None
            if user is None:
                continue
            if not validate.is_user_name(user.name):  # names go into SQL rows, logs and the cookie
                raise Unauthorized("Invalid user name", self.challenge)
            if authenticator.provisions:
                with self.pool.connection() as conn:
                    users.ensure_user(conn, user.name)
            if authenticator.session:
                self._issue_session(resp, user)
            for name, value in authenticator.response_headers(req, user).items():
                resp.set_header(name, value)
            return user
        raise Unauthorized("Authentication required", self.challenge)

    def _issue_session(self, resp: falcon.Response, user: User) -> None:
        server = self.settings.server
        resp.set_cookie(
            server.cookie_name,
            sec.make_session_cookie(server.secret, user.name, server.cookie_max_age),
            max_age=server.cookie_max_age,
            # Only the API needs it: never sent with a dashboard request (api/browser_guard.py).
            path="/api/",
            secure=self.secure_cookie,
            http_only=True,
            same_site="Strict",
        )
