package consumer

import (
	"context"
	"time"

	"github.com/google/uuid"
)

// FindDeadLetter reports whether the tenant's message id was dead-lettered, and why. With QueueDepth and
// CountDeadLetters it is what the messaging module asks the runtime (messaging.ConsumerState) to answer a
// message lookup and a tenant's stats.
func (r *Runtime) FindDeadLetter(ctx context.Context, tenant, id uuid.UUID) (reason, lastError string, at time.Time, found bool, err error) {
	d, found, err := r.dead.Get(ctx, tenant, id)
	if err != nil || !found {
		return "", "", time.Time{}, false, err
	}
	return d.Reason, d.LastError, d.DeadLetteredAt, true, nil
}

// CountDeadLetters returns how many dead letters the tenant has.
func (r *Runtime) CountDeadLetters(ctx context.Context, tenant uuid.UUID) (int64, error) {
	return r.dead.Count(ctx, tenant)
}

// QueueDepth returns the messages ready in the tenant's queue and its consumers (on every replica), exactly,
// from a passive declare.
func (r *Runtime) QueueDepth(ctx context.Context, tenant uuid.UUID) (messages, consumers int, err error) {
	st, err := r.conn.InspectQueue(ctx, QueueName(tenant))
	return st.Messages, st.Consumers, err
}
