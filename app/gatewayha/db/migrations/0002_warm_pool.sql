-- Warm pool: schedulers started ahead of demand for the default options, each
-- already holding its name, cert, token and dashboard prefix. A create with
-- those options claims one (FOR UPDATE SKIP LOCKED) and is RUNNING at once.
-- Expand-only: the previous release ignores this table.
CREATE TABLE warm_pool (
    name              text PRIMARY KEY CHECK (name ~ '^[a-f0-9]{32}$'),
    node              text NOT NULL,
    config_key        text NOT NULL,          -- digest of the cluster config it was started with
    options           jsonb NOT NULL,
    config            jsonb NOT NULL,
    tls_cert          text NOT NULL,
    tls_key_enc       bytea NOT NULL,
    scheduler_address text,
    dashboard_address text,
    api_address       text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    ready_at          timestamptz,            -- first heartbeat
    last_heartbeat    timestamptz
);
CREATE INDEX warm_pool_claimable ON warm_pool (config_key, created_at) WHERE ready_at IS NOT NULL;
CREATE INDEX warm_pool_node ON warm_pool (node);
