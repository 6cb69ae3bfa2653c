package e2e

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
	"go.uber.org/fx"

	"github.com/acme/msgsvc/modules/consumer"
	"github.com/acme/msgsvc/platform/broker"
	"github.com/acme/msgsvc/platform/config"
	"github.com/acme/msgsvc/test/testenv"
)

// TestDroppedPoolConnectionReconsumesPaced closes (through the management API) the pooled connection that
// carries 300 tenants' consumers while clients publish. The pool retires it and opens another; every
// consumer is started again by the runtime, never more than 16 consumes at once (go-rabbitmq would have
// re-opened channel, qos and consume of all 300 together), each tenant is consumed again, and every message
// answered 202 meanwhile is stored. The connection is replaced once: nothing keeps it cycling.
func TestDroppedPoolConnectionReconsumesPaced(t *testing.T) {
	s := testenv.Get(t)
	cfg := s.Config(t)
	var rt *consumer.Runtime
	var pool *broker.ConsumerPool
	a := testenv.Start(t, cfg, fx.Populate(&rt, &pool))

	const n = 300
	tenants := make([]string, n)
	var wg sync.WaitGroup
	next := make(chan int)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				tenants[i] = a.CreateTenant(fmt.Sprintf("reconsume-%d", i), 1)
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	allConsume := func() bool {
		for _, id := range tenants {
			if rt.Workers(uuid.MustParse(id)) != 1 {
				return false
			}
		}
		return true
	}
	testenv.Eventually(t, 60*time.Second, allConsume, "every tenant consumes")
	conns, _ := pool.Stats()
	require.Equal(t, 1, conns, "the tenants share one pooled connection")
	startsBefore := metricValue(t, scrape(t, a.URL), "msgsvc_consumer_start_concurrency_count")

	// Clients publish round the tenants while the connection drops and the consumers come back.
	stop := make(chan struct{})
	var mu sync.Mutex
	var accepted []string
	var pubs sync.WaitGroup
	for c := range 4 {
		pubs.Add(1)
		go func() {
			defer pubs.Done()
			for i := c; ; i += 4 {
				select {
				case <-stop:
					return
				default:
				}
				r := a.Do(http.MethodPost, "/api/v1/messages", map[string]any{"tenant_id": tenants[i%n], "payload": map[string]int{"i": i}})
				if r.Status == http.StatusAccepted {
					mu.Lock()
					accepted = append(accepted, r.Map(t)["id"].(string))
					mu.Unlock()
				}
			}
		}()
	}

	closeConnection(t, s, cfg, "msgsvc-"+cfg.ReplicaID+"-consumer-1")
	testenv.Eventually(t, 10*time.Second, func() bool { return pool.Lost() == 1 }, "the pool saw its connection drop")
	testenv.Eventually(t, 60*time.Second, allConsume, "every tenant consumes again")
	time.Sleep(500 * time.Millisecond) // a few more publishes into the restarted consumers
	close(stop)
	pubs.Wait()

	// The broker counts each tenant's consumer again.
	ch := testenv.AMQP(t, cfg.AMQPURL)
	for _, id := range tenants {
		q, err := ch.QueueDeclarePassive(consumer.QueueName(uuid.MustParse(id)), true, false, false, false, nil)
		require.NoError(t, err)
		require.Equal(t, 1, q.Consumers, "tenant %s has no consumer", id)
	}
	db := a.DB()
	testenv.Eventually(t, 30*time.Second, func() bool {
		return testenv.Count(t, db, "SELECT count(*) FROM messages WHERE id = ANY($1::text[]::uuid[])", accepted) == len(accepted)
	}, "every accepted message is stored")

	m := scrape(t, a.URL)
	starts := metricValue(t, m, "msgsvc_consumer_start_concurrency_count") - startsBefore
	require.GreaterOrEqual(t, starts, float64(n), "every consumer was started again")
	require.Equal(t, metricValue(t, m, `msgsvc_consumer_start_concurrency_count`),
		metricValue(t, m, `msgsvc_consumer_start_concurrency_bucket{le="16"}`), "more than 16 consumes ran at once")
	require.EqualValues(t, 1, pool.Lost(), "the pooled connection was replaced more than once")
	t.Logf("%d consumers started again after the connection dropped; %d messages accepted meanwhile, all stored", int(starts), len(accepted))
}

