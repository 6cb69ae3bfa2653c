package e2e

import (
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
	"go.uber.org/fx"

	"github.com/acme/msgsvc/modules/consumer"
	"github.com/acme/msgsvc/platform/broker"
	"github.com/acme/msgsvc/test/testenv"
)

// createTenants creates n tenants through the API from clients concurrent clients and returns their ids. A 503
// (the broker too slow to form a quorum queue on a busy machine; nothing is left half made) is retried like a
// client would, at most 3 times.
func createTenants(t *testing.T, a *testenv.App, prefix string, n, clients int) []string {
	t.Helper()
	ids := make([]string, n)
	var (
		wg   sync.WaitGroup
		next = make(chan int)
		mu   sync.Mutex
		bad  []string
	)
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				var r testenv.Response
				for try := 0; ; try++ {
					r = a.Do(http.MethodPost, "/api/v1/tenants", map[string]any{"name": fmt.Sprintf("%s-%d", prefix, i), "concurrency_config": 1})
					if r.Status != http.StatusServiceUnavailable || try == 3 {
						break
					}
					time.Sleep(time.Second)
				}
				if r.Status != http.StatusCreated {
					mu.Lock()
					bad = append(bad, fmt.Sprintf("%d %s", r.Status, r.Body))
					mu.Unlock()
					continue
				}
				ids[i] = r.Map(t)["id"].(string)
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	require.Empty(t, bad, "creations that did not answer 201")
	return ids
}

// TestConsumersSpreadOverConnections caps a connection at 5 consumer channels and creates 12 tenants: the
// consumers spread over 3 pooled connections, and every tenant stores what it is sent.
func TestConsumersSpreadOverConnections(t *testing.T) {
	s := testenv.Get(t)
	cfg := s.Config(t)
	cfg.AMQPChannelsPerConnection = 5
	var (
		rt   *consumer.Runtime
		pool *broker.ConsumerPool
	)
	a := testenv.Start(t, cfg, fx.Populate(&rt, &pool))
	ids := createTenants(t, a, "spread", 12, 4)
	for _, id := range ids {
		require.Equal(t, 1, rt.Workers(uuid.MustParse(id)), "tenant %s consumes", id)
	}
	conns, chans := pool.Stats()
	require.Equal(t, 3, conns, "consumer connections")
	require.Equal(t, 12, chans, "consumer channels")
	for _, id := range ids {
		a.Publish(id, map[string]string{"tenant": id})
	}
	db := a.DB()
	testenv.Eventually(t, 30*time.Second, func() bool {
		return testenv.Count(t, db, "SELECT count(DISTINCT tenant_id) FROM messages") == len(ids)
	}, "every tenant stored its message")
}

// TestTwoThousandFiveHundredTenantsOnOneReplica creates 2,500 tenants on one replica, past the 2,047 channels
// one AMQP connection can carry: every creation answers 201, every tenant consumes (its consumers spread over
// two pooled connections), and the tenants created last store what they are sent. It is the slowest test of
// the suite (about two minutes here); the benchmark's scenario 5 goes to 5,000 and two replicas.
func TestTwoThousandFiveHundredTenantsOnOneReplica(t *testing.T) {
	const tenants = 2500
	s := testenv.Get(t)
	cfg := s.Config(t)
	cfg.MetricsPerTenant = false
	cfg.LogLevel = "warn"
	cfg.ReconcileInterval = time.Minute // the test's own checks, not reconciliation, find what is missing
	var (
		rt   *consumer.Runtime
		pool *broker.ConsumerPool
	)
	a := testenv.Start(t, cfg, fx.Populate(&rt, &pool))
	start := time.Now()
	ids := createTenants(t, a, "many", tenants, 8)
	took := time.Since(start)
	for _, id := range ids {
		require.Equal(t, 1, rt.Workers(uuid.MustParse(id)), "tenant %s consumes", id)
	}
	conns, chans := pool.Stats()
	require.Equal(t, tenants, chans, "consumer channels")
	require.Equal(t, (tenants+pool.PerConn()-1)/pool.PerConn(), conns, "consumer connections")
	last := ids[tenants-20:]
	for _, id := range last {
		a.Publish(id, map[string]string{"tenant": id})
	}
	db := a.DB()
	testenv.Eventually(t, 30*time.Second, func() bool {
		return testenv.Count(t, db, "SELECT count(*) FROM messages WHERE tenant_id = ANY($1::uuid[])", last) == len(last)
	}, "the last tenants store their messages")
	t.Logf("%d tenants created in %s (%.1f/s), all consuming over %d connections", tenants, took.Round(time.Second),
		float64(tenants)/took.Seconds(), conns)
}
