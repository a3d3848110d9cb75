-- The node is lost, and with it the processes of its clusters: each ends now. One being
-- stopped ends at its stop target (FAILED if the stop was a failure, e.g. no heartbeat);
-- any other fails. A stop requested by a node of the previous release stored no target and
-- ends STOPPED.
UPDATE clusters
SET status = CASE WHEN status = %(stopping)s THEN coalesce(stop_target, %(stopped)s) ELSE %(failed)s END,
    stop_target = CASE WHEN status = %(stopping)s THEN coalesce(stop_target, %(stopped)s) ELSE %(failed)s END,
    reason = coalesce(reason, %(reason)s),
    stopped_at = now()
WHERE node = %(node)s AND status = ANY(%(active)s)
RETURNING name, status
