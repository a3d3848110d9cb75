"""The API's calls to a scheduler's control API (dask-gateway's ``/api/comm``: scale, adapt).

A call carries the cluster's token, and the API instance that serves the user's request need
not run on the scheduler's node: it crosses the LAN. So it goes over TLS only, to a server that
proves it holds that cluster's key, before a byte of the request is sent:

- the scheduler serves the control API with the cluster's own cert and key
  (``gatewayha_preload/control_tls.py``) and reports ``api_address`` as ``https://host:port``;
- the only trust anchor is that cluster's cert, from its row (``clusters.tls_cert``), never the
  system store: a server with another cluster's cert, a self-made one or none fails the
  handshake, and the token is never written;
- the name checked is the cert's SAN (``dask-internal``, the same in every cluster cert), not
  the node's host, which no cluster cert names; what tells clusters apart is the trust anchor
  plus a pin: the server's cert must be exactly the cluster's (a cert that the cluster key
  signed, which only the cluster's own processes could make, is refused too);
- an ``http://`` address gets nothing (no connection at all): schedulers started by a release
  before this one serve plain HTTP; they keep running and computing, but scaling them needs a
  new cluster (``PLAIN_HTTP_REFUSED``). Sending their token in clear "only during the upgrade"
  would keep doing so for as long as such clusters live, which is what this module ends.

No redirect is followed (http.client follows none: a 3xx is a refusal), and the scheduler gets
``SCHEDULER_TIMEOUT_S`` for the connection, the handshake and each read.
"""

from __future__ import annotations

import http.client
import json
import logging
import ssl

from gatewayha import tls, validate
from gatewayha.errors import InvalidValue, Unavailable

log = logging.getLogger("gatewayha.control")

SCHEDULER_TIMEOUT_S = 3.0
MAX_RESPONSE_BYTES = 65_536
PLAIN_HTTP_REFUSED = (
    "This cluster's scheduler serves its control API without TLS (it was started by an earlier"
    " gatewayha release), and the gateway does not send the cluster's token in clear: shut the"
    " cluster down and create a new one to scale or adapt it"
)


class NotThisCluster(ssl.SSLCertVerificationError):
    """The server's certificate verified but is not the cluster's own."""


def client_context(cert_pem: str) -> ssl.SSLContext:
    """Verify the server against this one cluster cert (CA and leaf at once) and nothing else."""
    ctx = ssl.create_default_context(cadata=cert_pem)  # no system CAs when cadata is given
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    # Python 3.13 turns on X509_STRICT, which wants extensions (key usage, key identifiers) the
    # cluster certs already in the database lack; against one pinned cert it adds nothing.
    ctx.verify_flags &= ~getattr(ssl, "VERIFY_X509_STRICT", 0)
    return ctx


class ClusterConnection(http.client.HTTPSConnection):
    """HTTPS to a scheduler's control API, trusting only that cluster's certificate."""

    def __init__(self, host: str, port: int, cert_pem: str, timeout: float):
        super().__init__(host, port, timeout=timeout, context=client_context(cert_pem))
        self._pinned = ssl.PEM_cert_to_DER_cert(cert_pem)

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)  # TCP, with the timeout
        # HTTPSConnection would check the node's host name, which no cluster cert carries; the
        # cert's own SAN is checked instead (hostname checking stays on). It identifies no
        # cluster by itself (every cluster cert has it): the trust anchor and the pin do.
        self.sock = self._context.wrap_socket(self.sock, server_hostname=tls.CLUSTER_SAN)
        if self.sock.getpeercert(binary_form=True) != self._pinned:
            raise NotThisCluster("the server's certificate is not the cluster's own")


def post_comm(api_address: str, cert_pem: str | None, token: str, msg: dict) -> None:
    """POST ``msg`` to the scheduler's ``/api/comm``; Unavailable (503) on any failure."""
    try:
        parsed = validate.reported_address("api_address", api_address)
    except InvalidValue:
        parsed = None
    if parsed is not None and parsed.scheme == "http":
        raise Unavailable(PLAIN_HTTP_REFUSED)
    if parsed is None or not cert_pem:
        raise Unavailable("The scheduler's control address is not usable")
    conn = ClusterConnection(parsed.host, parsed.port, cert_pem, SCHEDULER_TIMEOUT_S)
    try:
        conn.request(
            "POST",
            "/api/comm",
            body=json.dumps(msg).encode(),
            headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
        )
        response = conn.getresponse()
        response.read(MAX_RESPONSE_BYTES)
    except ssl.SSLCertVerificationError as exc:
        log.warning("control call to %s refused before sending anything: %s", api_address, exc)
        raise Unavailable("The scheduler's control port did not present this cluster's certificate") from None
    except (OSError, http.client.HTTPException):
        raise Unavailable("The scheduler did not answer; try again shortly") from None
    finally:
        conn.close()
    if not 200 <= response.status < 300:
        raise Unavailable(f"The scheduler refused the request ({response.status})")
