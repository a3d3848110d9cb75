"""One error root, mapped to HTTP in one place (gatewayha.api.errors)."""

from __future__ import annotations

import falcon
import falcon.testing
import psycopg
import pytest

from gatewayha import errors
from gatewayha.api.errors import install
from gatewayha.config import ConfigError
from gatewayha.routes.runtime import RuntimeAPIError


def client_raising(exc: BaseException) -> falcon.testing.TestClient:
    class Raising:
        def on_get(self, req, resp):
            raise exc

    app = falcon.App()
    app.add_route("/x", Raising())
    install(app)
    return falcon.testing.TestClient(app)


@pytest.mark.parametrize(
    "exc, status",
    [
        (errors.BadRequest("Malformed JSON body"), 400),
        (errors.NotFound("Cluster x does not exist"), 404),
        (errors.LimitExceeded("Cluster limit reached"), 409),
        (errors.Unprocessable("count must be an integer"), 422),
        (errors.Unavailable("The scheduler did not answer; try again shortly"), 503),
    ],
)
def test_an_api_error_is_its_status_and_message(exc, status):
    r = client_raising(exc).simulate_get("/x")
    assert r.status_code == status and r.json == {"error": exc.message}


def test_an_api_error_carries_its_headers():
    r = client_raising(errors.TooManyRequests("Too many failed logins", {"Retry-After": "7"})).simulate_get("/x")
    assert r.status_code == 429 and r.headers["Retry-After"] == "7"


@pytest.mark.parametrize(
    "exc",
    [
        errors.DatabaseUnavailable(),
        psycopg.OperationalError("connection refused"),
    ],
)
def test_an_unreachable_database_is_503_with_retry_after(exc):
    r = client_raising(exc).simulate_get("/x")
    assert r.status_code == 503 and r.headers["Retry-After"] == "2"
    assert r.json == {"error": "Database unavailable, try again shortly"}


@pytest.mark.parametrize(
    "exc",
    [
        ConfigError("server.secret: secret detail"),
        errors.InvalidValue("invalid unit name 'secret detail'"),
        errors.MalformedJob("secret detail"),
        errors.BackendError("systemd-run failed: secret detail"),
        RuntimeAPIError("show map", "secret detail"),
        errors.GatewayError("secret detail"),
        RuntimeError("secret detail"),
    ],
)
def test_errors_not_meant_for_clients_are_a_500_without_details(exc):
    r = client_raising(exc).simulate_get("/x")
    assert r.status_code == 500 and r.json == {"error": "Internal server error"}


def test_every_error_of_gatewayha_has_one_root():
    for cls in (ConfigError, RuntimeAPIError, errors.DatabaseUnavailable, errors.BackendError, errors.MalformedJob):
        assert issubclass(cls, errors.GatewayError)
    # and keeps the builtin base its callers catch
    assert issubclass(ConfigError, ValueError) and issubclass(errors.InvalidValue, ValueError)
    assert issubclass(errors.BackendError, RuntimeError)
