-- Contract (gatewayha-admin migrate --contract, run by playbooks/upgrade.yml once every node
-- runs this release): clusters.generation was bumped by every state change and read by
-- nothing (0001 said it "fences writers"; none was ever fenced). Releases from 0008 on
-- neither write nor read it; older ones bumped it, so it may go only when none of those runs.
ALTER TABLE clusters DROP COLUMN IF EXISTS generation;
