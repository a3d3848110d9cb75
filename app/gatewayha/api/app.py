"""create_app(settings, pool) -> falcon.App; the same factory serves gatewayha-api and tests.

``heartbeat_pool`` serves scheduler heartbeats and ``health_pool`` /api/health, each apart from
the main pool and from each other: in a start storm neither queues behind user requests, and
HAProxy's health checks do not queue behind a hundred schedulers' heartbeats (which would
take every instance out at once).
"""

from __future__ import annotations

import falcon

from gatewayha.api import errors, resources
from gatewayha.api.browser_guard import RefuseBrowserPageCalls
from gatewayha.api.dashboards import DashboardLogin
from gatewayha.api.middleware import Authenticate, DrainBody, RequestId
from gatewayha.config import Settings

# Unread request bodies are drained up to this size before the answer (middleware.DrainBody);
# HAProxy refuses a larger Content-Length at the edge.
DRAIN_BYTES = 8 * 1024 * 1024


def create_app(settings: Settings, pool, heartbeat_pool=None, health_pool=None, watch=None) -> falcon.App:
    heartbeat_pool = pool if heartbeat_pool is None else heartbeat_pool
    health_pool = pool if health_pool is None else health_pool
    app = falcon.App(
        middleware=[RequestId(), DrainBody(DRAIN_BYTES), RefuseBrowserPageCalls(), Authenticate(settings, pool)]
    )
    app.req_options.strip_url_path_trailing_slash = True
    app.req_options.auto_parse_qs_csv = False
    errors.install(app)
    r = resources
    app.add_route("/api/health", r.Health(settings, health_pool))
    app.add_route("/api/version", r.Version(settings, pool))
    app.add_route("/api/v1/options", r.Options(settings, pool))
    app.add_route("/api/v1/clusters", r.Clusters(settings, pool))
    app.add_route("/api/v1/clusters/{name}", r.Cluster(settings, pool, watch))
    app.add_route("/api/v1/clusters/{name}/scale", r.Scale(settings, pool))
    app.add_route("/api/v1/clusters/{name}/adapt", r.Adapt(settings, pool))
    app.add_route("/api/v1/clusters/{name}/heartbeat", r.Heartbeat(settings, heartbeat_pool))
    # Dashboards without a valid token (HAProxy sends the others straight to the scheduler).
    dashboard_login = DashboardLogin(settings, pool)
    app.add_route("/clusters/{name}", dashboard_login)
    app.add_route("/clusters/{name}/{rest:path}", dashboard_login)
    return app
