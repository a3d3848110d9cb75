"""The job queue in Postgres (FOR UPDATE SKIP LOCKED under leases) and the job runner that runs it (gatewayha-jobs)."""
