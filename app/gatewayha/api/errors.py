"""Errors mapped to HTTP in one place: every error is ``{"error": ...}``.

``gatewayha.errors.ApiError`` and its subclasses carry their status, message and headers; the
database being unreachable is ``DatabaseUnavailable`` (503); any other error, gatewayha's own
(``GatewayError``: a bad setting, a backend failure) or not, is a logged 500 whose details stay
in the log; Falcon's own errors (no such route, method not allowed) keep their status.
"""

from __future__ import annotations

import logging

import falcon

from gatewayha.db.pool import UNAVAILABLE_ERRORS
from gatewayha.errors import ApiError, DatabaseUnavailable

log = logging.getLogger("gatewayha.api")


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

    def api_error(req, resp, ex: ApiError, params):
        _render(resp, ex.status, ex.message, ex.headers)

    def unavailable(req, resp, ex, params):
        log.warning("database unavailable request_id=%s: %s", req.context.get("request_id"), ex)
        api_error(req, resp, DatabaseUnavailable(), params)

    def http_error(req, resp, ex: falcon.HTTPError, params):
        message = ex.description or ex.title or "error"
        _render(resp, ex.status_code, message, dict(ex.headers or {}))

    app.add_error_handler(Exception, unexpected)
    app.add_error_handler(falcon.HTTPError, http_error)
    for exc in UNAVAILABLE_ERRORS:
        app.add_error_handler(exc, unavailable)
    app.add_error_handler(ApiError, api_error)
