"""The job queue in Postgres (FOR UPDATE SKIP LOCKED under leases) and the worker that runs it."""
