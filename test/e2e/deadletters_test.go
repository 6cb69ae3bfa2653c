package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/http"
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

// flakyHandler fails every store while broken is set, like a database that keeps refusing.
type flakyHandler struct {
	inner  consumer.Handler
	broken atomic.Bool
}

func (h *flakyHandler) Handle(ctx context.Context, tenant uuid.UUID, ds []amqp.Delivery) []error {
	if h.broken.Load() {
		errs := make([]error, len(ds))
		for i := range errs {
			errs[i] = errors.New("injected: database refuses")
		}
		return errs
	}
	return h.inner.Handle(ctx, tenant, ds)
}

type deadLetter struct {
	ID             string         `json:"id"`
	TenantID       string         `json:"tenant_id"`
	OriginalID     string         `json:"original_id"`
	Reason         string         `json:"reason"`
	LastError      string         `json:"last_error"`
	Attempts       int            `json:"attempts"`
	Payload        map[string]any `json:"payload"`
	RawPayload     *string        `json:"raw_payload"`
	Headers        map[string]any `json:"headers"`
	CreatedAt      *time.Time     `json:"created_at"`
	DeadLetteredAt time.Time      `json:"dead_lettered_at"`
}

type deadLetterPage struct {
	Data       []deadLetter `json:"data"`
	NextCursor *string      `json:"next_cursor"`
	HasMore    bool         `json:"has_more"`
}

func listDeadLetters(t *testing.T, a *testenv.App, tenant, query string) deadLetterPage {
	t.Helper()
	r := a.Do(http.MethodGet, "/api/v1/tenants/"+tenant+"/dead-letters"+query, nil)
	require.Equal(t, http.StatusOK, r.Status, string(r.Body))
	var p deadLetterPage
	r.JSON(t, &p)
	return p
}

