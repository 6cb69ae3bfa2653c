package e2e

import (
	"context"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"
	"go.uber.org/fx"
	"go.uber.org/zap/zapcore"

	"github.com/acme/msgsvc/modules/consumer"
	"github.com/acme/msgsvc/test/testenv"
)

// pausingHandler stores like the real handler after a pause, and counts the batches in flight and the
// deliveries whose store failed.
type pausingHandler struct {
	inner    consumer.Handler
	pause    time.Duration
	inFlight atomic.Int64
	failed   atomic.Int64
	lastErr  atomic.Value // error
}

func (h *pausingHandler) Handle(ctx context.Context, tenant uuid.UUID, ds []amqp.Delivery) []error {
	h.inFlight.Add(1)
	defer h.inFlight.Add(-1)
	time.Sleep(h.pause)
	errs := h.inner.Handle(ctx, tenant, ds)
	for _, err := range errs {
		if err != nil {
			h.failed.Add(1)
			h.lastErr.Store(err)
		}
	}
	return errs
}

// TestDeleteWaitsForOtherReplicasConsumers deletes a tenant through one replica while the replica that owns
// it stores a batch of it, with publishes still coming. The partition and the queues go only after the
// owner's consumer drained and stopped: it finishes its batch, every store of it succeeds (none into a dropped
// partition, so nothing retried or dead-lettered for it), and it stops without a warning (no cancelled
// consumer, no settlement on a missing queue, no store retried against a vanished tenant).
func TestDeleteWaitsForOtherReplicasConsumers(t *testing.T) {
	s := testenv.Get(t)
	cfg := s.Config(t)
	hA := &pausingHandler{pause: 700 * time.Millisecond}
	var rtA *consumer.Runtime
	a := testenv.Start(t, cfg, fx.Populate(&rtA),
		fx.Decorate(func(h consumer.Handler) consumer.Handler { hA.inner = h; return hA }))
	cfgB := testenv.AnotherReplica(cfg, "b")
	hB := &pausingHandler{pause: 700 * time.Millisecond}
	var rtB *consumer.Runtime
	b := testenv.Start(t, cfgB, fx.Populate(&rtB),
		fx.Decorate(func(h consumer.Handler) consumer.Handler { hB.inner = h; return hB }))

	// The tenant's consumer runs on one replica (its owner); it is deleted through the other one.
	tenant := a.CreateTenant("delete-across", 2)
	tid := uuid.MustParse(tenant)
	var owner, other *testenv.App
	var hOwner *pausingHandler
	var rtOwner *consumer.Runtime
	// Both replicas must agree on the owner: a replica that does not see the other yet owns every tenant, and
	// the tenant would move once it does.
	testenv.Eventually(t, 20*time.Second, func() bool {
		aOwns, bOwns := rtA.Owns(tid), rtB.Owns(tid)
		owner = nil
		switch {
		case aOwns && !bOwns && rtA.Workers(tid) > 0 && rtB.Workers(tid) == 0:
			owner, other, hOwner, rtOwner = a, b, hA, rtA
		case bOwns && !aOwns && rtB.Workers(tid) > 0 && rtA.Workers(tid) == 0:
			owner, other, hOwner, rtOwner = b, a, hB, rtB
		}
		return owner != nil
	}, "the replica both agree owns the tenant consumes it, the other does not")
	for i := range 200 {
		other.Publish(tenant, map[string]int{"i": i})
	}
	testenv.Eventually(t, 10*time.Second, func() bool { return hOwner.inFlight.Load() > 0 }, "the owner stores a batch")
	// Traffic goes on until the deletion answered (later publishes get 404).
	deleted := make(chan struct{})
	trafficDone := make(chan struct{})
	go func() {
		defer close(trafficDone)
		for i := 0; ; i++ {
			select {
			case <-deleted:
				return
			case <-time.After(20 * time.Millisecond):
			}
			other.Do(http.MethodPost, "/api/v1/messages", map[string]any{"tenant_id": tenant, "payload": map[string]int{"j": i}})
		}
	}()

	require.Equal(t, http.StatusNoContent, other.Do(http.MethodDelete, "/api/v1/tenants/"+tenant, nil).Status)
	close(deleted)
	<-trafficDone
	testenv.Eventually(t, 10*time.Second, func() bool {
		ok, _, _ := testenv.QueueState(t, cfg.AMQPURL, consumer.QueueName(tid))
		return !ok
	}, "the tenant's queue is deleted")
	require.Zero(t, rtOwner.Workers(tid), "the owner's consumer stopped before the queue went")
	time.Sleep(time.Second) // whatever B would still log about it
	require.Zero(t, hOwner.failed.Load(), "stores of the owner failed (into a dropped partition?): %v", hOwner.lastErr.Load())
	for _, r := range []*testenv.App{owner, other} {
		require.NotContains(t, string(r.Do(http.MethodGet, "/metrics", nil).Body), "msgsvc_messages_dead_lettered_total{",
			"a delivery of the deleted tenant was dead-lettered")
	}

	for _, e := range owner.Logs.All() {
		if e.Level < zapcore.WarnLevel {
			continue
		}
		for _, f := range e.Context {
			require.False(t, f.Key == "tenant_id" && f.String == tenant,
				"the owner warned about the deleted tenant: %q %v", e.Message, e.ContextMap())
		}
	}
}
