"""The one error hierarchy: every error gatewayha raises on purpose is a ``GatewayError``.

Two branches under the root:

- ``ApiError`` and its subclasses are answers to an API client: each carries the HTTP status it
  stands for (and headers) as plain data, and ``gatewayha.api.errors`` turns them into
  ``{"error": message}``, the one place errors meet HTTP.
- The others (a bad setting, a malformed value or job, a backend or HAProxy failure) are not
  meant for a client: should one reach the API it is a 500 "Internal server error", logged.

Nothing here knows about HTTP frameworks, so db/jobs/backends/routes may raise them freely,
and a caller can catch every error of gatewayha's own with ``except GatewayError``.
"""

from __future__ import annotations


class GatewayError(Exception):
    """The root. Not an answer to a client by itself (500, message not shown)."""

    status = 500
    headers: dict[str, str] = {}

    def __init__(self, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        if headers:
            self.headers = headers


# --- answers to API clients: status and message are sent as they are -------------------


class ApiError(GatewayError):
    status = 400


class BadRequest(ApiError):
    status = 400


class Unauthorized(ApiError):
    status = 401


class Forbidden(ApiError):
    status = 403


class NotFound(ApiError):
    status = 404


class Conflict(ApiError):
    status = 409


class LimitExceeded(Conflict):
    """A per-user limit; 409 makes the stock client raise GatewayClusterError with our message."""


class PayloadTooLarge(ApiError):
    status = 413


class Unprocessable(ApiError):
    status = 422


class Unavailable(ApiError):
    status = 503


class DatabaseUnavailable(Unavailable):
    """Postgres cannot be reached or did not answer in time (pool wait, connect or statement
    timeout): the client may try again shortly."""

    MESSAGE = "Database unavailable, try again shortly"

    def __init__(self, message: str = MESSAGE, headers: dict[str, str] | None = None):
        super().__init__(message, headers or {"Retry-After": "2"})


class TooManyRequests(ApiError):
    """Throttled (login attempts); carries Retry-After."""

    status = 429


# --- not for clients ----------------------------------------------------------------------


class ConfigError(GatewayError, ValueError):
    """A bad setting: the service does not start (gatewayha.config)."""


class InvalidValue(GatewayError, ValueError):
    """A value that is not of its kind (gatewayha.validate): a name, an address, a map entry."""


class MalformedJob(GatewayError, ValueError):
    """A job whose kind or payload no handler can run: it fails at once, never retried."""


class BackendError(GatewayError, RuntimeError):
    """The machinery that runs Dask processes failed (systemd-run, no free uid, ...)."""


class BackendUnavailable(BackendError):
    """The machinery does not answer (a batch system's controller is down): a start waits for it
    (bounded by cluster.start_timeout) instead of spending its attempts."""


class BackendRefused(BackendError):
    """The machinery refused a start for a reason another try would meet again (a batch
    system's invalid partition, a limit of the user's): the cluster fails at once with it."""
