-- Tenant API keys: only a SHA-256 hash of each key's secret is stored. A key's id is the public part of the
-- key (msk_<id>_<secret>) and finds its row.
CREATE TABLE api_keys (
    id         text        PRIMARY KEY,
    tenant_id  uuid        NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    hash       bytea       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);

CREATE INDEX api_keys_tenant_idx ON api_keys (tenant_id);

-- A tenant's own publish rate limit in messages per second per replica; NULL follows RATE_LIMIT_DEFAULT,
-- 0 means unlimited.
ALTER TABLE tenants ADD COLUMN rate_limit double precision CHECK (rate_limit >= 0);
