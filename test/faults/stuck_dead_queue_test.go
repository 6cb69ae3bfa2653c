package faults

import (
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/acme/msgsvc/modules/consumer"
	"github.com/acme/msgsvc/test/testenv"
)

// TestAStuckDeadLetterQueueHoldsNoCreationBack stops the process of the dead-letter queue every tenant shares
// (busy paging a backlog of dead letters, or on a frozen node) while tenants are created. A creation binds that
// queue for the new tenant and never waits on the queue's process: each creation answers 201 at once, and the new
// tenant's messages are stored. Declaring the shared queue again at each creation asked its process for its
// figures, so every creation waited 10 s and failed with 503 while it did not answer.
func TestAStuckDeadLetterQueueHoldsNoCreationBack(t *testing.T) {
	s := testenv.Get(t)
	cfg := s.Config(t)
	cfg.AMQPQueueType = "classic"
	a := testenv.Start(t, cfg)
	first := a.CreateTenant("before", 1)
	a.Publish(first, map[string]any{"n": 0})
	db := a.DB()
	stored := func(tenant string) int {
		return testenv.Count(t, db, `SELECT count(*) FROM messages WHERE tenant_id = $1`, tenant)
	}
	testenv.Eventually(t, 20*time.Second, func() bool { return stored(first) == 1 }, "the first tenant's message stored")

	resume := s.SuspendQueue(t, cfg.AMQPURL, consumer.DeadQueueName(cfg.AMQPExchange))
	var created []string
	for i := range 3 {
		start := time.Now()
		r := a.Do(http.MethodPost, "/api/v1/tenants", map[string]any{"name": "during-" + string(rune('a'+i)), "concurrency_config": 1})
		require.Equal(t, http.StatusCreated, r.Status, "creation %d while the dead-letter queue does not answer: %s", i, r.Body)
		require.Less(t, time.Since(start), 5*time.Second, "creation %d waited on the dead-letter queue", i)
		created = append(created, r.Map(t)["id"].(string))
	}
	for _, id := range created {
		a.Publish(id, map[string]any{"n": 1})
	}
	testenv.Eventually(t, 20*time.Second, func() bool {
		for _, id := range created {
			if stored(id) != 1 {
				return false
			}
		}
		return true
	}, "the new tenants' messages stored")
	resume()
}