// TestDeadLettersListAndReplay: an undecodable message and messages whose store failed past the delivery
// limit become rows with their reason and last error; listing them any number of times changes nothing;
// they page with a cursor, filter by reason, are found by id, replayed by id and all, and discarded.
func TestDeadLettersListAndReplay(t *testing.T) {
	s := testenv.Get(t)
	cfg := s.Config(t)
	cfg.StoreRetryInitial = 20 * time.Millisecond
	cfg.StoreRetryBudget = 100 * time.Millisecond
	cfg.AMQPDeliveryLimit = 3
	flaky := &flakyHandler{}
	a := testenv.Start(t, cfg, fx.Decorate(func(h consumer.Handler) consumer.Handler { flaky.inner = h; return flaky }))
	db := a.DB()
	tenant := a.CreateTenant("dlq", 2)
	tid := uuid.MustParse(tenant)

	// Undecodable: dead-lettered at once, with its reason and error.
	poison := uuid.NewString()
	publishDirect(t, cfg.AMQPURL, cfg.AMQPExchange, tenant, poison, []byte(`not json`), nil)
	testenv.Eventually(t, 10*time.Second, func() bool {
		return testenv.Count(t, db, "SELECT count(*) FROM dead_letters WHERE tenant_id = $1", tid) == 1
	}, "undecodable message dead-lettered")
	// Transient failures past the retry budget, AMQP_DELIVERY_LIMIT times: retries exhausted, with the last error.
	flaky.broken.Store(true)
	var ids []string
	for i := range 3 {
		ids = append(ids, a.Publish(tenant, map[string]int{"i": i}))
	}
	testenv.Eventually(t, 20*time.Second, func() bool {
		return testenv.Count(t, db, "SELECT count(*) FROM dead_letters WHERE tenant_id = $1", tid) == 4
	}, "four dead letters")
	flaky.broken.Store(false)

	var first deadLetterPage
	for i := range 30 { // looking does not consume, however often
		p := listDeadLetters(t, a, tenant, "?limit=10")
		require.Len(t, p.Data, 4, "look %d", i)
		if i == 0 {
			first = p
		}
		require.Equal(t, first, p, "look %d changed the dead letters", i)
	}
	reasons := map[string]int{}
	for _, d := range first.Data {
		reasons[d.Reason]++
		require.WithinDuration(t, time.Now(), d.DeadLetteredAt, time.Minute)
		require.Equal(t, tenant, d.TenantID)
		if d.Reason == consumer.ReasonRetriesExhausted {
			require.Equal(t, "injected: database refuses", d.LastError)
			require.Equal(t, 3, d.Attempts)
			require.NotNil(t, d.Payload)
			require.NotNil(t, d.CreatedAt, "the message's own creation time")
		} else {
			require.Equal(t, poison, d.ID)
			require.Contains(t, d.LastError, "payload must be a JSON object or array")
			require.NotNil(t, d.RawPayload)
			require.Equal(t, "not json", *d.RawPayload)
		}
	}
	require.Equal(t, map[string]int{consumer.ReasonUndecodable: 1, consumer.ReasonRetriesExhausted: 3}, reasons)
	// Newest first, one per page, every one once.
	var paged []string
	cursor := ""
	for {
		p := listDeadLetters(t, a, tenant, "?limit=1"+cursor)
		for _, d := range p.Data {
			paged = append(paged, d.ID)
		}
		if !p.HasMore {
			break
		}
		cursor = "&cursor=" + *p.NextCursor
	}
	require.Len(t, paged, 4)
	for i, d := range first.Data {
		require.Equal(t, d.ID, paged[i])
	}
	require.Len(t, listDeadLetters(t, a, tenant, "?reason=undecodable").Data, 1)
	require.Len(t, listDeadLetters(t, a, tenant, "?reason=retries_exhausted").Data, 3)
	require.Len(t, listDeadLetters(t, a, tenant, "?reason=nope").Data, 0)

	r := a.Do(http.MethodGet, "/api/v1/tenants/"+tenant+"/dead-letters/"+ids[0], nil)
	require.Equal(t, http.StatusOK, r.Status, string(r.Body))
	require.Equal(t, ids[0], r.Map(t)["id"])
	require.Equal(t, http.StatusBadRequest, a.Do(http.MethodGet, "/api/v1/tenants/"+tenant+"/dead-letters?limit=0", nil).Status)
	require.Equal(t, http.StatusBadRequest, a.Do(http.MethodGet, "/api/v1/tenants/"+tenant+"/dead-letters/nope", nil).Status)
	require.Equal(t, http.StatusNotFound, a.Do(http.MethodGet, "/api/v1/tenants/"+tenant+"/dead-letters/"+uuid.NewString(), nil).Status)
	require.Equal(t, http.StatusNotFound, a.Do(http.MethodGet, "/api/v1/tenants/"+uuid.NewString()+"/dead-letters", nil).Status)
	require.Equal(t, http.StatusNotFound, a.Do(http.MethodPost, "/api/v1/tenants/"+uuid.NewString()+"/dead-letters/replay", nil).Status)
	require.Equal(t, http.StatusNotFound, a.Do(http.MethodPost, "/api/v1/tenants/"+tenant+"/dead-letters/"+uuid.NewString()+"/replay", nil).Status)

	// Replay one by id: stored, its row gone.
	r = a.Do(http.MethodPost, "/api/v1/tenants/"+tenant+"/dead-letters/"+ids[0]+"/replay", nil)
	require.Equal(t, http.StatusOK, r.Status, string(r.Body))
	require.EqualValues(t, 1, r.Map(t)["replayed"])
	testenv.Eventually(t, 10*time.Second, func() bool {
		return testenv.Count(t, db, "SELECT count(*) FROM messages WHERE id = $1", uuid.MustParse(ids[0])) == 1
	}, "the replayed message is stored")
	require.Equal(t, 3, testenv.Count(t, db, "SELECT count(*) FROM dead_letters WHERE tenant_id = $1", tid))

	// Replay the rest: the two stored now, the undecodable one dead-lettered again.
	r = a.Do(http.MethodPost, "/api/v1/tenants/"+tenant+"/dead-letters/replay", nil)
	require.Equal(t, http.StatusOK, r.Status, string(r.Body))
	require.EqualValues(t, 3, r.Map(t)["replayed"])
	testenv.Eventually(t, 10*time.Second, func() bool {
		return testenv.Count(t, db, "SELECT count(*) FROM messages WHERE tenant_id = $1", tid) == 3
	}, "replayed messages stored")
	for _, id := range ids {
		require.Equal(t, 1, testenv.Count(t, db, "SELECT count(*) FROM messages WHERE id = $1", uuid.MustParse(id)))
	}
	testenv.Eventually(t, 10*time.Second, func() bool {
		p := listDeadLetters(t, a, tenant, "")
		return len(p.Data) == 1 && p.Data[0].ID == poison
	}, "the undecodable message is dead-lettered again")
	require.Contains(t, scrape(t, a.URL), `msgsvc_dead_letters_replayed_total{tenant="`+tenant+`"} 4`)
	require.Contains(t, scrape(t, a.URL), `msgsvc_messages_dead_lettered_total{reason="retries_exhausted",tenant="`+tenant+`"} 3`)

	// Discard it.
	require.Equal(t, http.StatusNoContent, a.Do(http.MethodDelete, "/api/v1/tenants/"+tenant+"/dead-letters/"+poison, nil).Status)
	require.Equal(t, http.StatusNotFound, a.Do(http.MethodDelete, "/api/v1/tenants/"+tenant+"/dead-letters/"+poison, nil).Status)
	require.Empty(t, listDeadLetters(t, a, tenant, "").Data)
}

