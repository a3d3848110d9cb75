"""One error hierarchy mapped to HTTP in one place: every error is ``{"error": ...}``."""

from __future__ import annotations

import logging

import falcon

from gatewayha.clusters import ClusterError
from gatewayha.db.pool import UNAVAILABLE_ERRORS
from gatewayha.options import OptionError

log = logging.getLogger("gatewayha.api")


class APIError(Exception):
    status = 400
    headers: dict = {}

    def __init__(self, message: str, headers: dict | None = None):
        super().__init__(message)
        self.message = message
        if headers:
            self.headers = headers


class BadRequest(APIError):
    status = 400


class Unauthorized(APIError):
    status = 401


class Forbidden(APIError):
    status = 403


class NotFound(APIError):
    status = 404


class Conflict(APIError):
    status = 409


class PayloadTooLarge(APIError):
    status = 413


class Unprocessable(APIError):
    status = 422


class Unavailable(APIError):
    status = 503


def _render(resp: falcon.Response, status: int, message: str, headers: dict | None = None) -> None:
    resp.status = status
    resp.media = {"error": message}
    for k, v in (headers or {}).items():
        resp.set_header(k, v)


def install(app: falcon.App) -> None:
    """Register handlers; the most specific class wins (Falcon picks by MRO)."""

    def unexpected(req, resp, ex, params):
        log.exception("unhandled error request_id=%s %s %s", req.context.get("request_id"), req.method, req.path)
        _render(resp, 500, "Internal server error")

    def unavailable(req, resp, ex, params):
        log.warning("database unavailable request_id=%s: %s", req.context.get("request_id"), ex)
        _render(resp, 503, "Database unavailable, try again shortly", {"Retry-After": "2"})

    def api_error(req, resp, ex: APIError, params):
        _render(resp, ex.status, ex.message, ex.headers)

    def domain_error(req, resp, ex: ClusterError, params):
        _render(resp, ex.status, ex.message)

    def option_error(req, resp, ex: OptionError, params):
        _render(resp, 422, str(ex))

    def http_error(req, resp, ex: falcon.HTTPError, params):
        message = ex.description or ex.title or "error"
        _render(resp, ex.status_code, message, dict(ex.headers or {}))

    app.add_error_handler(Exception, unexpected)
    app.add_error_handler(falcon.HTTPError, http_error)
    for exc in UNAVAILABLE_ERRORS:
        app.add_error_handler(exc, unavailable)
    app.add_error_handler(APIError, api_error)
    app.add_error_handler(ClusterError, domain_error)
    app.add_error_handler(OptionError, option_error)
