"""gunicorn settings for one gatewayha-api instance (the port comes from --bind)."""

import os

worker_class = "gthread"
workers = int(os.environ.get("GATEWAYHA_API_PROCESSES", "1"))
# Long polls (?wait, up to ~20 s) hold a thread each: in a storm of 100 creates, 100 clients
# poll at once. With 32 threads they took every thread, HAProxy's health checks queued behind
# them and every instance was marked down (503s). Sleeping threads cost little memory.
threads = int(os.environ.get("GATEWAYHA_API_THREADS", "128"))
graceful_timeout = 25
timeout = 60
keepalive = 30
accesslog = None
errorlog = "-"
loglevel = "info"
