-- A cluster no node runs yet (never placed) ends at once, at its stop target.
UPDATE clusters
SET status = %(target)s, stop_target = %(target)s, reason = %(reason)s, stopped_at = now()
WHERE name = %(name)s AND status = ANY(%(from)s)