// takeDeliveries consumes n deliveries of queue on ch under consumer tag tag, unacknowledged (a consumer, since
// quorum queues with single active consumer refuse basic.get); t fails when one does not come within wait.
func takeDeliveries(t *testing.T, ch *amqp.Channel, queue, tag string, n int, wait time.Duration) []amqp.Delivery {
	t.Helper()
	deliveries, err := ch.Consume(queue, tag, false, false, false, false, nil)
	require.NoError(t, err)
	ds := make([]amqp.Delivery, 0, n)
	for len(ds) < n {
		select {
		case d := <-deliveries:
			ds = append(ds, d)
		case <-time.After(wait):
			t.Fatalf("%s: delivery %d of %d did not come", queue, len(ds)+1, n)
		}
	}
	return ds
}

// TestReturnsDoNotCountAsFailures returns the same waiting messages to the tenant's queue 30 times (a client
// that takes and gives them back, as a stop, a resize or a reconnection does): none is dead-lettered or lost,
// whatever the broker counts (quorum queues count such returns in x-delivery-count and, before the service
// counted failures itself, dead-lettered a message after AMQP_DELIVERY_LIMIT of them).
func TestReturnsDoNotCountAsFailures(t *testing.T) {
	s := testenv.Get(t)
	cfg := s.Config(t)
	a := testenv.Start(t, cfg)
	tenant := a.CreateTenant("returns", 2)
	tid := uuid.MustParse(tenant)
	require.NoError(t, a.Stop())

	const n = 10
	for i := range n {
		publishDirect(t, cfg.AMQPURL, cfg.AMQPExchange, tenant, uuid.NewString(), []byte(fmt.Sprintf(`{"i":%d}`, i)), nil)
	}
	ch := testenv.AMQP(t, cfg.AMQPURL)
	for round := range 30 {
		// A consumer that takes all of them and gives them back (basic.get is refused on single active consumer
		// queues): the consumer's cancel and a nack with requeue return them.
		tag := fmt.Sprintf("returns-%d", round)
		ds := takeDeliveries(t, ch, consumer.QueueName(tid), tag, n, 5*time.Second)
		require.NoError(t, ch.Cancel(tag, false))
		require.NoError(t, ch.Nack(ds[n-1].DeliveryTag, true, true))
		testenv.Eventually(t, 5*time.Second, func() bool {
			_, ready, _ := testenv.QueueState(t, cfg.AMQPURL, consumer.QueueName(tid))
			return ready == n
		}, "round %d: the messages are not back", round)
	}

	b := testenv.Start(t, cfg)
	db := b.DB()
	testenv.Eventually(t, 15*time.Second, func() bool {
		return testenv.Count(t, db, "SELECT count(*) FROM messages WHERE tenant_id = $1", tid) == n
	}, "every returned message is stored")
	require.Zero(t, testenv.Count(t, db, "SELECT count(*) FROM dead_letters"))
}

