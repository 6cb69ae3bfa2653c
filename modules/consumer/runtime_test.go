package consumer_test

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"
	"go.uber.org/fx"
	"go.uber.org/goleak"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/acme/msgsvc/modules/consumer"
	"github.com/acme/msgsvc/test/testenv"
)

// slowHandler stores like the real handler after a delay, so that deliveries are in flight for a while, and
// tells which tenants have a store call running.
type slowHandler struct {
	inner consumer.Handler
	delay time.Duration

	mu     sync.Mutex
	active map[uuid.UUID]int
}

func (h *slowHandler) Handle(ctx context.Context, tenant uuid.UUID, ds []amqp.Delivery) []error {
	h.mu.Lock()
	h.active[tenant]++
	h.mu.Unlock()
	defer func() {
		h.mu.Lock()
		h.active[tenant]--
		h.mu.Unlock()
	}()
	time.Sleep(h.delay)
	return h.inner.Handle(ctx, tenant, ds)
}

func (h *slowHandler) busy(tenant uuid.UUID) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.active[tenant] > 0
}

// TestDeleteTenantsWithMessagesInFlight deletes tenants while their workers are storing: each delete answers
// 204 within the consumer drain timeout, nothing panics or logs an error, the tenant that stays keeps every
// message, and once the application stopped no goroutine of it is left.
func TestDeleteTenantsWithMessagesInFlight(t *testing.T) {
	s := testenv.Get(t)
	cfg := s.Config(t)
	// Goroutines that run now (the test framework's, idle connections of earlier set-up calls) are not the
	// application's.
	before := goleak.IgnoreCurrent()

	slow := &slowHandler{delay: 100 * time.Millisecond, active: map[uuid.UUID]int{}}
	a := testenv.Start(t, cfg, fx.Decorate(func(h consumer.Handler) consumer.Handler { slow.inner = h; return slow }))
	keep := a.CreateTenant("keep", 2)
	doomed := make([]string, 4)
	for i := range doomed {
		doomed[i] = a.CreateTenant(fmt.Sprintf("doomed-%d", i), 1+i%3)
	}

	// A backlog in each doomed tenant's queue, so that its consumer has deliveries waiting in the prefetch too...
	msgs := make([]map[string]any, 300)
	for i := range msgs {
		msgs[i] = map[string]any{"payload": map[string]int{"backlog": i}}
	}
	for _, tenant := range doomed {
		r := a.Do(http.MethodPost, "/api/v1/messages/batch", map[string]any{"tenant_id": tenant, "messages": msgs})
		require.Equal(t, http.StatusAccepted, r.Status, string(r.Body))
	}
	// ...and traffic into every tenant until the deletes are done; publishes to a deleted tenant answer 404.
	var (
		stop     atomic.Bool
		wg       sync.WaitGroup
		mu       sync.Mutex
		accepted []string
		unknown  []int
	)
	all := append([]string{keep}, doomed...)
	for c := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; !stop.Load(); i++ {
				tenant := all[(c+i)%len(all)]
				r := a.Do(http.MethodPost, "/api/v1/messages", map[string]any{"tenant_id": tenant, "payload": map[string]int{"c": c, "i": i}})
				mu.Lock()
				switch {
				case r.Status == http.StatusAccepted && tenant == keep:
					accepted = append(accepted, r.Map(t)["id"].(string))
				case r.Status != http.StatusAccepted && r.Status != http.StatusNotFound:
					unknown = append(unknown, r.Status)
				}
				mu.Unlock()
				time.Sleep(5 * time.Millisecond)
			}
		}()
	}

	del := func(tenant string) time.Duration {
		start := time.Now()
		r := a.Do(http.MethodDelete, "/api/v1/tenants/"+tenant, nil)
		took := time.Since(start)
		require.Equal(t, http.StatusNoContent, r.Status, string(r.Body))
		require.Less(t, took, cfg.ConsumerDrainTimeout, "delete of %s took longer than the drain timeout", tenant)
		return took
	}
	// One at a time, each while a store call of the tenant runs...
	var took []time.Duration
	for _, tenant := range doomed[:2] {
		testenv.Eventually(t, 20*time.Second, func() bool { return slow.busy(uuid.MustParse(tenant)) },
			"no store call of tenant %s in flight", tenant)
		took = append(took, del(tenant))
	}
	// ...and two at once.
	var pair sync.WaitGroup
	pairTook := make([]time.Duration, 2)
	for i, tenant := range doomed[2:] {
		pair.Add(1)
		go func() { defer pair.Done(); pairTook[i] = del(tenant) }()
	}
	pair.Wait()
	took = append(took, pairTook...)
	time.Sleep(500 * time.Millisecond) // traffic goes on for a moment after the deletes
	stop.Store(true)
	wg.Wait()
	require.Empty(t, unknown, "publishes answered neither 202 nor 404")

	for _, tenant := range doomed {
		exists, _, _ := testenv.QueueState(t, cfg.AMQPURL, consumer.QueueName(uuid.MustParse(tenant)))
		require.False(t, exists, "queue of deleted tenant %s", tenant)
	}
	db := testenv.Connect(t, cfg.DatabaseURL)
	testenv.Eventually(t, 30*time.Second, func() bool {
		return testenv.Count(t, db, "SELECT count(*) FROM messages WHERE tenant_id = $1", uuid.MustParse(keep)) == len(accepted)
	}, "the remaining tenant's %d accepted messages are not all stored", len(accepted))
	require.Equal(t, len(accepted), testenv.Count(t, db, "SELECT count(DISTINCT id) FROM messages WHERE id = ANY($1::uuid[])", accepted))
	require.NoError(t, db.Close(context.Background()))

	require.NoError(t, a.Stop())
	require.Empty(t, a.Logs.FilterLevelExact(zapcore.ErrorLevel).All(), "errors were logged")
	require.Empty(t, a.Logs.FilterMessageSnippet("panic").All(), "a panic was logged")
	t.Logf("deletes with messages in flight answered 204 in %v (drain timeout %s); the remaining tenant stored its %d messages once",
		took, cfg.ConsumerDrainTimeout, len(accepted))

	http.DefaultClient.CloseIdleConnections()
	goleak.VerifyNone(t, before,
		// Idle keep-alive connections of http.DefaultClient (the reconciler's management API calls) end on their
		// own once the server side closes them; they belong to the shared transport, not to the application.
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
	)
}

