-- gatewayha schema, version 1.
-- Every later migration must keep the previous release working (expand, then
-- contract in a later release) so nodes upgrade one at a time.

CREATE TABLE users (
    name          text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9._@-]{1,64}$'),
    password_hash text,                       -- NULL: may not log in with a password
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_tokens (
    id          text PRIMARY KEY,             -- public part of the token
    user_name   text NOT NULL REFERENCES users (name) ON DELETE CASCADE,
    secret_hash bytea NOT NULL,               -- sha256 of the secret part
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz
);

CREATE TABLE nodes (
    name       text PRIMARY KEY,
    host       text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    last_seen  timestamptz NOT NULL DEFAULT now(),
    draining   boolean NOT NULL DEFAULT false
);

CREATE TABLE clusters (
    name              text PRIMARY KEY CHECK (name ~ '^[a-f0-9]{32}$'),
    owner             text NOT NULL REFERENCES users (name) ON DELETE CASCADE,
    status            text NOT NULL DEFAULT 'PENDING'
                      CHECK (status IN ('PENDING', 'RUNNING', 'STOPPING', 'STOPPED', 'FAILED')),
    options           jsonb NOT NULL,
    config            jsonb NOT NULL,
    tls_cert          text NOT NULL,
    tls_key_enc       bytea NOT NULL,         -- encrypted with the server secret
    node              text,                   -- node that runs the scheduler
    generation        bigint NOT NULL DEFAULT 0,  -- bumped by every state change; fences writers
    scheduler_address text,
    dashboard_address text,
    api_address       text,
    target_workers    integer NOT NULL DEFAULT 0,
    reason            text,                   -- why it stopped or failed
    created_at        timestamptz NOT NULL DEFAULT now(),
    started_at        timestamptz,
    stopped_at        timestamptz,
    last_heartbeat    timestamptz
);
CREATE INDEX clusters_owner_active ON clusters (owner) WHERE status IN ('PENDING', 'RUNNING', 'STOPPING');
CREATE INDEX clusters_status ON clusters (status);
CREATE INDEX clusters_node ON clusters (node) WHERE status IN ('PENDING', 'RUNNING', 'STOPPING');

CREATE TABLE workers (
    cluster    text NOT NULL REFERENCES clusters (name) ON DELETE CASCADE,
    name       text NOT NULL,
    status     text NOT NULL DEFAULT 'PENDING'
               CHECK (status IN ('PENDING', 'RUNNING', 'STOPPING', 'STOPPED', 'FAILED')),
    node       text,
    created_at timestamptz NOT NULL DEFAULT now(),
    stopped_at timestamptz,
    PRIMARY KEY (cluster, name)
);
CREATE INDEX workers_active ON workers (cluster) WHERE status IN ('PENDING', 'RUNNING');

-- The job queue. A row is claimed by setting lease_owner/lease_until with
-- FOR UPDATE SKIP LOCKED; a claimer that dies loses the row when its lease runs out.
CREATE TABLE jobs (
    id           bigserial PRIMARY KEY,
    kind         text NOT NULL,
    queue        text NOT NULL DEFAULT 'any',   -- 'any' or 'node:<name>'
    payload      jsonb NOT NULL DEFAULT '{}',
    cluster      text,
    dedupe_key   text,                          -- at most one pending job per key
    run_at       timestamptz NOT NULL DEFAULT now(),
    attempts     integer NOT NULL DEFAULT 0,
    max_attempts integer NOT NULL DEFAULT 5,
    lease_owner  text,
    lease_until  timestamptz,
    last_error   text,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX jobs_ready ON jobs (queue, run_at, id);
CREATE UNIQUE INDEX jobs_dedupe ON jobs (dedupe_key) WHERE dedupe_key IS NOT NULL;

-- Finished and dead jobs, for audit and tests ("done exactly once").
CREATE TABLE job_log (
    id          bigint PRIMARY KEY,
    kind        text NOT NULL,
    queue       text NOT NULL,
    payload     jsonb NOT NULL,
    cluster     text,
    outcome     text NOT NULL CHECK (outcome IN ('done', 'dead', 'cancelled')),
    attempts    integer NOT NULL,
    finished_by text,
    last_error  text,
    created_at  timestamptz NOT NULL,
    finished_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX job_log_finished ON job_log (finished_at);

-- One row per periodic task; whoever advances next_run first (SKIP LOCKED)
-- enqueues that tick's job, so each tick runs once across all nodes.
CREATE TABLE periodic (
    name        text PRIMARY KEY,
    interval_s  double precision NOT NULL CHECK (interval_s > 0),
    next_run    timestamptz NOT NULL DEFAULT now(),
    last_run    timestamptz,
    last_node   text
);

-- Idempotent creates (Idempotency-Key header); kept as long as the cluster row.
CREATE TABLE idempotency_keys (
    user_name  text NOT NULL,
    key        text NOT NULL,
    cluster    text NOT NULL REFERENCES clusters (name) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_name, key)
);
