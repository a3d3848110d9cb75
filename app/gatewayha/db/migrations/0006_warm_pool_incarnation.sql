-- A pooled scheduler is handed out only if it belongs to its node's current incarnation.
-- gatewayha-worker sets nodes.started_at when it starts (the node's processes may have died
-- with the previous worker or the machine), then checks its node's pooled schedulers: the live
-- ones get verified_at = now(), the dead ones are dropped and replaced. An entry neither created
-- nor verified since its node's started_at is not claimable.
-- Expand-only: the previous release neither reads nor writes verified_at (its entries keep
-- NULL, and created_at counts for them) and leaves started_at as it was.
ALTER TABLE warm_pool ADD COLUMN verified_at timestamptz;
