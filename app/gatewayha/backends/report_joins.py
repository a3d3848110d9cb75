"""Scheduler preload, loaded by path after ``dask_gateway.scheduler_preload``: a worker that
joins is reported to the gateway at once, not at the next periodic heartbeat.

dask-gateway's scheduler service heartbeats every ``heartbeat_period`` (5 s by default) and
reports a joining worker only then. gatewayha marks a worker RUNNING from that report, and a
worker's launch keeps one of the node's launch slots until then (``jobs/handlers.py``), so the
wait would idle the slot for up to a heartbeat period per worker.

It imports only distributed and reaches the stock service through ``scheduler.services``: it
runs in whatever Python ``node.python`` names, where gatewayha itself may not be installed. If
a future dask-gateway changes the service, joins are reported by the periodic heartbeat again.
"""

import asyncio

from distributed.diagnostics.plugin import SchedulerPlugin

# Joins within this long of each other (a scale-up) share one report.
COALESCE_S = 0.05


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
        service = self.scheduler.services.get("gateway")
        interrupt = getattr(getattr(service, "waiter", None), "interrupt", None)
        if interrupt is not None:
            await interrupt()  # ends the heartbeat loop's wait: it reports now


def dask_setup(scheduler):
    scheduler.add_plugin(ReportJoins(scheduler))
