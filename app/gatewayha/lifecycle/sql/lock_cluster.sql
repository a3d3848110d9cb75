-- A cluster's lifecycle fields, its row locked for the transition that follows.
SELECT status, node, stop_target, reason
FROM clusters
WHERE name = %(name)s
FOR UPDATE
