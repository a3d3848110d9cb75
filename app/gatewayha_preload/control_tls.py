"""Scheduler preload, imported by module name in place of ``dask_gateway.scheduler_preload``: the stock
gateway service (heartbeats, ``/api/comm``, adaptive scaling, idle timeout), with its control
API served over TLS with the cluster's own certificate.

The API posts scale and adapt to ``/api/comm`` with the cluster's token, from whichever gateway
node serves the request: across the LAN. The stock service listens on plain HTTP and reports
``api_address`` as ``http://host:port``; here the same tornado application listens with
``ssl_options`` (the scheduler's own ``tls.crt``/``tls.key``, TLS 1.2 or later) and reports
``https://host:port``. The API sends the token only to ``https://`` addresses and only after the
server proved it holds that cluster's key (``gatewayha.api.resources``, ``_Forward._send``).

How it hooks in, and why like this: ``dask_setup`` below is the stock click command (the same
``--dg-*`` options; distributed allows one click-configurable preload per process, so this module
replaces the stock one on the command line rather than joining it). Its callback is run with
the module's ``GatewaySchedulerService`` swapped for a subclass whose ``listen`` adds
``ssl_options`` to the stock ``self.app.listen(...)`` call and rewrites the reported scheme. The
rest of the stock code runs unchanged. Fail closed: if a future dask-gateway stops building its
service from that name or stops listening through ``self.app.listen``, the checks after the
setup find a plain-HTTP server and the scheduler exits (the launch fails visibly) instead of
serving the token's endpoint in clear.

Like ``prompt_reports`` it imports only distributed, dask-gateway and the standard library, never
``gatewayha`` (see the package's docstring).
"""

import functools
import logging
import ssl
import sys

import click
from dask_gateway import scheduler_preload as stock

log = logging.getLogger("distributed.gatewayha")


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """TLS for the control API: the cluster's own cert and key, TLS 1.2 or later. No client
    certificate is asked for: the API authenticates with the cluster token, which it sends only
    once this certificate is verified (the token is the secret this protects)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_file, key_file)
    return ctx


class TLSGatewaySchedulerService(stock.GatewaySchedulerService):
    def listen(self, address):
        security = self.scheduler.security
        cert, key = security.tls_scheduler_cert, security.tls_scheduler_key
        if not cert or not key:
            raise RuntimeError("the scheduler has no TLS certificate and key (--tls-cert, --tls-key)")
        # The stock listen() calls self.app.listen(address=ip, port=port) and tornado hands extra
        # keyword arguments to its HTTPServer: an instance attribute that shadows the method, for
        # this one call, makes that server a TLS one without copying the rest of listen().
        self.app.listen = functools.partial(self.app.listen, ssl_options=server_context(cert, key))
        try:
            super().listen(address)
        finally:
            del self.app.listen
        if self.server is None or self.server.ssl_options is None:
            raise RuntimeError("the control API is not listening with TLS")
        scheme, sep, rest = self.api_address.partition("://")
        if (scheme, sep) != ("http", "://"):
            raise RuntimeError(f"unexpected api_address {self.api_address!r}")
        # Before any heartbeat: listen() only scheduled the heartbeat loop, which has not run yet.
        self.api_address = f"https://{rest}"


def _setup(scheduler, **options):
    stock_service = stock.GatewaySchedulerService
    stock.GatewaySchedulerService = TLSGatewaySchedulerService
    try:
        stock.dask_setup.callback(scheduler, **options)
    finally:
        stock.GatewaySchedulerService = stock_service
    service = scheduler.services.get("gateway")
    if not isinstance(service, TLSGatewaySchedulerService) or not service.api_address.startswith("https://"):
        log.error("gatewayha: the gateway service's control API is not served over TLS; shutting down")
        sys.exit(1)
    log.info("gatewayha: control API over TLS at %s", service.api_address)


dask_setup = click.Command(
    stock.dask_setup.name,
    params=stock.dask_setup.params,
    callback=_setup,
    help=stock.dask_setup.help,
)
