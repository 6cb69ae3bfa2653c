package events

import (
	"context"

	"github.com/google/uuid"
)

// ConsumerState is what the service knows of a tenant's consumer: which replica owns it, whether it consumes,
// and how much waits in its queue. The consumer runtime provides it; the tenant module shows it.
type ConsumerState struct {
	// Replica is the replica that owns the tenant's worker pool ("" when no replica is alive to own it).
	Replica string `json:"replica" example:"msgsvc-0"`
	// Running is true when the owner's consumer consumes the tenant's queue.
	Running bool `json:"running"`
	// Workers is the owner's worker count (its configured concurrency) while it runs, else 0.
	Workers int `json:"workers" example:"5"`
	// QueueDepth is the number of messages ready in the tenant's queue (from a passive declare), -1 when the
	// broker did not answer.
	QueueDepth int `json:"queue_depth" example:"0"`
	// QueueConsumers is the number of consumers the broker counts on the tenant's queue.
	QueueConsumers int `json:"queue_consumers" example:"1"`
	// Error says why the consumer failed to start at its last attempt on the owner; it is retried.
	Error string `json:"error,omitempty"`
}

// ConsumerStates answers what state a tenant's consumer is in.
type ConsumerStates interface {
	// ConsumerState returns the state of tenant id's consumer; workers is the tenant's configured concurrency.
	ConsumerState(ctx context.Context, id uuid.UUID, workers int) ConsumerState
}

// TenantsConsumed announces that Replica's consumers of the queues of Tenants started (the broker counts them,
// waiting behind the active consumer or active themselves). It travels to every replica: a replica giving one of
// these tenants up drains its consumer once it has seen this, so that the queue's single active consumer passes
// straight to the new owner's (make-before-break).
type TenantsConsumed struct {
	Replica string      `json:"replica"`
	Tenants []uuid.UUID `json:"tenants"`
}

// TenantsHandedOver says that Replica began to give the queues of Tenants up (its view of the replica set
// changed). It travels to every replica: the one that owns such a tenant now and runs no consumer of it
// reconciles at once. It may never have heard of the tenant: a replica relays a creation only to the replicas it
// sees, and one that joined a moment before is seen up to a heartbeat interval later.
type TenantsHandedOver struct {
	Replica string      `json:"replica"`
	Tenants []uuid.UUID `json:"tenants"`
}
