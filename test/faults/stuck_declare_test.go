package faults

import (
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/acme/msgsvc/modules/consumer"
	"github.com/acme/msgsvc/test/testenv"
)

// TestCreationsAgainstAStuckBrokerHoldNoDatabaseConnection makes the broker take no new queue (the supervisor
// that starts the virtual host's classic queues is suspended; every queue that exists goes on) and sends twice
// as many creations at once as the database pool has connections. Each waits on its queue's declare for up to
// broker.AnswerTimeout (10 s). While they wait:
//   - no connection of the service is left idle in a transaction (a creation claimed its pooled partition in a
//     statement of its own, and declares with no transaction open; before, each held its claim's transaction,
//     and with it one of the pool's connections, across the declare);
//   - a tenant that exists is served: a publish is stored and a read is answered, each within 5 s (before, both
//     waited for a connection until the declares gave up).
//
// Once the broker takes queues again, every creation has answered 201 or 503 (a problem), each failed one gave
// its claimed partition back to the pool at once (no claim is left held), no id went to two tenants, and a
// creation succeeds within seconds and is served.
func TestCreationsAgainstAStuckBrokerHoldNoDatabaseConnection(t *testing.T) {
	s := testenv.Get(t)
	cfg := s.Config(t)
	cfg.AMQPQueueType = "classic"
	cfg.DBMaxOpenConns = 6
	cfg.PartitionPoolSize, cfg.PartitionPoolBatch = 20, 10
	a := testenv.Start(t, cfg)
	db := a.DB()
	stored := func(tenant string) int {
		return testenv.Count(t, db, `SELECT count(*) FROM messages WHERE tenant_id = $1`, uuid.MustParse(tenant))
	}
	bystander := a.CreateTenant("bystander", 2)
	a.Publish(bystander, map[string]any{"n": 1})
	testenv.Eventually(t, 20*time.Second, func() bool { return stored(bystander) == 1 }, "the bystander's first message was not stored")
	testenv.Eventually(t, 20*time.Second, func() bool {
		return testenv.Count(t, db, "SELECT count(*) FROM partition_pool") == 20
	}, "the pool was not filled")

	resume := s.SuspendQueueCreation(t, cfg.AMQPURL)
	creations := 2 * cfg.DBMaxOpenConns
	answers := make([]testenv.Response, creations)
	var wg sync.WaitGroup
	for i := range creations {
		wg.Add(1)
		go func() {
			defer wg.Done()
			answers[i] = a.Do(http.MethodPost, "/api/v1/tenants", map[string]any{"name": fmt.Sprintf("stuck-%d", i), "concurrency_config": 1})
		}()
	}
	// Every creation has claimed its partition and waits on the broker.
	testenv.Eventually(t, 5*time.Second, func() bool {
		return testenv.Count(t, db, "SELECT count(*) FROM partition_pool WHERE claim IS NOT NULL") == creations
	}, "the creations did not all claim a partition")

	idle := testenv.Count(t, db, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
		AND state LIKE 'idle in transaction%'`)
	require.Zero(t, idle, "connections left idle in a transaction while the creations wait on the broker")

	within := func(what string, wait time.Duration, f func()) {
		t.Helper()
		done := make(chan struct{})
		go func() { defer close(done); f() }()
		select {
		case <-done:
		case <-time.After(wait):
			t.Fatalf("%s took longer than %s while creations waited on the broker", what, wait)
		}
	}
	within("reading the bystander's messages", 5*time.Second, func() {
		r := a.Do(http.MethodGet, "/api/v1/messages?tenant_id="+bystander, nil)
		require.Equal(t, http.StatusOK, r.Status, string(r.Body))
	})
	a.Publish(bystander, map[string]any{"n": 2})
	within("storing the bystander's message", 5*time.Second, func() {
		for stored(bystander) != 2 {
			time.Sleep(50 * time.Millisecond)
		}
	})

	wg.Wait()
	resume()
	created := map[string]bool{}
	for i, r := range answers {
		switch r.Status {
		case http.StatusCreated:
			id := r.Map(t)["id"].(string)
			require.False(t, created[id], "id %s given twice", id)
			created[id] = true
		case http.StatusServiceUnavailable:
			require.Equal(t, "application/problem+json", r.Header.Get("Content-Type"), "creation %d", i)
		default:
			t.Fatalf("creation %d: %d %s", i, r.Status, r.Body)
		}
	}
	t.Logf("%d of %d creations answered 201 while the broker took no queue", len(created), creations)
	require.Zero(t, testenv.Count(t, db, "SELECT count(*) FROM partition_pool WHERE claim IS NOT NULL"),
		"a failed creation kept its claim on a pooled partition")
	require.Equal(t, len(created)+1, testenv.Count(t, db, "SELECT count(*) FROM tenants"))

	// The calls given up on are answered once the broker takes queues again; until then a declare that names the
	// same queues (the shared dead-letter queue's binding) fails at once, so the first creation may still answer
	// 503.
	var after string
	testenv.Eventually(t, 20*time.Second, func() bool {
		r := a.Do(http.MethodPost, "/api/v1/tenants", map[string]any{"name": "after", "concurrency_config": 1})
		if r.Status == http.StatusCreated {
			after = r.Map(t)["id"].(string)
		}
		return after != ""
	}, "no creation succeeded once the broker took queues again")
	ok, _, _ := testenv.QueueState(t, cfg.AMQPURL, consumer.QueueName(uuid.MustParse(after)))
	require.True(t, ok, "the new tenant's queue exists")
	a.Publish(after, map[string]any{"n": 1})
	testenv.Eventually(t, 20*time.Second, func() bool { return stored(after) == 1 }, "the tenant created afterwards was not served")
}
