"""Browsers may not drive the API from a page: a dashboard is the tenant's page on our origin.

A cluster's dashboard is served by the tenant's own scheduler on the gateway's origin
(``/clusters/<name>/``, as dask-gateway's ``dashboard_link`` has it), so a script in it is
same-origin with the API: ``fetch('/api/v1/clusters/', {credentials: 'include'})`` would
carry the visitor's session cookie or the Basic credentials the browser has cached for the
realm. The API has no web UI, so no page has any business calling it. Browsers say who
started a request (Fetch Metadata, ``Sec-Fetch-*``; ``Origin`` on CORS and non-GET
requests); the dask-gateway client, curl and schedulers send neither. So:

- ``/api/...``: refused (403) when ``Sec-Fetch-Site`` says a page started it (anything but
  ``none``, which is the user's own address bar or bookmark) or an ``Origin`` is present.
- ``/clusters/...`` (reaches the API only without a valid dashboard token, to log in):
  only a top-level navigation (``Sec-Fetch-Mode: navigate``, ``Sec-Fetch-Dest: document``)
  that no page of this origin started (``Sec-Fetch-Site`` not ``same-origin``) may get a
  dashboard token; a fetch, frame or ``window.open`` from a dashboard page may not.

Runs before authentication, so a refused request never meets a credential check (nor a
browser's Basic prompt).
"""

from __future__ import annotations

import falcon

from gatewayha.errors import Forbidden


class RefuseBrowserPageCalls:
    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        site = (req.get_header("Sec-Fetch-Site") or "").lower()
        if req.path.startswith("/clusters/"):
            if not site:
                return  # not a browser that sends Fetch Metadata (curl, scripts)
            mode = (req.get_header("Sec-Fetch-Mode") or "").lower()
            dest = (req.get_header("Sec-Fetch-Dest") or "").lower()
            if mode != "navigate" or dest != "document" or site == "same-origin":
                raise Forbidden(
                    "A dashboard opens only from its link (the address bar, or a page of another origin);"
                    " a page of this origin may not log in to one"
                )
            return
        if (site and site != "none") or req.get_header("Origin") is not None:
            raise Forbidden("The API does not answer requests made by a web page")
