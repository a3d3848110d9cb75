-- A cluster's lifecycle fields, its row locked for the transition that follows.
SELECT status, node, launched_at, stop_target, reason
FROM clusters
WHERE name = %(name)s
FOR UPDATE
