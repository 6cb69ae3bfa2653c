package events

import (
	"context"

	"github.com/google/uuid"
	"github.com/uptrace/bun"
)

// PartitionPool is what tenant creation and deletion need of the module that owns the partitions of messages
// (the messaging module provides it): partitions attached ahead of time, so that a creation runs no DDL, and
// partitions of deleted tenants dropped in the background.
type PartitionPool interface {
	// Claim takes, inside tx, a tenant id allotted in advance whose partition is attached already; the claim
	// holds while tx is open and is final when it commits (a rollback puts the id back). Concurrent claims
	// never get the same id. ok is false when the pool is empty: the creation then makes its partition itself.
	Claim(ctx context.Context, tx bun.IDB) (id uuid.UUID, ok bool, err error)
	// ScheduleDrop records, inside tx (the one that deletes the tenant's row), that the tenant's partition is to
	// be dropped in the background once its consumers drained.
	ScheduleDrop(ctx context.Context, tx bun.IDB, id uuid.UUID) error
}
