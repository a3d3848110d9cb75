-- The whole gateway is being shut down (the local stack's `down`): every cluster not yet being
-- stopped is, with a plain stop (its first reason kept).
UPDATE clusters
SET status = %(stopping)s, stop_target = coalesce(stop_target, %(stopped)s), reason = coalesce(reason, %(reason)s)
WHERE status = ANY(%(from)s)
