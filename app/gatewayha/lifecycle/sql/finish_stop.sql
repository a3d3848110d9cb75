-- The processes are gone: a STOPPING cluster ends at its stop target. A stop requested by a
-- node of the previous release stored no target; its job's payload carried it (%(fallback)s).
-- Drop the fallback with the release after the one that added stop_target (0009).
UPDATE clusters
SET status = coalesce(stop_target, %(fallback)s),
    stop_target = coalesce(stop_target, %(fallback)s),
    reason = coalesce(reason, %(reason)s),
    stopped_at = now()
WHERE name = %(name)s AND status = %(stopping)s
RETURNING status
