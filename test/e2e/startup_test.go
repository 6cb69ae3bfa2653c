package e2e

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
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

// closedPort returns a local address nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close())
	return addr
}

// TestStartupWithTheManagementAPIDown starts the service with RABBITMQ_MANAGEMENT_URL pointing at a closed
// port: it starts and answers /readyz, says that orphan-queue cleanup is off, and its tenants consume.
func TestStartupWithTheManagementAPIDown(t *testing.T) {
	s := testenv.Get(t)
	cfg := s.Config(t)
	cfg.RabbitMQManagementURL = "http://guest:guest@" + closedPort(t) + "/"
	a, err := testenv.TryStart(t, cfg)
	require.NoError(t, err, "the service must start without the management API")
	require.Equal(t, http.StatusOK, testenv.Status(a.URL+"/readyz"))
	tenant := a.CreateTenant("no-mgmt", 1)
	id := a.Publish(tenant, map[string]bool{"ok": true})
	db := a.DB()
	testenv.Eventually(t, 10*time.Second, func() bool {
		return testenv.Count(t, db, "SELECT count(*) FROM messages WHERE id = $1", uuid.MustParse(id)) == 1
	}, "stored")
	testenv.Eventually(t, 10*time.Second, func() bool {
		return len(a.Logs.FilterMessageSnippet("orphan-queue cleanup is off").All()) == 1
	}, "the log says once that orphan cleanup is off")
	require.Contains(t, scrape(t, a.URL), "msgsvc_orphan_queue_cleanup_enabled 0")
}

// TestStartupWithATenantThatCannotConsume restarts the service while another connection holds one tenant's
// queue as its exclusive queue, so that tenant's queue cannot be used (RESOURCE_LOCKED): the service starts
// anyway, the other tenants consume, the failing tenant is reported (metric, status) and retried, and it
// consumes once the queue is free.
func TestStartupWithATenantThatCannotConsume(t *testing.T) {
	s := testenv.Get(t)
	cfg := s.Config(t)
	cfg.ReconcileInterval = 500 * time.Millisecond
	first := testenv.Start(t, cfg)
	blocked := first.CreateTenant("blocked", 1)
	fine := first.CreateTenant("fine", 1)
	require.NoError(t, first.Stop())

	ch := testenv.AMQP(t, cfg.AMQPURL)
	queue := consumer.QueueName(uuid.MustParse(blocked))
	_, err := ch.QueueDelete(queue, false, false, false)
	require.NoError(t, err)
	_, err = ch.QueueDeclare(queue, false, false, true, false, nil)
	require.NoError(t, err)

	var rt *consumer.Runtime
	a, err := testenv.TryStart(t, cfg, fx.Populate(&rt))
	require.NoError(t, err, "one tenant must not stop the service")
	require.Equal(t, http.StatusOK, testenv.Status(a.URL+"/readyz"))
	testenv.Eventually(t, 5*time.Second, func() bool { return rt.Workers(uuid.MustParse(fine)) == 1 }, "the other tenant consumes")
	require.Zero(t, rt.Workers(uuid.MustParse(blocked)))
	testenv.Eventually(t, 5*time.Second, func() bool {
		return strings.Contains(scrape(t, a.URL), "msgsvc_consumers_failing 1")
	}, "the failing tenant is counted")
	st := a.Do(http.MethodGet, "/api/v1/tenants/"+blocked, nil).Map(t)["consumer"].(map[string]any)
	require.Equal(t, false, st["running"], "status: %v", st)
	require.NotEmpty(t, st["error"], "status: %v", st)

	_, err = ch.QueueDelete(queue, false, false, false)
	require.NoError(t, err)
	testenv.Eventually(t, 10*time.Second, func() bool { return rt.Workers(uuid.MustParse(blocked)) == 1 }, "retried until it consumes")
	testenv.Eventually(t, 5*time.Second, func() bool {
		return strings.Contains(scrape(t, a.URL), "msgsvc_consumers_failing 0")
	}, "no tenant failing")
}

// TestQueueWithoutSingleActiveConsumerKeepsWorking starts the service on a tenant queue declared as an older
// version did, without x-single-active-consumer: RabbitMQ cannot change an existing queue's arguments, so the
// service consumes it as it is, says so once in the log and counts it.
func TestQueueWithoutSingleActiveConsumerKeepsWorking(t *testing.T) {
	s := testenv.Get(t)
	cfg := s.Config(t)
	cfg.ReconcileInterval = 300 * time.Millisecond
	first := testenv.Start(t, cfg)
	tenant := first.CreateTenant("old-queue", 1)
	require.NoError(t, first.Stop())

	// The queue as the version before this one declared it.
	ch := testenv.AMQP(t, cfg.AMQPURL)
	queue := consumer.QueueName(uuid.MustParse(tenant))
	_, err := ch.QueueDelete(queue, false, false, false)
	require.NoError(t, err)
	_, err = ch.QueueDeclare(queue, true, false, false, false, amqp.Table{"x-queue-type": "quorum",
		"x-dead-letter-exchange": cfg.AMQPExchange + ".dlx", "x-dead-letter-routing-key": tenant, "x-delivery-limit": int64(cfg.AMQPDeliveryLimit)})
	require.NoError(t, err)
	require.NoError(t, ch.QueueBind(queue, tenant, cfg.AMQPExchange, false, nil))

	a := testenv.Start(t, cfg)
	testenv.Eventually(t, 10*time.Second, func() bool {
		return len(a.Logs.FilterMessageSnippet("has no single active consumer").All()) == 1
	}, "the old queue is reported")
	require.Contains(t, scrape(t, a.URL), "msgsvc_tenant_queues_without_single_active_consumer 1")
	id := a.Publish(tenant, map[string]bool{"old": true})
	db := a.DB()
	testenv.Eventually(t, 10*time.Second, func() bool {
		return testenv.Count(t, db, "SELECT count(*) FROM messages WHERE id = $1", uuid.MustParse(id)) == 1
	}, "stored through the old queue")
	time.Sleep(time.Second) // more reconciliation runs: still one log line
	require.Len(t, a.Logs.FilterMessageSnippet("has no single active consumer").All(), 1)
}

