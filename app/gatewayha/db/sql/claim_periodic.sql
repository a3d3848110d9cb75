-- Advance every due periodic task by one interval and return it; a task row
-- locked by another node is skipped, so each tick fires on exactly one node.
WITH due AS (
    SELECT name
    FROM periodic
    WHERE next_run <= now()
    FOR UPDATE SKIP LOCKED
)
UPDATE periodic AS p
SET next_run = greatest(p.next_run + make_interval(secs => p.interval_s), now()),
    last_run = now(),
    last_node = %(node)s
FROM due
WHERE p.name = due.name
RETURNING p.name
