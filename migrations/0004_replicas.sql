-- Replicas of the service that are alive: each one upserts its row every heartbeat interval and deletes it when it
-- stops. A replica whose heartbeat is older than the membership TTL is dead; tenants are placed on the live ones
-- (rendezvous hashing of the tenant id over the live replica ids).
CREATE TABLE replicas (
    id           text        PRIMARY KEY,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);