// TestAStopBeforeTheConsumeWasSentKeepsTheConnection stops generations whose consume the client has not sent yet.
// A start returns once the tenant's queue counts a consumer, and here another client's consumer is counted
// already (as the old owner's is in a handover), so each resize stops a generation a few milliseconds after its
// start, while its consume waits (a loaded machine's scheduling; here until the stop closes the channel). A
// channel.close sent before the consume makes RabbitMQ close the whole connection (504 "expected
// 'channel.open'"), and with it every consumer on it.
func TestAStopBeforeTheConsumeWasSentKeepsTheConnection(t *testing.T) {
	var delay atomic.Bool
	consumer.SetBeforeConsume(func(closing func() bool) {
		// The consume waits for the stop's close of its channel (300 ms at most), then goes at once.
		for deadline := time.Now().Add(300 * time.Millisecond); delay.Load() && !closing() && time.Now().Before(deadline); {
			time.Sleep(10 * time.Microsecond)
		}
	})
	t.Cleanup(func() { consumer.SetBeforeConsume(nil) })
	s := testenv.Get(t)
	cfg := s.Config(t)
	var rt *consumer.Runtime
	a := testenv.Start(t, cfg, fx.Populate(&rt))
	tenant := a.CreateTenant("stopped-early", 1)
	tid := uuid.MustParse(tenant)
	other := a.CreateTenant("bystander", 1) // its consumer shares the connection

	ch := testenv.AMQP(t, cfg.AMQPURL)
	_, err := ch.Consume(consumer.QueueName(tid), "another-client", false, false, false, false, nil)
	require.NoError(t, err)
	delay.Store(true)
	for i := range 10 {
		workers := 2 + i%2
		r := a.Do(http.MethodPut, "/api/v1/tenants/"+tenant+"/config/concurrency", map[string]int{"workers": workers})
		require.Equal(t, http.StatusOK, r.Status, string(r.Body))
		testenv.Eventually(t, 10*time.Second, func() bool { return rt.Workers(tid) == workers }, "resize to %d", workers)
	}
	time.Sleep(time.Second) // the delayed consumes are sent
	delay.Store(false)
	require.NoError(t, ch.Close())

	require.Empty(t, a.Logs.FilterMessageSnippet("connection lost").All(), "a consumer connection was lost")
	db := testenv.Connect(t, cfg.DatabaseURL)
	for _, id := range []string{tenant, other} {
		msg := a.Publish(id, map[string]string{"after": "resizes"})
		testenv.Eventually(t, 20*time.Second, func() bool {
			return testenv.Count(t, db, "SELECT count(*) FROM messages WHERE id = $1", msg) == 1
		}, "tenant %s stores a message after the resizes", id)
	}
	require.Empty(t, a.Logs.FilterMessageSnippet("connection lost").All(), "a consumer connection was lost")
}

