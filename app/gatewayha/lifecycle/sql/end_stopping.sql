-- ... and its processes are gone with it: every STOPPING cluster ends at its stop target.
UPDATE clusters
SET status = coalesce(stop_target, %(stopped)s), stop_target = coalesce(stop_target, %(stopped)s), stopped_at = now()
WHERE status = %(stopping)s
RETURNING name, status
