-- Lock a lost node's active clusters first, in a statement of its own: a check_clusters
-- failing one of them right now ("no heartbeat") holds its row until it commits, and only a
-- statement begun after that commit is sure to see the stop target it stored.
SELECT 1
FROM clusters
WHERE node = %(node)s AND status = ANY(%(active)s)
ORDER BY name
FOR UPDATE