// TestStopsUnderLoadKeepTheConnection resizes a consumer again and again while its queue holds a backlog, so
// that every stop happens with deliveries arriving: nothing may reach the broker on a channel after its close
// (a connection error that would close the connection every consumer and publisher shares), and every
// message is stored once.
func TestStopsUnderLoadKeepTheConnection(t *testing.T) {
	s := testenv.Get(t)
	cfg := s.Config(t)
	cfg.ConsumerBatchSize = 2
	var rt *consumer.Runtime
	a := testenv.Start(t, cfg, fx.Populate(&rt))
	tenant := a.CreateTenant("resized", 2)
	tid := uuid.MustParse(tenant)

	msgs := make([]map[string]any, 1000)
	for i := range msgs {
		msgs[i] = map[string]any{"payload": map[string]int{"i": i}}
	}
	var ids []any
	for range 10 {
		r := a.Do(http.MethodPost, "/api/v1/messages/batch", map[string]any{"tenant_id": tenant, "messages": msgs})
		require.Equal(t, http.StatusAccepted, r.Status, string(r.Body))
		ids = append(ids, r.Map(t)["ids"].([]any)...)
	}
	for i := range 30 {
		workers := 1 + i%3
		r := a.Do(http.MethodPut, "/api/v1/tenants/"+tenant+"/config/concurrency", map[string]int{"workers": workers})
		require.Equal(t, http.StatusOK, r.Status, string(r.Body))
		testenv.Eventually(t, 10*time.Second, func() bool { return rt.Workers(tid) == workers }, "resize to %d", workers)
		time.Sleep(20 * time.Millisecond)
	}
	db := testenv.Connect(t, cfg.DatabaseURL)
	testenv.Eventually(t, 60*time.Second, func() bool {
		return testenv.Count(t, db, "SELECT count(*) FROM messages WHERE tenant_id = $1", tid) == len(ids)
	}, "all %d messages stored", len(ids))
	require.Empty(t, a.Logs.FilterMessageSnippet("connection lost").All(), "a connection was lost during the stops")
	require.Empty(t, a.Logs.FilterMessageSnippet("consumer channel closed").All(), "a channel was closed by the broker during the stops")
	require.Empty(t, a.Logs.FilterLevelExact(zapcore.ErrorLevel).All(), "errors were logged")

	// The tenant consumer's log lines name the tenant once each.
	consumerLogs := a.Logs.Filter(func(e observer.LoggedEntry) bool { return e.LoggerName == "consumer" })
	for _, msg := range []string{"consumer started", "consumer stopped"} {
		entries := consumerLogs.FilterMessageSnippet(msg).All()
		require.NotEmpty(t, entries, "no %q line was logged", msg)
		for _, e := range entries {
			var named []string
			for _, f := range e.Context {
				if f.Key == "tenant_id" {
					named = append(named, f.String)
				}
			}
			require.Equal(t, []string{tenant}, named, "tenant_id of %q", e.Message)
		}
	}
}
