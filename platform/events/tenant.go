package events

import (
	"context"
	"time"

	"github.com/google/uuid"
	"github.com/uptrace/bun"

	"github.com/acme/msgsvc/platform/problem"
)

// Tenant is the part of a tenant that subscribers of tenant events need.
type Tenant struct {
	ID          uuid.UUID `json:"id"`
	Name        string    `json:"name"`
	Concurrency int       `json:"concurrency"`
	CreatedAt   time.Time `json:"created_at"`
	RateLimit   *float64  `json:"rate_limit,omitempty"` // messages per second; nil: the default; 0: unlimited
	// MaxAgeSeconds is the tenant's retention; nil: the default (RETENTION_DEFAULT); 0: forever.
	MaxAgeSeconds *int64 `json:"max_age_seconds,omitempty"`
}

// TenantProvisioning is published before the transaction that creates a tenant: subscribers make what the
// tenant needs outside the database (its queues). An error aborts the creation. It is kept out of the
// transaction so that no transaction holding DDL locks waits on a broker call.
type TenantProvisioning struct {
	Tenant Tenant
}

// TenantCreating is published inside the transaction that inserts a tenant's row, before commit. Subscribers
// make what the tenant needs in the database (its partition, through Tx); an error rolls the creation back.
type TenantCreating struct {
	Tenant Tenant
	Tx     bun.Tx
	// PartitionReady is true when the tenant's id was claimed from the PartitionPool: its partition is
	// attached already and no DDL is needed.
	PartitionReady bool
}

// TenantCreateFailed is published when a creation failed after TenantProvisioning, so that subscribers
// remove what they made outside the transaction (queues).
type TenantCreateFailed struct {
	TenantID uuid.UUID
}

// TenantCreated is published after the tenant's row and partition committed; its consumer starts now.
// It also travels to the other replicas.
type TenantCreated struct {
	Tenant Tenant
}

// TenantConcurrencyChanged is published after a tenant's worker count was updated. It travels to every replica.
type TenantConcurrencyChanged struct {
	TenantID    uuid.UUID `json:"tenant_id"`
	Concurrency int       `json:"concurrency"`
}

// TenantRateLimitChanged is published after a tenant's publish rate limit changed. It travels to every replica.
type TenantRateLimitChanged struct {
	TenantID  uuid.UUID `json:"tenant_id"`
	RateLimit *float64  `json:"rate_limit,omitempty"`
}

// TenantRetentionChanged is published after a tenant's retention changed. It travels to every replica; the
// retention itself is read from the database wherever it matters, so the event only wakes subscribers.
type TenantRetentionChanged struct {
	TenantID      uuid.UUID `json:"tenant_id"`
	MaxAgeSeconds *int64    `json:"max_age_seconds,omitempty"`
}

// TenantDeleting is published once the tenant's row is gone: publishing to it stops, its consumers drain and
// stop. It travels to every replica.
type TenantDeleting struct {
	TenantID uuid.UUID `json:"tenant_id"`
}

// TenantDeleted is published after TenantDeleting, on the replica that deleted the tenant only: once no replica
// consumes the tenant's queue any more, its stored messages (its partition) and its queues are removed.
type TenantDeleted struct {
	TenantID uuid.UUID `json:"tenant_id"`
}

// TenantDirectory answers which tenants exist. The tenant module provides it; the messaging module and the
// consumer runtime use it to build their state at start-up and to reconcile.
type TenantDirectory interface {
	// Tenants returns every tenant.
	Tenants(ctx context.Context) ([]Tenant, error)
	// Tenant returns one tenant; ok is false when it does not exist.
	Tenant(ctx context.Context, id uuid.UUID) (t Tenant, ok bool, err error)
}

// ErrTenantNotFound is the answer for a tenant that does not exist (404 tenant-not-found), the same in every
// module: the tenant API, publishing and reading messages, and the dead-letter API. Another tenant's key gets
// it too, so that a key cannot tell which tenants exist.
var ErrTenantNotFound = problem.New(problem.KindNotFound, "tenant-not-found", "no tenant with this id")
