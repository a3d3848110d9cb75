-- Login throttling (gatewayha.api.throttle): failed Basic logins per user name and per source
-- address in a short fixed window, shared by every API instance on every node.
-- One row per (scope, key); a row whose window has passed is reused by the next attempt and
-- removed by the purge that failures run now and then.
CREATE TABLE login_failures (
    scope text NOT NULL CHECK (scope IN ('user', 'source')),
    key text NOT NULL,
    window_start timestamptz NOT NULL,
    failures integer NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE INDEX login_failures_window_start ON login_failures (window_start);
