"""The one error hierarchy: domain and API code raise these, the API maps them to responses.

Each class carries the HTTP status it stands for as plain data; nothing here knows
about HTTP frameworks, so db/jobs/backends/routes may raise them freely.
"""

from __future__ import annotations


class GatewayError(Exception):
    status = 400
    headers: dict[str, str] = {}

    def __init__(self, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        if headers:
            self.headers = headers


class BadRequest(GatewayError):
    status = 400


class Unauthorized(GatewayError):
    status = 401


class Forbidden(GatewayError):
    status = 403


class NotFound(GatewayError):
    status = 404


class Conflict(GatewayError):
    status = 409


class LimitExceeded(Conflict):
    """A per-user limit; 409 makes the stock client raise GatewayClusterError with our message."""


class PayloadTooLarge(GatewayError):
    status = 413


class Unprocessable(GatewayError):
    status = 422


class Unavailable(GatewayError):
    status = 503


class TooManyRequests(GatewayError):
    """Throttled (login attempts); carries Retry-After."""

    status = 429
