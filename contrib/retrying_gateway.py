"""A dask-gateway client that rides out gatewayha failovers: copy this file next to your code.

The stock ``dask_gateway.Gateway`` sends each API call once: a call in flight when a VIP moves
or an API instance dies fails, and the user must repeat it. ``RetryingGateway`` is the stock
client with two additions:

* every API call is retried on connection errors, timeouts and 502/503/504, with exponential
  backoff and full jitter (0.25 s doubling to at most 5 s) for up to ``retry_for`` seconds
  (60: a node failover takes seconds, a database restart some more),
* every cluster create carries an ``Idempotency-Key`` header (one random key per create,
  the same on each retry), so a create whose answer was lost and that is sent again returns
  the cluster the first attempt made instead of making a second one. gatewayha keeps the
  key with the cluster; dask-gateway-server ignores the header.

Usage is the stock client's::

    from retrying_gateway import RetryingGateway
    gateway = RetryingGateway("http://gateway.example:8000", auth="basic")
    cluster = gateway.new_cluster()

Connected Dask clients (``cluster.get_client()``) are not covered: a VIP move breaks their
TCP connection; reconnect with ``gateway.connect(name).get_client()``.
"""

from __future__ import annotations

import asyncio
import contextvars
import random
import time
import uuid

import aiohttp
from dask_gateway import Gateway

RETRY_STATUS = {502, 503, 504}
_create_key: contextvars.ContextVar[str | None] = contextvars.ContextVar("gatewayha_create_key", default=None)


async def _add_idempotency_key(session, ctx, params) -> None:
    key = _create_key.get()
    if key is not None and params.method == "POST":
        params.headers["Idempotency-Key"] = key


def _transient(e: BaseException) -> bool:
    if isinstance(e, aiohttp.ClientResponseError):
        return e.status in RETRY_STATUS
    return isinstance(e, (aiohttp.ClientConnectionError, asyncio.TimeoutError, OSError))  # noqa: UP041 (3.10)


class RetryingGateway(Gateway):
    retry_for = 60.0
    base_delay = 0.25
    max_delay = 5.0

    def _backoff(self):
        """Delays before successive retries (exponential, full jitter) until retry_for passed."""
        deadline = time.monotonic() + self.retry_for
        attempt = 0
        while True:
            delay = random.uniform(0, min(self.max_delay, self.base_delay * 2**attempt))
            if time.monotonic() + delay > deadline:
                return
            yield delay
            attempt += 1

    async def _retrying(self, call):
        """``await call()`` until it succeeds, fails for good, or ``retry_for`` passed."""
        delays = self._backoff()
        while True:
            try:
                return await call()
            except Exception as e:
                delay = next(delays, None) if _transient(e) else None
                if delay is None:
                    raise
            await asyncio.sleep(delay)

    def _retrying_sync(self, call):
        delays = self._backoff()
        while True:
            try:
                return call()
            except Exception as e:
                delay = next(delays, None) if _transient(e) else None
                if delay is None:
                    raise
            time.sleep(delay)

    async def _request(self, method, url, json=None):
        if self._session is None:
            # The stock client's session (cookies kept for IP addresses too) plus a hook that
            # adds the create's Idempotency-Key to its POSTs.
            trace = aiohttp.TraceConfig()
            trace.on_request_start.append(_add_idempotency_key)
            self._session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True), trace_configs=[trace])
        return await self._retrying(lambda: super(RetryingGateway, self)._request(method, url, json=json))

    async def _submit(self, cluster_options=None, **kwargs):
        token = _create_key.set(uuid.uuid4().hex)
        try:
            return await super()._submit(cluster_options, **kwargs)
        finally:
            _create_key.reset(token)

    # The stock new_cluster() hands everything to a GatewayCluster with a stock Gateway of its
    # own; here the create and the wait for RUNNING run on this (retrying) gateway, and the
    # stock cluster object only connects to the RUNNING cluster (one GET and the TLS
    # connection to the scheduler), retried as a whole.
    def new_cluster(self, cluster_options=None, shutdown_on_close=True, **kwargs):
        if self.asynchronous:
            return self._new_cluster_async(cluster_options, shutdown_on_close, **kwargs)
        name = self.submit(cluster_options, **kwargs)
        self.sync(self._wait_for_start, name)
        return self._retrying_sync(lambda: self.connect(name, shutdown_on_close=shutdown_on_close))

    async def _new_cluster_async(self, cluster_options, shutdown_on_close, **kwargs):
        name = await self._submit(cluster_options, **kwargs)
        await self._wait_for_start(name)
        return await self._retrying(lambda: self.connect(name, shutdown_on_close=shutdown_on_close))
