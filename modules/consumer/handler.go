// Package consumer is the consumer runtime: one supervised RabbitMQ consumer per tenant with a worker pool of
// the tenant's configured size, resized on a live consumer, reconciled with the database, drained on stop.
package consumer

import (
	"context"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"
)

// Handler stores the deliveries of one tenant; the messaging module provides it.
//
// Contract: Handle is called concurrently, by every worker of every tenant. It returns one error per delivery,
// in order: nil when the delivery's message is durably stored (or already was: storage is idempotent by
// message id), an error marked with broker.Permanent when it can never be stored (it is dead-lettered at
// once), any other error when a retry may succeed. Handle must not ack, reject or keep the deliveries.
type Handler interface {
	Handle(ctx context.Context, tenantID uuid.UUID, deliveries []amqp.Delivery) []error
}

// QueueName is the name of a tenant's durable queue.
func QueueName(id uuid.UUID) string { return "tenant." + id.String() }

// DeadLetterQueueName is the name of a tenant's dead-letter queue in versions before the dead_letters table;
// the runtime moves what such a queue holds into the table and deletes it.
func DeadLetterQueueName(id uuid.UUID) string { return "tenant." + id.String() + ".dlq" }

// parseQueueName returns the tenant of a queue this runtime owns.
func parseQueueName(name string) (uuid.UUID, bool) {
	const prefix = "tenant."
	if len(name) < len(prefix)+36 || name[:len(prefix)] != prefix {
		return uuid.Nil, false
	}
	rest := name[len(prefix):]
	if len(rest) != 36 && rest[36:] != ".dlq" {
		return uuid.Nil, false
	}
	id, err := uuid.Parse(rest[:36])
	return id, err == nil
}
