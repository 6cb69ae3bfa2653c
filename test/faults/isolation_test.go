package faults

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"

	"github.com/acme/msgsvc/modules/consumer"
	"github.com/acme/msgsvc/modules/messaging"
	"github.com/acme/msgsvc/test/testenv"
)

// stamps learns when each message of one tenant is stored from PostgreSQL itself: a trigger on the tenant's
// partition notifies each stored id, and notifications are delivered when the inserting transaction commits.
type stamps struct {
	mu      sync.Mutex
	stored  map[string]time.Time
	waiters map[string]chan struct{}
}

// listenStored installs the trigger on tenant's partition and records the commit of each of its messages
// until t ends.
func listenStored(t *testing.T, dbURL, tenant string) *stamps {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	conn := testenv.Connect(t, dbURL)
	partition := pgx.Identifier{messaging.PartitionName(uuid.MustParse(tenant))}.Sanitize()
	for _, sql := range []string{
		`CREATE OR REPLACE FUNCTION test_notify_stored() RETURNS trigger LANGUAGE plpgsql AS
			$$ BEGIN PERFORM pg_notify('stored', NEW.id::text); RETURN NULL; END $$`,
		`CREATE TRIGGER test_notify_stored AFTER INSERT ON ` + partition + ` FOR EACH ROW EXECUTE FUNCTION test_notify_stored()`,
		`LISTEN stored`,
	} {
		_, err := conn.Exec(ctx, sql)
		require.NoError(t, err, sql)
	}
	s := &stamps{stored: map[string]time.Time{}, waiters: map[string]chan struct{}{}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			n, err := conn.WaitForNotification(ctx)
			if err != nil {
				return
			}
			now := time.Now()
			s.mu.Lock()
			s.stored[n.Payload] = now
			if ch, ok := s.waiters[n.Payload]; ok {
				close(ch)
				delete(s.waiters, n.Payload)
			}
			s.mu.Unlock()
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return s
}

// storedAt waits until message id is stored and returns when it was.
func (s *stamps) storedAt(t *testing.T, id string) time.Time {
	t.Helper()
	s.mu.Lock()
	at, ok := s.stored[id]
	if ok {
		s.mu.Unlock()
		return at
	}
	ch := make(chan struct{})
	s.waiters[id] = ch
	s.mu.Unlock()
	select {
	case <-ch:
	case <-time.After(30 * time.Second):
		t.Fatalf("message %s not stored within 30s", id)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stored[id]
}

// latencies publishes n messages to tenant at a steady pace (one every 10 ms, whatever the answers take, so
// that the measurement lasts as long in every phase) and returns each one's publish-to-stored time, and how
// long of it the publish took (until the 202).
func latencies(t *testing.T, baseURL string, st *stamps, tenant string, n int) (total, publish []time.Duration) {
	t.Helper()
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
	defer client.CloseIdleConnections()
	type result struct {
		start  time.Time
		took   time.Duration
		status int
		body   []byte
		err    error
	}
	results := make([]result, n)
	var wg sync.WaitGroup
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for i := range n {
		<-tick.C
		wg.Add(1)
		go func() {
			defer wg.Done()
			body := fmt.Appendf(nil, `{"tenant_id":%q,"payload":{"i":%d}}`, tenant, i)
			r := result{start: time.Now()}
			r.status, r.body, r.err = call(client, http.MethodPost, baseURL+"/api/v1/messages", body)
			r.took = time.Since(r.start)
			results[i] = r
		}()
	}
	wg.Wait()
	for _, r := range results {
		require.NoError(t, r.err)
		require.Equal(t, http.StatusAccepted, r.status, string(r.body))
		var acc struct {
			ID string `json:"id"`
		}
		require.NoError(t, json.Unmarshal(r.body, &acc))
		publish = append(publish, r.took)
		total = append(total, st.storedAt(t, acc.ID).Sub(r.start))
	}
	return total, publish
}

// quantile returns the q-quantile (0..1) of ds.
func quantile(ds []time.Duration, q float64) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[int(q*float64(len(s)-1))]
}

// backlog publishes n messages straight to RabbitMQ for tenant the documented way (persistent, with a UUID
// message_id, confirmed), one AMQP message each, with many confirms in flight at once, and returns their ids.
func backlog(t *testing.T, amqpURL, exchange, tenant string, n int) []string {
	t.Helper()
	ch := testenv.AMQP(t, amqpURL)
	require.NoError(t, ch.Confirm(false))
	const window = 2000
	pending := make([]*amqp.DeferredConfirmation, 0, window)
	body := []byte(`{"event":"backlog","pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}`)
	ids := make([]string, n)
	for i := range n {
		ids[i] = uuid.Must(uuid.NewV7()).String()
		dc, err := ch.PublishWithDeferredConfirm(exchange, tenant, true, false, amqp.Publishing{
			DeliveryMode: amqp.Persistent, ContentType: "application/json", MessageId: ids[i],
			Headers: amqp.Table{messaging.HeaderCreatedAt: time.Now().UnixMicro()}, Body: body})
		require.NoError(t, err, "publish %d", i)
		pending = append(pending, dc)
		if len(pending) == window || i == n-1 {
			for _, dc := range pending {
				require.True(t, dc.Wait(), "confirm")
			}
			pending = pending[:0]
		}
	}
	return ids
}

// TestBacklogDoesNotDelayOtherTenants gives tenant A a backlog of 120,000 messages and one worker, and checks
// that tenant B's publish-to-stored latency stays within twice what it is while B is alone (measured before A's
// backlog, and again after A is deleted, so that a change in the machine's background load is not blamed on
// A: the larger of the two medians is the baseline). The service runs
// as its own process, built without the race detector, so that its CPU use is what it is in production; the
// store time comes from PostgreSQL (a trigger on B's partition notifies each commit).
func TestBacklogDoesNotDelayOtherTenants(t *testing.T) {
	s := testenv.Get(t)
	cfg := s.Config(t)
	p := startProc(t, "isolation", cfg)
	tenantA := createTenant(t, p.URL, "isolation-a", 1)
	tenantB := createTenant(t, p.URL, "isolation-b", 3)
	st := listenStored(t, cfg.DatabaseURL, tenantB)
	queueA := consumer.QueueName(uuid.MustParse(tenantA))
	db := testenv.Connect(t, cfg.DatabaseURL)
	storedA := func() int {
		return testenv.Count(t, db, "SELECT count(*) FROM messages WHERE tenant_id = $1", uuid.MustParse(tenantA))
	}

	const n = 200
	latencies(t, p.URL, st, tenantB, 20) // warm up connections and caches
	alone, alonePub := latencies(t, p.URL, st, tenantB, n)

	const backlogSize = 120_000 // A stores up to ~19,000/s on a quiet machine: it must last through B's measurement
	start := time.Now()
	backlog(t, cfg.AMQPURL, cfg.AMQPExchange, tenantA, backlogSize)
	published := time.Since(start)
	_, readyBefore, _ := testenv.QueueState(t, cfg.AMQPURL, queueA)
	storedBefore := storedA()
	measureStart := time.Now()
	busy, busyPub := latencies(t, p.URL, st, tenantB, n)
	measured := time.Since(measureStart)
	_, readyAfter, _ := testenv.QueueState(t, cfg.AMQPURL, queueA)
	storedAfter := storedA()

	// B alone once more, A deleted: the background load of this shared machine may have changed meanwhile, and
	// what B sees alone then is not A's doing.
	status, raw, err := call(http.DefaultClient, http.MethodDelete, p.URL+"/api/v1/tenants/"+tenantA, nil)
	require.NoError(t, err)
	require.Equal(t, http.StatusNoContent, status, string(raw))
	after, _ := latencies(t, p.URL, st, tenantB, n)

	mAlone, mBusy, mAfter := quantile(alone, 0.5), quantile(busy, 0.5), quantile(after, 0.5)
	baseline := max(mAlone, mAfter)
	t.Logf("tenant B publish-to-stored over %d messages: alone median %s p90 %s; with A's backlog median %s p90 %s; alone again (A deleted) median %s p90 %s; ratio %.2f",
		n, mAlone, quantile(alone, 0.9), mBusy, quantile(busy, 0.9), mAfter, quantile(after, 0.9), float64(mBusy)/float64(baseline))
	t.Logf("of which the publish (until 202): alone median %s, with A's backlog median %s",
		quantile(alonePub, 0.5), quantile(busyPub, 0.5))
	t.Logf("tenant A: %d messages published straight to RabbitMQ in %s; during B's measurement (%s) A's queue held %d → %d ready and A stored %d (%.0f/s)",
		backlogSize, published.Round(time.Millisecond), measured.Round(time.Millisecond), readyBefore, readyAfter,
		storedAfter-storedBefore, float64(storedAfter-storedBefore)/measured.Seconds())
	require.Positive(t, readyAfter, "A's backlog must last through B's measurement for the comparison to mean anything")
	require.LessOrEqual(t, mBusy, 2*baseline, "tenant B's median latency with A's backlog exceeds twice its latency alone")
}
