-- Backends own their state (gatewayha.backends.base): what start_scheduler / start_worker
-- returned (the local backend's unit and node; a batch system's job id), handed back on stop
-- and check. Expand only: nullable columns no older release reads or writes, so nodes of the
-- previous release keep working during a rolling upgrade. NULL means "no state saved" (a row
-- of an older release, a pooled scheduler, a crash between the launch and the save): backends
-- then find their processes by the cluster's and the worker's names.
ALTER TABLE clusters ADD COLUMN scheduler_state jsonb;
ALTER TABLE workers ADD COLUMN state jsonb;
COMMENT ON COLUMN clusters.scheduler_state IS 'the backend''s state record of the scheduler (NULL: none saved)';
COMMENT ON COLUMN workers.state IS 'the backend''s state record of the worker (NULL: none saved)';
