package e2e

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
	"go.uber.org/fx"

	"github.com/acme/msgsvc/modules/consumer"
	"github.com/acme/msgsvc/test/testenv"
)

// TestReturnedPublishIsNeverAccepted deletes a tenant's queue behind the service's back (an operator, a broker
// that lost it) while the tenant exists: RabbitMQ returns every publish to it as unroutable and confirms it, and
// the service must answer 503, never 202 (a 202 would be a message dropped by the broker). Once the queue is
// back, a retry with the same Idempotency-Key is accepted and stored: the earlier return does not stick to the id.
func TestReturnedPublishIsNeverAccepted(t *testing.T) {
	s := testenv.Get(t)
	cfg := s.Config(t)
	cfg.ReconcileInterval = time.Hour // nothing repairs the queue until the test asks
	var rt *consumer.Runtime
	a := testenv.Start(t, cfg, fx.Populate(&rt))
	tenant := a.CreateTenant("unroutable", 2)
	a.Publish(tenant, map[string]any{"before": true})

	// Its consumer stops first: the broker would cancel it with the queue's deletion, and a cancelled consumer
	// asks for a reconciliation pass at once, which declares the queue again.
	rt.Stop(context.Background(), uuid.MustParse(tenant), "test: its queue goes")
	ch := testenv.AMQP(t, cfg.AMQPURL)
	_, err := ch.QueueDelete(consumer.QueueName(uuid.MustParse(tenant)), false, false, false)
	require.NoError(t, err)

	// Many at once, so that returns and confirms of different messages interleave on the channels.
	var wg sync.WaitGroup
	statuses := make([]int, 400)
	for c := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := c; i < len(statuses); i += 16 {
				r := a.Do(http.MethodPost, "/api/v1/messages", map[string]any{"tenant_id": tenant, "payload": map[string]any{"i": i}},
					"Idempotency-Key", fmt.Sprintf("unroutable-%d", i))
				statuses[i] = r.Status
			}
		}()
	}
	wg.Wait()
	counts := map[int]int{}
	for _, st := range statuses {
		counts[st]++
	}
	require.Equal(t, map[int]int{http.StatusServiceUnavailable: len(statuses)}, counts,
		"publishes to a tenant without a queue must all answer 503 (status: count)")

	require.NoError(t, rt.Reconcile(context.Background()))
	r := a.Do(http.MethodPost, "/api/v1/messages", map[string]any{"tenant_id": tenant, "payload": map[string]any{"i": 0}},
		"Idempotency-Key", "unroutable-0")
	require.Equal(t, http.StatusAccepted, r.Status, "%s", r.Body)
	id := r.Map(t)["id"].(string)
	db := a.DB()
	testenv.Eventually(t, 20*time.Second, func() bool {
		return testenv.Count(t, db, "SELECT count(*) FROM messages WHERE id = $1", id) == 1
	}, "the message accepted after the queue came back was not stored")
}
