-- Cluster tokens are random per cluster, not an HMAC of the name under the server secret:
-- token_hash (sha256) is what heartbeats and a scheduler's self-delete are checked against,
-- and a token stops working when its cluster stops. token_enc (AES-GCM under the server
-- secret, as tls_key_enc) is kept because the API presents the token to the stock scheduler's
-- /api/comm for scale and adapt. Rows without token_hash were made by the previous release:
-- their token is still the HMAC, accepted until they stop. Expand-only: the previous release
-- ignores both columns.
ALTER TABLE clusters ADD COLUMN token_hash bytea, ADD COLUMN token_enc bytea;
ALTER TABLE warm_pool ADD COLUMN token_hash bytea, ADD COLUMN token_enc bytea;
