-- Wake whoever follows this cluster (HAProxy route syncs, long polls). Sent on the old
-- channel name too for one release: nodes still on the previous release listen only there.
SELECT pg_notify(%(channel)s, %(cluster)s), pg_notify(%(legacy_channel)s, %(cluster)s)
