-- Partitions made ahead of time, off the request path. Each row is a tenant id allotted in advance whose
-- partition messages_tenant_<id without dashes> is attached to messages and empty. The row and the partition
-- commit together in the refill's transaction (several per transaction), so a replica killed mid-refill
-- leaves neither. A creation claims one row (SELECT … FOR UPDATE SKIP LOCKED) and deletes it in the
-- transaction that inserts the tenant, so an id is either pooled or a tenant, never both, never twice.
CREATE TABLE partition_pool (
    tenant_id uuid        PRIMARY KEY,
    made_at   timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX partition_pool_made_at_idx ON partition_pool (made_at);

-- Partitions of deleted tenants, dropped in the background in batches. The row is inserted in the
-- transaction that deletes the tenant's row; it is due once the tenant's consumers drained (the deleting
-- replica says so), or at due_at when that replica died first. It is deleted in the transaction that drops
-- the partition, so a restart resumes what was pending.
CREATE TABLE partition_drops (
    tenant_id  uuid        PRIMARY KEY,
    deleted_at timestamptz NOT NULL DEFAULT now(),
    due_at     timestamptz NOT NULL
);

CREATE INDEX partition_drops_due_at_idx ON partition_drops (due_at);
