package e2e

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"
	"go.uber.org/fx"

	"github.com/acme/msgsvc/modules/consumer"
	"github.com/acme/msgsvc/test/testenv"
)

// overlapHandler stores like the real handler; its first store first waits as long as hold (a statement
// waiting on a lock), or until its context ends. It records the most stores it ever saw at once.
type overlapHandler struct {
	inner   consumer.Handler
	hold    time.Duration
	held    chan struct{} // closed when the first store starts waiting
	first   atomic.Bool
	running atomic.Int64
	most    atomic.Int64
}

func (h *overlapHandler) Handle(ctx context.Context, tenant uuid.UUID, ds []amqp.Delivery) []error {
	n := h.running.Add(1)
	defer h.running.Add(-1)
	for m := h.most.Load(); n > m && !h.most.CompareAndSwap(m, n); m = h.most.Load() {
	}
	if h.first.CompareAndSwap(false, true) {
		close(h.held)
		select {
		case <-time.After(h.hold):
		case <-ctx.Done():
		}
	}
	return h.inner.Handle(ctx, tenant, ds)
}

// TestDrainNeverOverlapsStores stops a one-worker tenant's consumer while its store takes longer than
// CONSUMER_DRAIN_TIMEOUT, and starts it again at once, as a handover or a resize does. The store is cancelled
// at the drain deadline and the consumer closes only after it returned: the tenant never has two stores at
// once, and every message is stored.
func TestDrainNeverOverlapsStores(t *testing.T) {
	s := testenv.Get(t)
	cfg := s.Config(t)
	cfg.ConsumerDrainTimeout = time.Second
	cfg.ReconcileInterval = time.Hour // nothing but the test restarts the consumer
	h := &overlapHandler{hold: 6 * time.Second, held: make(chan struct{})}
	var rt *consumer.Runtime
	a := testenv.Start(t, cfg, fx.Populate(&rt),
		fx.Decorate(func(inner consumer.Handler) consumer.Handler { h.inner = inner; return h }))

	tenant := a.CreateTenant("drain-overlap", 1)
	tid := uuid.MustParse(tenant)
	ids := make([]string, 5)
	for i := range ids {
		ids[i] = a.Publish(tenant, map[string]int{"i": i})
	}
	select {
	case <-h.held:
	case <-time.After(10 * time.Second):
		t.Fatal("the tenant's store never started")
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	rt.Stop(ctx, tid, "test")
	require.NoError(t, rt.Ensure(ctx, tid, 1, "test"))

	db := a.DB()
	testenv.Eventually(t, 20*time.Second, func() bool {
		return testenv.Count(t, db, "SELECT count(*) FROM messages WHERE tenant_id = $1", tid) == len(ids)
	}, "every message is stored")
	require.EqualValues(t, 1, h.most.Load(), "a one-worker tenant had two stores at once")
}
