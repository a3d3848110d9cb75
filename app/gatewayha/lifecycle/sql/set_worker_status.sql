-- One worker moves on (joined: RUNNING; asked to leave: STOPPING), only from a status the
-- transition table allows.
UPDATE workers
SET status = %(new)s
WHERE cluster = %(cluster)s AND name = %(worker)s AND status = ANY(%(from)s)