// TestReconcileRepairsWhileTheManagementAPIHangs points RABBITMQ_MANAGEMENT_URL at a server that accepts and
// never answers: a reconciliation pass gives its listing up after a few seconds, inspects every queue instead,
// and declares again a queue deleted behind the service's back, rather than waiting for the API's 30 s timeout.
func TestReconcileRepairsWhileTheManagementAPIHangs(t *testing.T) {
	release := make(chan struct{})
	hang := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(func() { close(release); hang.Close() })
	s := testenv.Get(t)
	cfg := s.Config(t)
	cfg.RabbitMQManagementURL = strings.Replace(hang.URL, "http://", "http://guest:guest@", 1)
	cfg.ReconcileInterval = time.Hour // only the pass this test runs
	var rt *consumer.Runtime
	a := testenv.Start(t, cfg, fx.Populate(&rt))
	tenant := uuid.MustParse(a.CreateTenant("mgmt-hangs", 1))
	ch := testenv.AMQP(t, cfg.AMQPURL)
	_, err := ch.QueueDelete(consumer.QueueName(tenant), false, false, false)
	require.NoError(t, err)
	began := time.Now()
	require.NoError(t, rt.Reconcile(context.Background()))
	require.Less(t, time.Since(began), 20*time.Second, "the pass waited for the hanging management API")
	ok, _, _ := testenv.QueueState(t, cfg.AMQPURL, consumer.QueueName(tenant))
	require.True(t, ok, "the deleted queue was not declared again")
	id := uuid.MustParse(a.Publish(tenant.String(), map[string]bool{"after": true}))
	awaitStored(t, a.DB(), []uuid.UUID{id}, 10*time.Second, "stored after the repair")
}

// TestReconcileFallsBackToTheCheapListing points RABBITMQ_MANAGEMENT_URL at a proxy of the real management API
// that never answers a listing with statistics (as one of many thousands of queues on a busy broker may not in
// time): a pass that asks for it (every fourth, at most once in 10 s) takes the cheap listing instead and still
// inspects only its quarter of the queues, rather than every queue. Passes ask for it only where it can find
// something: quorum queues on RabbitMQ 3.x; with classic queues, or on 4.0, they never do.
func TestReconcileFallsBackToTheCheapListing(t *testing.T) {
	s := testenv.Get(t)
	for _, qt := range []string{"quorum", "classic"} {
		t.Run(qt, func(t *testing.T) {
			cfg := s.Config(t)
			cfg.AMQPQueueType = qt
			version := testenv.RabbitMQVersion(t, cfg.RabbitMQManagementURL)
			asks := qt == "quorum" && strings.HasPrefix(version, "3.")
			release := make(chan struct{})
			var statsAsked atomic.Int32
			cfg.RabbitMQManagementURL = testenv.ManagementProxy(t, cfg.RabbitMQManagementURL, func(_ http.ResponseWriter, r *http.Request) bool {
				if !strings.Contains(r.URL.RawQuery, "messages_unacknowledged") {
					return false
				}
				statsAsked.Add(1)
				select {
				case <-release:
				case <-r.Context().Done():
				}
				return true
			})
			t.Cleanup(func() { close(release) }) // before the proxy closes, which waits for the held listings
			cfg.ReconcileInterval = time.Hour    // only the passes this test runs
			var rt *consumer.Runtime
			a := testenv.Start(t, cfg, fx.Populate(&rt))
			const n = 8
			for i := range n {
				id := uuid.MustParse(a.CreateTenant(fmt.Sprintf("fallback-%s-%d", qt, i), 1))
				awaitConsumed(t, cfg.AMQPURL, id, 10*time.Second, "tenant consumed")
			}
			inspections := func() float64 { return metricValue(t, scrape(t, a.URL), "msgsvc_reconcile_queue_inspections_total") }
			before := inspections()
			for range 8 {
				require.NoError(t, rt.Reconcile(context.Background()))
			}
			require.Equal(t, float64(2*n), inspections()-before, "eight passes inspect each queue twice, the two without statistics included")
			if !asks {
				require.Zero(t, statsAsked.Load(), "RabbitMQ %s, %s queues: no pass needs the statistics", version, qt)
				require.Zero(t, a.Logs.FilterMessage("reconciliation pass was slow").Len())
				return
			}
			require.GreaterOrEqual(t, statsAsked.Load(), int32(1), "a pass asks for the statistics (every fourth, at most once in 10 s)")
			// The operator sees why such a pass took its time.
			require.NotZero(t, a.Logs.FilterMessageSnippet("listing with statistics did not answer").Len())
			slow := a.Logs.FilterMessage("reconciliation pass was slow").All()
			require.NotEmpty(t, slow, "a pass that waited out the listing's timeout logs where its time went")
			require.GreaterOrEqual(t, slow[0].ContextMap()["listing"], 5*time.Second)
		})
	}
}
