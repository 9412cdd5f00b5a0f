-- The HTTP API's request-rate token buckets, one per API key (api/limits.py).
-- UNLOGGED: a bucket is worth no WAL; after a database crash the buckets start full again.
CREATE UNLOGGED TABLE api_rate_buckets (
    key_id      integer PRIMARY KEY REFERENCES api_keys (id) ON DELETE CASCADE,
    tokens      double precision NOT NULL,  -- left after the last request
    allowed     boolean NOT NULL,           -- whether the last request was let through
    updated_at  timestamptz NOT NULL        -- the database's clock: the same for every replica
);
