package consumer

import (
	"context"
	"time"

	"github.com/google/uuid"

	"github.com/acme/msgsvc/platform/events"
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

// ConsumerState implements events.ConsumerStates: the owner replica from the placement, whether it runs and
// why not from this replica's own consumer when it is the owner, and the queue's depth and consumers from a
// passive declare (one round trip to the broker). For a tenant another replica owns, Running means the broker
// counts a consumer on its queue, and Workers is then the configured concurrency.
func (r *Runtime) ConsumerState(ctx context.Context, id uuid.UUID, workers int) events.ConsumerState {
	st := events.ConsumerState{Replica: r.place.Owner(id), QueueDepth: -1}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	q, qerr := r.conn.InspectQueue(ctx, QueueName(id))
	if qerr == nil {
		st.QueueDepth, st.QueueConsumers = q.Messages, q.Consumers
		if !q.Exists {
			st.QueueDepth = 0
		}
	}
	if st.Replica == r.opts.ReplicaID {
		st.Workers = r.Workers(id)
		st.Running = st.Workers > 0
		if tc := r.consumer(id, false); tc != nil {
			r.mu.Lock()
			st.Error = tc.lastErr
			r.mu.Unlock()
		}
		return st
	}
	if qerr == nil && q.Consumers > 0 {
		st.Running, st.Workers = true, workers
	}
	return st
}
