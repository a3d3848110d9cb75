-- Expand: the stop target, what a stop ends in (STOPPED, or FAILED when the stop is a
-- failure), stored on the cluster when the stop is requested (gatewayha.lifecycle). It was
-- only in the stop_cluster job's payload ("final"), so the dead-node sweep had to read jobs
-- to tell a failing cluster from a stopping one, and a failure raised while a plain stop was
-- queued was lost (the job's dedupe key kept the first payload).
-- Nodes of the previous release neither write nor read it: the code of this release takes a
-- missing target as the job's "final", or STOPPED (lifecycle/sql/finish_stop.sql).
ALTER TABLE clusters ADD COLUMN stop_target text CHECK (stop_target IN ('STOPPED', 'FAILED'));

COMMENT ON COLUMN clusters.stop_target IS
    'what the stop under way (or done) ends in: STOPPED, or FAILED when it was a failure';

-- Stops under way now: their target from their queued job, as the sweep used to read it.
UPDATE clusters c
SET stop_target = CASE
        WHEN EXISTS (SELECT 1 FROM jobs j
                     WHERE j.kind = 'stop_cluster' AND j.cluster = c.name AND j.payload->>'final' = 'FAILED')
        THEN 'FAILED' ELSE 'STOPPED' END
WHERE c.status = 'STOPPING';
