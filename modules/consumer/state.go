package consumer

import (
	"context"
	"time"

	"github.com/google/uuid"

	"github.com/acme/msgsvc/platform/events"
)

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