// TestRejectedByBrokerLandsInTable: a delivery rejected without requeue by another client is dead-lettered by
// RabbitMQ itself; the service moves it from the shared dead-letter queue into the table.
func TestRejectedByBrokerLandsInTable(t *testing.T) {
	s := testenv.Get(t)
	cfg := s.Config(t)
	a := testenv.Start(t, cfg)
	tenant := a.CreateTenant("rejected", 1)
	tid := uuid.MustParse(tenant)
	require.NoError(t, a.Stop())

	id := uuid.NewString()
	publishDirect(t, cfg.AMQPURL, cfg.AMQPExchange, tenant, id, []byte(`{"rejected":true}`), nil)
	ch := testenv.AMQP(t, cfg.AMQPURL)
	// A consumer, not basic.get: quorum queues with single active consumer refuse basic.get.
	require.NoError(t, ch.Qos(1, 0, false))
	require.NoError(t, takeDeliveries(t, ch, consumer.QueueName(tid), "rejecting", 1, 10*time.Second)[0].Reject(false))

	cfg.ReconcileOrphanGrace = 0 // reconciliation deletes orphan queues at once, and must not take the shared one
	cfg.ReconcileInterval = 200 * time.Millisecond
	b := testenv.Start(t, cfg)
	testenv.Eventually(t, 10*time.Second, func() bool {
		return len(listDeadLetters(t, b, tenant, "").Data) == 1
	}, "the rejected message is not in the table")
	dl := listDeadLetters(t, b, tenant, "").Data[0]
	require.Equal(t, id, dl.ID)
	require.Equal(t, "rejected", dl.Reason)
	require.Contains(t, dl.LastError, "RabbitMQ")
	require.Equal(t, map[string]any{"rejected": true}, dl.Payload)
	testenv.Eventually(t, 5*time.Second, func() bool {
		_, n, _ := testenv.QueueState(t, cfg.AMQPURL, consumer.DeadQueueName(cfg.AMQPExchange))
		return n == 0
	}, "the shared dead-letter queue is not emptied")
	time.Sleep(time.Second) // several reconciliations
	ok, _, consumers := testenv.QueueState(t, cfg.AMQPURL, consumer.DeadQueueName(cfg.AMQPExchange))
	require.True(t, ok, "reconciliation deleted the shared dead-letter queue")
	require.Equal(t, 1, consumers)
}

// TestDeadLetterKeptWhileDatabaseRefuses: while the dead_letters table cannot be written, a poison message
// stays unacknowledged (retried with backoff); a stop gives it back to the queue; the next start stores it.
func TestDeadLetterKeptWhileDatabaseRefuses(t *testing.T) {
	s := testenv.Get(t)
	cfg := s.Config(t)
	cfg.StoreRetryInitial = 20 * time.Millisecond
	a := testenv.Start(t, cfg)
	db := a.DB()
	tenant := a.CreateTenant("dbdown", 1)
	tid := uuid.MustParse(tenant)

	_, err := db.Exec(context.Background(), "ALTER TABLE dead_letters RENAME TO dead_letters_away")
	require.NoError(t, err)
	poison := uuid.NewString()
	publishDirect(t, cfg.AMQPURL, cfg.AMQPExchange, tenant, poison, []byte(`{broken`), nil)
	testenv.Eventually(t, 10*time.Second, func() bool {
		return a.Logs.FilterMessage("could not store dead letters; retrying with backoff").Len() > 0
	}, "the consumer does not retry the dead letter")
	time.Sleep(300 * time.Millisecond)
	_, ready, _ := testenv.QueueState(t, cfg.AMQPURL, consumer.QueueName(tid))
	require.Zero(t, ready, "the delivery is held by the consumer")
	require.NoError(t, a.Stop())
	testenv.Eventually(t, 5*time.Second, func() bool {
		_, ready, _ = testenv.QueueState(t, cfg.AMQPURL, consumer.QueueName(tid))
		return ready == 1
	}, "the stop did not give the delivery back")

	_, err = db.Exec(context.Background(), "ALTER TABLE dead_letters_away RENAME TO dead_letters")
	require.NoError(t, err)
	b := testenv.Start(t, cfg)
	testenv.Eventually(t, 10*time.Second, func() bool {
		p := listDeadLetters(t, b, tenant, "")
		return len(p.Data) == 1 && p.Data[0].ID == poison && p.Data[0].Reason == consumer.ReasonUndecodable
	}, "the dead letter is stored after the database came back")
}

