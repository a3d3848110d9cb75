"""gunicorn settings for one gatewayha-api instance (the port comes from --bind)."""

import os

worker_class = "gthread"
workers = int(os.environ.get("GATEWAYHA_API_PROCESSES", "1"))
# Long polls (?wait, up to ~20 s) hold a thread each; keep plenty.
threads = int(os.environ.get("GATEWAYHA_API_THREADS", "32"))
graceful_timeout = 25
timeout = 60
keepalive = 30
accesslog = None
errorlog = "-"
loglevel = "info"
