-- Dead letters: messages the service could not store (undecodable, retries exhausted) and what the broker
-- dead-lettered by itself (its delivery limit, a rejection). They live here rather than in a queue, so that
-- looking at them changes nothing and one can be found by id.
CREATE TABLE dead_letters (
    tenant_id           uuid        NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    -- The message id; for a message whose id was missing or not a UUID, an id made here (original_id keeps
    -- what the publisher sent).
    id                  uuid        NOT NULL,
    original_id         text,
    reason              text        NOT NULL,
    last_error          text        NOT NULL DEFAULT '',
    body                bytea       NOT NULL,
    headers             jsonb       NOT NULL DEFAULT '{}',
    attempts            integer     NOT NULL DEFAULT 0,
    -- The message's own creation time (x-created-at), when it carried one.
    created_at          timestamptz,
    dead_lettered_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id)
);

-- Keyset listing, newest first.
CREATE INDEX dead_letters_keyset_idx ON dead_letters (tenant_id, dead_lettered_at DESC, id DESC);
