-- Claim up to %(limit)s ready jobs from the given queues for %(owner)s.
-- The candidate rows are picked in a CTE with FOR UPDATE SKIP LOCKED so that
-- concurrent claimers never wait on each other or take the same row, and the
-- planner cannot update more rows than LIMIT. A row whose lease ran out (its
-- claimer died) is ready again; attempts counts every claim.
-- One index scan per queue (jobs_ready: queue, run_at, id) in a LATERAL subquery: with
-- `queue = ANY(...)` the planner cannot read the index in order and sorts the whole backlog
-- on every claim (5-13 ms with 19,000 ready jobs, vs well under 1 ms this way).
WITH candidates AS (
    SELECT c.id
    FROM unnest(%(queues)s::text[]) AS q(name)
    CROSS JOIN LATERAL (
        SELECT id, run_at
        FROM jobs
        WHERE queue = q.name
          AND run_at <= now()
          AND (lease_until IS NULL OR lease_until < now())
        ORDER BY run_at, id
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    ) AS c
    ORDER BY c.run_at, c.id
    LIMIT %(limit)s
)
UPDATE jobs AS j
SET lease_owner = %(owner)s,
    lease_until = now() + make_interval(secs => %(lease)s),
    attempts = j.attempts + 1
FROM candidates
WHERE j.id = candidates.id
RETURNING j.id, j.kind, j.queue, j.payload, j.cluster, j.attempts, j.max_attempts, j.lease_until
