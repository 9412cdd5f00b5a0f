-- API keys for the HTTP API: each bound to a tenant, stored only as a sha256 of the key.
CREATE TABLE api_keys (
    id          serial PRIMARY KEY,
    tenant      text NOT NULL CHECK (tenant <> ''),
    name        text NOT NULL DEFAULT '',
    key_hash    text NOT NULL UNIQUE,  -- hex sha256 of the whole key; the key itself is never stored
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE INDEX api_keys_tenant ON api_keys (tenant);
