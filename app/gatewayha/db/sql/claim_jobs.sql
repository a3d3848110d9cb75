-- Claim up to %(limit)s ready jobs from the given queues for %(owner)s.
-- The candidate rows are picked in a CTE with FOR UPDATE SKIP LOCKED so that
-- concurrent claimers never wait on each other or take the same row, and the
-- planner cannot update more rows than LIMIT. A row whose lease ran out (its
-- claimer died) is ready again; attempts counts every claim.
WITH candidates AS (
    SELECT id
    FROM jobs
    WHERE queue = ANY(%(queues)s)
      AND run_at <= now()
      AND (lease_until IS NULL OR lease_until < now())
    ORDER BY run_at, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE jobs AS j
SET lease_owner = %(owner)s,
    lease_until = now() + make_interval(secs => %(lease)s),
    attempts = j.attempts + 1
FROM candidates
WHERE j.id = candidates.id
RETURNING j.id, j.kind, j.queue, j.payload, j.cluster, j.attempts, j.max_attempts, j.lease_until