// closeConnection closes the broker connection whose client-given name is name, through the management API.
func closeConnection(t *testing.T, s *testenv.Servers, cfg config.Config, name string) {
	t.Helper()
	mgmt := s.Management(t)
	var target string
	testenv.Eventually(t, 15*time.Second, func() bool {
		cs, err := mgmt.Connections(context.Background(), config.VHost(cfg.AMQPURL))
		require.NoError(t, err)
		for _, c := range cs {
			if c.ConnectionName() == name {
				target = c.Name
			}
		}
		return target != ""
	}, "the management API lists connection %s", name)
	u, err := url.Parse(s.ManagementURL)
	require.NoError(t, err)
	req, err := http.NewRequest(http.MethodDelete, s.ManagementURL+"api/connections/"+url.PathEscape(target), nil)
	if u.Path == "" || u.Path[len(u.Path)-1] != '/' {
		req, err = http.NewRequest(http.MethodDelete, s.ManagementURL+"/api/connections/"+url.PathEscape(target), nil)
	}
	require.NoError(t, err)
	req.Header.Set("X-Reason", "test: pooled connection dropped")
	if p, ok := u.User.Password(); ok {
		req.SetBasicAuth(u.User.Username(), p)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusNoContent, resp.StatusCode, "close connection %s", target)
}

// metricValue returns the value of the sample named series (with its labels as written) in a scrape.
func metricValue(t *testing.T, scraped, series string) float64 {
	t.Helper()
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`).FindStringSubmatch(scraped)
	require.NotNil(t, m, "no sample %s", series)
	v, err := strconv.ParseFloat(m[1], 64)
	require.NoError(t, err)
	return v
}

// TestQuorumQueueNotRunningDoesNotCycleTheConnection starts the service while one tenant's quorum queue is not
// running (its Raft member stopped): RabbitMQ 3.10 answers a consume of it by closing the whole connection (541
// INTERNAL_ERROR), with every other consumer on it. The shared connection drops at most once, for that first
// consume; from then on the tenant's consumer starts on a connection of its own, which alone cycles while it is
// retried, and the other tenants consume and store. Once the queue runs again, the tenant consumes.
func TestQuorumQueueNotRunningDoesNotCycleTheConnection(t *testing.T) {
	s := testenv.Get(t)
	cfg := s.Config(t)
	cfg.AMQPQueueType = "quorum"
	cfg.ReconcileInterval = 300 * time.Millisecond
	first := testenv.Start(t, cfg)
	tenants := make([]string, 8)
	for i := range tenants {
		tenants[i] = first.CreateTenant(fmt.Sprintf("qq-%d", i), 1)
	}
	require.NoError(t, first.Stop())
	bad := uuid.MustParse(tenants[0])
	raServer := fmt.Sprintf(`{ok, Q} = rabbit_amqqueue:lookup(rabbit_misc:r(<<"%s">>, queue, <<"%s">>)), {Name, _} = amqqueue:get_pid(Q), `,
		config.VHost(cfg.AMQPURL), consumer.QueueName(bad))
	s.RunScript(t, "rabbitmqctl", "eval", raServer+"ra:stop_server(quorum_queues, {Name, node()}).")

	var rt *consumer.Runtime
	var pool *broker.ConsumerPool
	a := testenv.Start(t, cfg, fx.Populate(&rt, &pool))
	testenv.Eventually(t, 30*time.Second, func() bool {
		for _, id := range tenants[1:] {
			if rt.Workers(uuid.MustParse(id)) != 1 {
				return false
			}
		}
		return true
	}, "the other tenants consume")
	// The failing tenant is retried (reconciliation, 300 ms) on isolated connections, each closed by its consume.
	testenv.Eventually(t, 30*time.Second, func() bool { return pool.LostIsolated() >= 3 }, "the failing tenant is retried in isolation")
	require.LessOrEqual(t, pool.Lost(), int64(1), "the shared connection cycled")
	require.Zero(t, rt.Workers(bad))
	ids := make([]string, 0, len(tenants)-1)
	for _, id := range tenants[1:] {
		ids = append(ids, a.Publish(id, map[string]string{"k": "v"}))
	}
	db := a.DB()
	testenv.Eventually(t, 10*time.Second, func() bool {
		return testenv.Count(t, db, "SELECT count(*) FROM messages WHERE id = ANY($1::text[]::uuid[])", ids) == len(ids)
	}, "the other tenants store")
	require.LessOrEqual(t, pool.Lost(), int64(1), "the shared connection cycled")

	s.RunScript(t, "rabbitmqctl", "eval", raServer+"ra:restart_server(quorum_queues, {Name, node()}).")
	testenv.Eventually(t, 30*time.Second, func() bool { return rt.Workers(bad) == 1 }, "the tenant consumes once its queue runs")
	require.LessOrEqual(t, pool.Lost(), int64(1), "the shared connection cycled")
	t.Logf("shared connection lost %d time(s); isolated connections lost %d times", pool.Lost(), pool.LostIsolated())
}
