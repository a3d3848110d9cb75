"""The WSGI app ``gatewayha.api.wsgi:app`` (GATEWAYHA_CONFIG set); ``gatewayha-api`` serves it."""

import logging

from gatewayha.api import watchdog
from gatewayha.api.app import create_app
from gatewayha.api.watch import ClusterWatch
from gatewayha.config import load_settings
from gatewayha.db.pool import make_pool
from gatewayha.liveness import ApiReporter

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
# Every request logs a line (api.middleware.RequestId). Skip what the format does not show
# (the logging HOWTO's "Optimization"): the caller's frame walk and the thread, process and
# multiprocessing lookups each LogRecord makes otherwise.
logging._srcfile = None
logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
settings = load_settings()
# The pool connects in the background: the instance starts (and answers 503)
# even while the database is down, and recovers by itself.
pool = make_pool(settings.database, "gatewayha-api")
heartbeat_pool = make_pool(settings.database, "gatewayha-api-heartbeats", max_size=4)
health_pool = make_pool(settings.database, "gatewayha-api-health", max_size=1)
# Wakes long polls (GET …?wait) on the cluster's NOTIFY instead of at their next poll.
watch = ClusterWatch(settings.database).start()
app = create_app(settings, pool, heartbeat_pool, health_pool, watch)
# Tells the job runners that scheduler heartbeats can arrive (gatewayha.liveness).
reporter = ApiReporter(health_pool, settings.node.name).start()
# Under systemd with WatchdogSec=: pings while this instance answers (gatewayha.api.watchdog).
watchdog.start()
