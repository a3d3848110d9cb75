"""gunicorn entry point: ``gunicorn gatewayha.api.wsgi:app`` with GATEWAYHA_CONFIG set."""

import logging

from gatewayha.api.app import create_app
from gatewayha.config import load_settings
from gatewayha.db.pool import make_pool

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
settings = load_settings()
# The pool connects in the background: the instance starts (and answers 503)
# even while the database is down, and recovers by itself.
pool = make_pool(settings.database, "gatewayha-api")
app = create_app(settings, pool)
