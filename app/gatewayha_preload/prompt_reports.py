"""Scheduler preload, imported by module name after ``gatewayha_preload.control_tls``: the scheduler
reports to the gateway as soon as it is running and as soon as a worker joins, instead of when
the stock heartbeat loop next wakes up.

dask-gateway's scheduler service sends its first heartbeat 0.25 s after the preload ran (by
then this scheduler has long been running; about a fifth of a cold create here) and then one
every ``heartbeat_period`` (5 s by default), reporting a joining worker only then. gatewayha
marks the cluster RUNNING on the first heartbeat and a worker RUNNING when a heartbeat lists
it, and a launch keeps one of the node's launch slots until then (``jobs/handlers.py``).
After the first report the scheduler also connects once to its own listener
(``warm_up_listener``), so that a client's first connection is as fast as later ones.

It imports only distributed (never ``gatewayha``: see the package's docstring) and reaches the
stock service through ``scheduler.services``. If a future dask-gateway changes the service, the
periodic heartbeats report as before.
"""

import asyncio
import logging

from distributed.core import Status, rpc
from distributed.diagnostics.plugin import SchedulerPlugin

log = logging.getLogger("distributed.gatewayha")

# Joins within this long of each other (a scale-up) share one report.
COALESCE_S = 0.05
# How long to look for the running scheduler and the heartbeat loop's first wait; after the
# stock loop's own 0.25 s there is nothing left to gain.
STARTUP_WINDOW_S = 0.25
# A join that happens while a heartbeat is in flight is reported once the loop waits again.
JOIN_WINDOW_S = 5.0
POLL_S = 0.005
WARM_UP_TIMEOUT_S = 10.0


def _waiter(scheduler):
    return getattr(scheduler.services.get("gateway"), "waiter", None)


async def _report_now(scheduler) -> bool:
    """End the heartbeat loop's wait, so it reports now; False if it is not waiting (a heartbeat
    is in flight: the stock `interrupt` would then do nothing and the report would wait a period)."""
    waiter = _waiter(scheduler)
    task = getattr(waiter, "task", None)
    if task is None or task.done() or not hasattr(waiter, "interrupt"):
        return False
    await waiter.interrupt()
    return True


async def _report_when(scheduler, ready, window: float) -> bool:
    """Report as soon as ``ready()`` and the loop waits, within ``window`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + window
    while loop.time() < deadline:
        if ready() and await _report_now(scheduler):
            return True
        await asyncio.sleep(POLL_S)
    return False


class ReportJoins(SchedulerPlugin):
    name = "gatewayha-report-joins"

    def __init__(self, scheduler):
        self.scheduler = scheduler
        self.pending = None

    def add_worker(self, scheduler=None, worker=None):
        if self.pending is None or self.pending.done():
            self.pending = asyncio.ensure_future(self._report())

    async def _report(self):
        await asyncio.sleep(COALESCE_S)
        await _report_when(self.scheduler, lambda: True, JOIN_WINDOW_S)


async def warm_up_listener(scheduler) -> None:
    """Connect once to this scheduler's own TLS listener and ask its identity.

    The first connection a scheduler accepts costs it about 35 ms more than later ones (first
    TLS handshake, comm handshake and handler set-up in the process); measured through the
    public port, a client's first connection took 35-60 ms and the next one 5 ms. Paid here,
    right after the first report, it is off a warm-pool create's path (there the client's
    connection was most of the create) and overlaps a cold create's HTTP round trips."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    r = rpc(scheduler.address, connection_args=scheduler.security.get_connection_args("scheduler"))
    try:
        await asyncio.wait_for(r.identity(), WARM_UP_TIMEOUT_S)
        log.info("gatewayha: listener warmed up in %.0f ms", (loop.time() - started) * 1000)
    except Exception as exc:  # noqa: BLE001 - an optimisation: a failure costs only its time
        log.info("gatewayha: warming up the listener failed: %r", exc)
    finally:
        await r.close_rpc()


async def report_start(scheduler) -> None:
    if await _report_when(scheduler, lambda: scheduler.status == Status.running, STARTUP_WINDOW_S):
        log.info("gatewayha: first heartbeat sent as soon as the scheduler was running")
    if scheduler.status == Status.running:
        await warm_up_listener(scheduler)


def dask_setup(scheduler):
    scheduler.add_plugin(ReportJoins(scheduler))
    asyncio.ensure_future(report_start(scheduler))
