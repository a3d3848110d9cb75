"""``/clusters/<name>/...`` when HAProxy found no valid dashboard token for that cluster.

HAProxy sends a dashboard request here only when it carries no valid token for the cluster
in its path (see gatewayha.dashboards and haproxy/haproxy.cfg.j2). The caller authenticates
like any API call (the Authenticate middleware: no credentials -> 401 with a Basic
challenge, which a browser answers with its login prompt); then:

- a cluster that does not exist, or whose dashboard the caller may not see
  (gatewayha.dashboards.may_view), or that has no dashboard now -> 404, as the API answers;
- otherwise a dashboard token for this cluster is set (HttpOnly, SameSite=Strict, Path
  /clusters/<name>/) and the browser is sent back to the same URL, which HAProxy now lets
  through to the dashboard.

Which browser requests may get here at all is api/browser_guard.py's rule.
"""

from __future__ import annotations

import html
from urllib.parse import quote

import falcon

from gatewayha import clusters, dashboards, lifecycle
from gatewayha.api.access import Access
from gatewayha.config import Settings
from gatewayha.errors import NotFound, Unavailable


class DashboardLogin:
    auth = Access.USER

    def __init__(self, settings: Settings, pool):
        self.settings = settings
        self.pool = pool
        self.secure_cookie = settings.server.public_url.startswith("https://")

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str, rest: str = "") -> None:
        user = req.context.user.name
        with self.pool.connection() as conn:
            row = clusters.get_cluster(conn, name)
        if row is None or not dashboards.may_view(user, row):
            raise NotFound(f"Cluster {name} does not exist")
        if row["status"] != lifecycle.ClusterStatus.RUNNING or not row.get("dashboard_address"):
            raise NotFound(f"Cluster {name} has no dashboard now (it is {row['status']})")
        held = (req.get_cookie_values(dashboards.COOKIE) or [None])[0]
        if dashboards.check_token(self.settings.server.secrets, held, name) == user:
            # A valid token came here all the same: HAProxy has no route for it yet (the
            # route sync lags the database by a moment). Redirecting would loop.
            raise Unavailable("The dashboard's route is not ready yet, try again shortly", {"Retry-After": "1"})
        ttl = self.settings.server.cookie_max_age
        resp.set_cookie(
            dashboards.COOKIE,
            dashboards.make_token(self.settings.server.secret, user, name, ttl),
            max_age=ttl,
            path=dashboards.dashboard_path(name),
            secure=self.secure_cookie,
            http_only=True,
            same_site="Strict",
        )
        resp.set_header("Cache-Control", "no-store")
        target = self._same_url(req, name)
        if (req.get_header("Sec-Fetch-Site") or "").lower() in ("cross-site", "same-site"):
            # A navigation another site started does not send a SameSite=Strict cookie, nor
            # does a redirect that continues it: reload from a page of this origin instead.
            resp.status = falcon.HTTP_200
            resp.content_type = "text/html; charset=utf-8"
            url = html.escape(target, quote=True)
            resp.text = f'<!doctype html><meta http-equiv="refresh" content="0;url={url}"><a href="{url}">{url}</a>\n'
            return
        resp.status = falcon.HTTP_303
        resp.set_header("Location", target)

    on_head = on_get

    @staticmethod
    def _same_url(req: falcon.Request, name: str) -> str:
        # req.path has its trailing slash stripped (app option); the raw path keeps it.
        path = req.env.get("PATH_INFO") or req.path
        if path.rstrip("/") == f"/clusters/{name}":
            path = dashboards.dashboard_path(name)  # the token's cookie Path needs the slash
        target = quote(path, safe="/:@!$&'()*+,;=-._~")
        return f"{target}?{req.query_string}" if req.query_string else target
