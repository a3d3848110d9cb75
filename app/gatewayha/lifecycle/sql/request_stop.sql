-- Ask the cluster's node to stop its processes: STOPPING, with what it ends in once they are
-- gone (the stop target). The first reason given is kept. A failure while a plain stop is
-- under way raises the target to FAILED (the status stays STOPPING).
UPDATE clusters
SET status = %(stopping)s, stop_target = %(target)s, reason = coalesce(reason, %(reason)s)
WHERE name = %(name)s AND status = ANY(%(from)s)
