package events

import (
	"context"
	"errors"

	"github.com/google/uuid"
	"github.com/uptrace/bun"
)

// PartitionPool is what tenant creation and deletion need of the module that owns the partitions of messages
// (the messaging module provides it): partitions attached ahead of time, so that a creation runs no DDL, and
// partitions of deleted tenants dropped in the background.
type PartitionPool interface {
	// Claim reserves a tenant id allotted in advance whose partition is attached already, for a lease, in a
	// statement of its own (no transaction stays open: the creation then waits on the broker holding no
	// database connection). Concurrent claims never get the same id while the lease lasts. ok is false when the
	// pool is empty: the creation then makes its partition itself.
	Claim(ctx context.Context) (c Claim, ok bool, err error)
	// Take makes the claim final inside tx, the transaction that inserts the tenant: the id leaves the pool. It
	// fails with ErrClaimLost when the claim lapsed and another creation claimed or took the id since; that
	// creation owns the id and its queues then.
	Take(ctx context.Context, tx bun.IDB, c Claim) error
	// Release gives a failed creation's claim back to the pool at once (a claim not released lapses).
	Release(ctx context.Context, c Claim) error
	// ScheduleDrop records, inside tx (the one that deletes the tenant's row), that the tenant's partition is to
	// be dropped in the background once its consumers drained.
	ScheduleDrop(ctx context.Context, tx bun.IDB, id uuid.UUID) error
}

// Claim is a PartitionPool's reservation of a tenant id for one creation.
type Claim struct {
	ID    uuid.UUID
	Token uuid.UUID // the claimer's: Take and Release act only while the pool's row holds it
}

// ErrClaimLost is Take's error when the claim lapsed and the id went to another creation.
var ErrClaimLost = errors.New("the claim on the pooled partition lapsed and went to another creation")
