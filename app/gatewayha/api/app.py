"""create_app(settings, pool) -> falcon.App; the same factory serves gunicorn and tests."""

from __future__ import annotations

import falcon

from gatewayha.api import errors, resources
from gatewayha.api.middleware import Authenticate, RequestId
from gatewayha.config import Settings


def create_app(settings: Settings, pool) -> falcon.App:
    app = falcon.App(middleware=[RequestId(), Authenticate(settings, pool)])
    app.req_options.strip_url_path_trailing_slash = True
    app.req_options.auto_parse_qs_csv = False
    errors.install(app)
    r = resources
    app.add_route("/api/health", r.Health(settings, pool))
    app.add_route("/api/version", r.Version(settings, pool))
    app.add_route("/api/v1/options", r.Options(settings, pool))
    app.add_route("/api/v1/clusters", r.Clusters(settings, pool))
    app.add_route("/api/v1/clusters/{name}", r.Cluster(settings, pool))
    app.add_route("/api/v1/clusters/{name}/scale", r.Scale(settings, pool))
    app.add_route("/api/v1/clusters/{name}/adapt", r.Adapt(settings, pool))
    app.add_route("/api/v1/clusters/{name}/heartbeat", r.Heartbeat(settings, pool))
    return app
