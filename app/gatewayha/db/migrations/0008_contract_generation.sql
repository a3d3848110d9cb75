-- Dead schema, contracted in two releases so that a rolling upgrade keeps working:
-- clusters.generation was bumped by every state change and read by nothing (0001 said it
-- "fences writers"; no writer was ever fenced by it). This release neither writes nor reads it;
-- nodes still on the previous release go on bumping it, which is harmless. The release after
-- this one drops the column (ALTER TABLE clusters DROP COLUMN generation), once no node of a
-- release that writes it can be running.
COMMENT ON COLUMN clusters.generation IS
    'unused: no longer written or read; dropped by the next release (expand-then-contract)';
