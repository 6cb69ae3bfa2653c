-- A creation claims a pooled id in a statement of its own, for a lease, and takes it (deletes the row) in the
-- transaction that inserts the tenant. Between the two it declares the tenant's queues at the broker with no
-- transaction open, so a broker that does not answer holds no database connection. claim is the claimer's
-- token: the take deletes the row only while it still holds that token. A claim whose creation died (a replica
-- killed between the two) lapses at claimed_until, and the id is claimed again.
ALTER TABLE partition_pool ADD COLUMN claim uuid, ADD COLUMN claimed_until timestamptz;
