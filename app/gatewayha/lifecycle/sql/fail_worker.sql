-- A live worker whose process its backend reported gone.
UPDATE workers
SET status = %(failed)s, stopped_at = now()
WHERE cluster = %(cluster)s AND name = %(worker)s AND status = ANY(%(from)s)
