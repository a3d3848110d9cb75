-- The scheduler reported (its first heartbeat, or a pooled one handed out): RUNNING, at the
-- addresses it reported, which are fixed from now on.
UPDATE clusters
SET status = %(running)s,
    scheduler_address = %(scheduler_address)s,
    dashboard_address = %(dashboard_address)s,
    api_address = %(api_address)s,
    started_at = coalesce(started_at, now())
WHERE name = %(name)s AND status = ANY(%(from)s)
