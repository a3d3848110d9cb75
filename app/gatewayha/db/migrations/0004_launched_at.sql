-- When this cluster's scheduler was launched (its start job took a launch slot). Starts
-- queue for a slot (worker.max_starting), so the start timeout counts from the launch and a
-- cluster still queued is judged by cluster.queue_timeout from its creation instead.
-- Expand-only: the previous release ignores it (and judges by created_at, as before).
ALTER TABLE clusters ADD COLUMN launched_at timestamptz;
