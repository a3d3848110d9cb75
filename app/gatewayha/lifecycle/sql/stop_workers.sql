-- Workers whose processes are gone end STOPPED: every active worker of a cluster, or the one
-- named (%(worker)s NULL: all of them).
UPDATE workers
SET status = %(stopped)s, stopped_at = now()
WHERE cluster = %(cluster)s
  AND (%(worker)s::text IS NULL OR name = %(worker)s)
  AND status = ANY(%(from)s)
