package e2e

import (
	"fmt"
	"net/http"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
	"go.uber.org/fx"

	"github.com/acme/msgsvc/modules/consumer"
	"github.com/acme/msgsvc/test/testenv"
)

// idleTenantGoroutines is what an idle tenant may cost the service in goroutines: its consume's (which hands
// deliveries over) and amqp091's delivery buffer of the consume. The store workers start with deliveries and
// leave when idle, and the connection is watched without a goroutine per consumer. With go-rabbitmq's consumer
// (until 2026-12-06) it was 5: its Run call, its channel manager's close watch, its reconnect dispatcher's
// subscriber and its handler.
const idleTenantGoroutines = 2

// TestIdleTenantsCostFewGoroutines creates 50 tenants of 3 workers each, publishes one message into each, and
// checks that once they are idle again the service runs at most idleTenantGoroutines goroutines per tenant more
// than before (with a tolerance of 20 for the whole service): store workers do not wait parked for deliveries.
func TestIdleTenantsCostFewGoroutines(t *testing.T) {
	s := testenv.Get(t)
	var rt *consumer.Runtime
	a := testenv.Start(t, s.Config(t), fx.Populate(&rt))
	db := a.DB()
	// A first tenant opens the pooled consumer connection and warms the publisher and HTTP connections up.
	warm := a.CreateTenant("idle-warm", 3)
	a.Publish(warm, map[string]any{"warm": true})
	testenv.Eventually(t, 30*time.Second, func() bool {
		return testenv.Count(t, db, "SELECT count(*) FROM messages WHERE tenant_id = $1", uuid.MustParse(warm)) == 1
	}, "the warm-up message is stored")
	// The tolerance covers what is not per tenant: the HTTP clients' keep-alive connections (three goroutines
	// each), the publisher's channels, the warm-up tenant's worker leaving.
	const n, tolerance = 50, 20
	settled := func() int {
		runtime.GC()
		return runtime.NumGoroutine()
	}
	before := settled()

	ids := make([]string, n)
	var wg sync.WaitGroup
	next := make(chan int)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				r := a.Do(http.MethodPost, "/api/v1/tenants", map[string]any{"name": fmt.Sprintf("idle-%d", i), "concurrency_config": 3})
				if r.Status == http.StatusCreated {
					ids[i] = r.Map(t)["id"].(string)
				}
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	for i, id := range ids {
		require.NotEmpty(t, id, "tenant %d created", i)
		a.Publish(id, map[string]any{"i": i})
	}
	testenv.Eventually(t, 60*time.Second, func() bool {
		return testenv.Count(t, db, "SELECT count(*) FROM messages WHERE tenant_id <> $1", uuid.MustParse(warm)) == n
	}, "one message stored for each tenant")
	for _, id := range ids {
		require.Equal(t, 3, rt.Workers(uuid.MustParse(id)), "tenant %s consumes with its 3 workers configured", id)
	}

	var after int
	ok := testenv.Wait(30*time.Second, func() bool {
		after = settled()
		return after-before <= n*idleTenantGoroutines+tolerance
	})
	perTenant := float64(after-before) / n
	t.Logf("goroutines: %d before, %d with %d more idle tenants: %.2f per idle tenant", before, after, n, perTenant)
	if !ok {
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		t.Logf("goroutines (first 64 kB):\n%s", buf[:min(len(buf), 64<<10)])
	}
	require.True(t, ok, "an idle tenant costs %.2f goroutines, more than %d", perTenant, idleTenantGoroutines)

	// The idle tenants still consume: a message each is stored again, by workers started for it.
	for i, id := range ids {
		a.Publish(id, map[string]any{"again": i})
	}
	testenv.Eventually(t, 60*time.Second, func() bool {
		return testenv.Count(t, db, "SELECT count(*) FROM messages WHERE tenant_id <> $1", uuid.MustParse(warm)) == 2*n
	}, "a second message stored for each tenant")
}
