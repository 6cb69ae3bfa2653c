-- Tenants and their messages. Each tenant's messages live in their own LIST partition of messages,
-- created when the tenant is created (messages_tenant_<id without dashes>).
CREATE TABLE tenants (
    id                 uuid        PRIMARY KEY,
    name               text        NOT NULL CHECK (char_length(name) BETWEEN 1 AND 255),
    concurrency_config integer     NOT NULL CHECK (concurrency_config >= 1),
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);

-- Keyset pagination of tenants, newest first.
CREATE INDEX tenants_created_at_id_idx ON tenants (created_at DESC, id DESC);

CREATE TABLE messages (
    id         uuid        NOT NULL,
    tenant_id  uuid        NOT NULL,
    payload    jsonb       NOT NULL,
    created_at timestamptz NOT NULL,
    stored_at  timestamptz NOT NULL DEFAULT now(),
    -- The partition key must be part of the primary key; ids are unique per tenant, which is what
    -- idempotent storage (ON CONFLICT DO NOTHING) needs.
    PRIMARY KEY (tenant_id, id)
) PARTITION BY LIST (tenant_id);

-- Keyset pagination on (created_at, id), newest first, inside a tenant's partition.
CREATE INDEX messages_keyset_idx ON messages (tenant_id, created_at DESC, id DESC);
