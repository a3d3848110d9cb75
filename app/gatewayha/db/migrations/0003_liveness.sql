-- How long the watchers themselves have been up without a gap, so that an outage of the
-- control plane (every API instance or job worker stopped, or the database away) is not
-- taken for the death of the clusters and nodes it watches: a cluster whose heartbeats could
-- not be delivered, or a node whose worker could not report, is judged only once the path
-- has been back for a full timeout. Expand-only: the previous release ignores both.
ALTER TABLE nodes ADD COLUMN up_since timestamptz NOT NULL DEFAULT now();

CREATE TABLE api_instances (
    name       text PRIMARY KEY,                   -- <node>:<pid>
    up_since   timestamptz NOT NULL DEFAULT now(), -- start of its current gap-free run
    last_seen  timestamptz NOT NULL DEFAULT now()
);
