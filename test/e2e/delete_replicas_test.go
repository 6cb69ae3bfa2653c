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

// pausingHandler stores like the real handler after a pause, and counts the batches in flight.
type pausingHandler struct {
	inner    consumer.Handler
	pause    time.Duration
	inFlight atomic.Int64
}

func (h *pausingHandler) Handle(ctx context.Context, tenant uuid.UUID, ds []amqp.Delivery) []error {
	h.inFlight.Add(1)
	defer h.inFlight.Add(-1)
	time.Sleep(h.pause)
	return h.inner.Handle(ctx, tenant, ds)
}

// TestDeleteWaitsForOtherReplicasConsumers deletes a tenant on replica A while replica B stores a batch of it.
// The queues go only after B's consumer drained and stopped: B finishes its batch and stops without a warning
// (no cancelled consumer, no settlement on a missing queue, no store retried against a vanished tenant).
func TestDeleteWaitsForOtherReplicasConsumers(t *testing.T) {
	s := testenv.Get(t)
	cfg := s.Config(t)
	a := testenv.Start(t, cfg)
	cfgB := cfg
	cfgB.ReplicaID = testenv.RandomName("replica-b-")
	hB := &pausingHandler{pause: 700 * time.Millisecond}
	var rtB *consumer.Runtime
	b := testenv.Start(t, cfgB, fx.Populate(&rtB),
		fx.Decorate(func(h consumer.Handler) consumer.Handler { hB.inner = h; return hB }))

	tenant := a.CreateTenant("delete-across", 2)
	tid := uuid.MustParse(tenant)
	testenv.Eventually(t, 10*time.Second, func() bool { return rtB.Workers(tid) > 0 }, "replica B consumes the tenant")
	for i := range 200 {
		a.Publish(tenant, map[string]int{"i": i})
	}
	testenv.Eventually(t, 10*time.Second, func() bool { return hB.inFlight.Load() > 0 }, "replica B stores a batch")

	require.Equal(t, http.StatusNoContent, a.Do(http.MethodDelete, "/api/v1/tenants/"+tenant, nil).Status)
	testenv.Eventually(t, 10*time.Second, func() bool {
		ok, _, _ := testenv.QueueState(t, cfg.AMQPURL, consumer.QueueName(tid))
		return !ok
	}, "the tenant's queue is deleted")
	require.Zero(t, rtB.Workers(tid), "replica B's consumer stopped before the queue went")
	time.Sleep(time.Second) // whatever B would still log about it

	for _, e := range b.Logs.All() {
		if e.Level < zapcore.WarnLevel {
			continue
		}
		for _, f := range e.Context {
			require.False(t, f.Key == "tenant_id" && f.String == tenant,
				"replica B warned about the deleted tenant: %q %v", e.Message, e.ContextMap())
		}
	}
}