// TestOldDeadLetterQueueMovesIntoTable: a per-tenant dead-letter queue left by an older version is emptied
// into the table and deleted at start-up.
func TestOldDeadLetterQueueMovesIntoTable(t *testing.T) {
	s := testenv.Get(t)
	cfg := s.Config(t)
	a := testenv.Start(t, cfg)
	tenant := a.CreateTenant("legacy", 1)
	tid := uuid.MustParse(tenant)
	require.NoError(t, a.Stop())

	ch := testenv.AMQP(t, cfg.AMQPURL)
	_, err := ch.QueueDeclare(consumer.DeadLetterQueueName(tid), true, false, false, false, amqp.Table{"x-queue-type": "quorum"})
	require.NoError(t, err)
	require.NoError(t, ch.Confirm(false))
	id := uuid.NewString()
	dc, err := ch.PublishWithDeferredConfirm("", consumer.DeadLetterQueueName(tid), true, false, amqp.Publishing{
		DeliveryMode: amqp.Persistent, MessageId: id, Body: []byte(`{"old":1}`),
		Headers: amqp.Table{"x-dead-letter-reason": "undecodable", "x-last-error": "old error"}})
	require.NoError(t, err)
	require.True(t, dc.Wait())

	b := testenv.Start(t, cfg)
	testenv.Eventually(t, 10*time.Second, func() bool {
		ok, _, _ := testenv.QueueState(t, cfg.AMQPURL, consumer.DeadLetterQueueName(tid))
		return !ok
	}, "the old dead-letter queue is not deleted")
	p := listDeadLetters(t, b, tenant, "")
	require.Len(t, p.Data, 1)
	require.Equal(t, id, p.Data[0].ID)
	require.Equal(t, "undecodable", p.Data[0].Reason)
	require.Equal(t, "old error", p.Data[0].LastError)
}

// TestReplayFailureKeepsDeadLetters: a replay that cannot publish (the tenant's queue is missing) answers 503
// and keeps every row; once reconciliation declared the queue again, the replay moves them.
func TestReplayFailureKeepsDeadLetters(t *testing.T) {
	s := testenv.Get(t)
	cfg := s.Config(t)
	var rt *consumer.Runtime
	a := testenv.Start(t, cfg, fx.Populate(&rt))
	db := a.DB()
	tenant := a.CreateTenant("replayfail", 1)
	tid := uuid.MustParse(tenant)
	for range 3 {
		publishDirect(t, cfg.AMQPURL, cfg.AMQPExchange, tenant, uuid.NewString(), []byte(`not json`), nil)
	}
	testenv.Eventually(t, 10*time.Second, func() bool {
		return testenv.Count(t, db, "SELECT count(*) FROM dead_letters WHERE tenant_id = $1", tid) == 3
	}, "three dead letters")

	// Its consumer stops first: the broker would cancel it with the queue's deletion, and a cancelled consumer
	// asks for a reconciliation pass at once, which declares the queue again before the replay below.
	rt.Stop(context.Background(), tid, "test: its queue goes")
	ch := testenv.AMQP(t, cfg.AMQPURL)
	_, err := ch.QueueDelete(consumer.QueueName(tid), false, false, false)
	require.NoError(t, err)
	r := a.Do(http.MethodPost, "/api/v1/tenants/"+tenant+"/dead-letters/replay", nil)
	require.Equal(t, http.StatusServiceUnavailable, r.Status, string(r.Body))
	require.Equal(t, 3, testenv.Count(t, db, "SELECT count(*) FROM dead_letters WHERE tenant_id = $1", tid))

	awaitConsumed(t, cfg.AMQPURL, tid, 10*time.Second, "reconciliation declares the queue again")
	r = a.Do(http.MethodPost, "/api/v1/tenants/"+tenant+"/dead-letters/replay", nil)
	require.Equal(t, http.StatusOK, r.Status, string(r.Body))
	require.EqualValues(t, 3, r.Map(t)["replayed"])
	// Undecodable again: back in the table, once each.
	testenv.Eventually(t, 10*time.Second, func() bool {
		return testenv.Count(t, db, "SELECT count(*) FROM dead_letters WHERE tenant_id = $1 AND dead_lettered_at > now() - interval '5 seconds'", tid) == 3
	}, "the replayed messages are dead-lettered again")
}
