package e2e

import (
	"context"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"
	"go.uber.org/fx"

	"github.com/acme/msgsvc/modules/consumer"
	"github.com/acme/msgsvc/modules/messaging"
	"github.com/acme/msgsvc/test/testenv"
)

// gateHandler holds every store while closed is set, so that messages wait in the queue.
type gateHandler struct {
	inner  consumer.Handler
	closed atomic.Bool
}

func (h *gateHandler) Handle(ctx context.Context, tenant uuid.UUID, ds []amqp.Delivery) []error {
	for h.closed.Load() {
		time.Sleep(10 * time.Millisecond)
	}
	return h.inner.Handle(ctx, tenant, ds)
}

func createTenantWithKey(t *testing.T, a *testenv.App, name string) (id, key string) {
	t.Helper()
	r := a.Do(http.MethodPost, "/api/v1/tenants", map[string]any{"name": name, "concurrency_config": 1})
	require.Equal(t, http.StatusCreated, r.Status, string(r.Body))
	m := r.Map(t)
	return m["id"].(string), m["api_key"].(string)
}

// TestGetMessageByID: a message is found by the id its 202 gave (with a tenant key, or an admin key and
// tenant_id) once stored; before that 404 "not stored (yet)"; dead-lettered ones answer their state and
// reason; a malformed id is 400 and another tenant's message 404.
func TestGetMessageByID(t *testing.T) {
	s := testenv.Get(t)
	cfg := s.Config(t)
	gate := &gateHandler{}
	a := testenv.Start(t, cfg, fx.Decorate(func(h consumer.Handler) consumer.Handler { gate.inner = h; return gate }))
	db := a.DB()
	tenant, key := createTenantWithKey(t, a, "lookup")
	other, otherKey := createTenantWithKey(t, a, "other")
	auth := func(k string) []string { return []string{"Authorization", "Bearer " + k} }

	// Not stored yet: the store is held.
	gate.closed.Store(true)
	id := a.Publish(tenant, map[string]any{"order": 42}, auth(key)...)
	r := a.Do(http.MethodGet, "/api/v1/messages/"+id, nil, auth(key)...)
	require.Equal(t, http.StatusNotFound, r.Status, string(r.Body))
	require.Equal(t, "application/problem+json", r.Header.Get("Content-Type"))
	require.Contains(t, string(r.Body), "not stored (yet)")
	gate.closed.Store(false)

	var m struct {
		ID        string         `json:"id"`
		TenantID  string         `json:"tenant_id"`
		State     string         `json:"state"`
		Payload   map[string]any `json:"payload"`
		CreatedAt time.Time      `json:"created_at"`
		StoredAt  time.Time      `json:"stored_at"`
		Reason    string         `json:"reason"`
		LastError string         `json:"last_error"`
	}
	testenv.Eventually(t, 10*time.Second, func() bool {
		return a.Do(http.MethodGet, "/api/v1/messages/"+id, nil, auth(key)...).Status == http.StatusOK
	}, "the message is not found once stored")
	r = a.Do(http.MethodGet, "/api/v1/messages/"+id, nil, auth(key)...)
	r.JSON(t, &m)
	require.Equal(t, id, m.ID)
	require.Equal(t, tenant, m.TenantID)
	require.Equal(t, messaging.StateStored, m.State)
	require.Equal(t, map[string]any{"order": float64(42)}, m.Payload)
	require.False(t, m.StoredAt.Before(m.CreatedAt))
	// The same with an admin key naming the tenant.
	r = a.Do(http.MethodGet, "/api/v1/messages/"+id+"?tenant_id="+tenant, nil)
	require.Equal(t, http.StatusOK, r.Status, string(r.Body))
	require.Equal(t, id, r.Map(t)["id"])
	require.Equal(t, http.StatusBadRequest, a.Do(http.MethodGet, "/api/v1/messages/"+id, nil).Status, "admin without tenant_id")

	// Malformed ids.
	require.Equal(t, http.StatusBadRequest, a.Do(http.MethodGet, "/api/v1/messages/not-a-uuid", nil, auth(key)...).Status)
	require.Equal(t, http.StatusBadRequest, a.Do(http.MethodGet, "/api/v1/messages/"+id+"?tenant_id=nope", nil).Status)
	// Another tenant's message, with that tenant's key or naming it.
	require.Equal(t, http.StatusNotFound, a.Do(http.MethodGet, "/api/v1/messages/"+id, nil, auth(otherKey)...).Status)
	require.Equal(t, http.StatusNotFound, a.Do(http.MethodGet, "/api/v1/messages/"+id+"?tenant_id="+tenant, nil, auth(otherKey)...).Status)
	require.Equal(t, http.StatusNotFound, a.Do(http.MethodGet, "/api/v1/messages/"+id+"?tenant_id="+other, nil).Status)
	require.Equal(t, http.StatusNotFound, a.Do(http.MethodGet, "/api/v1/messages/"+id+"?tenant_id="+uuid.NewString(), nil).Status)

	// Dead-lettered.
	poison := uuid.NewString()
	publishDirect(t, cfg.AMQPURL, cfg.AMQPExchange, tenant, poison, []byte(`not json`), nil)
	testenv.Eventually(t, 10*time.Second, func() bool {
		return testenv.Count(t, db, "SELECT count(*) FROM dead_letters WHERE id = $1", uuid.MustParse(poison)) == 1
	}, "the poison message is not dead-lettered")
	r = a.Do(http.MethodGet, "/api/v1/messages/"+poison, nil, auth(key)...)
	require.Equal(t, http.StatusOK, r.Status, string(r.Body))
	r.JSON(t, &m)
	require.Equal(t, messaging.StateDeadLettered, m.State)
	require.Equal(t, consumer.ReasonUndecodable, m.Reason)
	require.Contains(t, m.LastError, "payload must be")
}

type tenantStats struct {
	StoredMessages          int64      `json:"stored_messages"`
	StoredMessagesEstimated bool       `json:"stored_messages_estimated"`
	NewestMessageAt         *time.Time `json:"newest_message_at"`
	StoredLastMinute        int64      `json:"stored_last_minute"`
	StoredLastMinuteEst     bool       `json:"stored_last_minute_estimated"`
	PublishRatePerSecond    float64    `json:"publish_rate_per_second"`
	QueueMessages           int        `json:"queue_messages"`
	QueueConsumers          int        `json:"queue_consumers"`
	DeadLetters             int64      `json:"dead_letters"`
	Workers                 int        `json:"workers"`
	RateLimit               float64    `json:"rate_limit"`
	RateLimitDefault        bool       `json:"rate_limit_default"`
	At                      time.Time  `json:"at"`
}

func getStats(t *testing.T, a *testenv.App, tenant string, headers ...string) tenantStats {
	t.Helper()
	r := a.Do(http.MethodGet, "/api/v1/tenants/"+tenant+"/stats", nil, headers...)
	require.Equal(t, http.StatusOK, r.Status, string(r.Body))
	var st tenantStats
	r.JSON(t, &st)
	return st
}

// TestTenantStatsMoveAsMessagesFlow: the stats of a tenant follow its messages: waiting in the queue,
// stored, published in the last minute, dead-lettered; and its configuration.
func TestTenantStatsMoveAsMessagesFlow(t *testing.T) {
	s := testenv.Get(t)
	cfg := s.Config(t)
	cfg.RateLimitDefault = 500
	gate := &gateHandler{}
	a := testenv.Start(t, cfg, fx.Decorate(func(h consumer.Handler) consumer.Handler { gate.inner = h; return gate }))
	tenant, key := createTenantWithKey(t, a, "stats")

	st := getStats(t, a, tenant)
	require.Zero(t, st.StoredMessages)
	require.False(t, st.StoredMessagesEstimated)
	require.Nil(t, st.NewestMessageAt)
	require.Equal(t, 1, st.Workers)
	require.Equal(t, 500.0, st.RateLimit)
	require.True(t, st.RateLimitDefault)
	testenv.Eventually(t, 5*time.Second, func() bool { return getStats(t, a, tenant).QueueConsumers == 1 }, "one consumer")

	// Held: the messages wait in the queue (beyond the consumer's prefetch).
	gate.closed.Store(true)
	const n = 100
	for i := range n {
		a.Publish(tenant, map[string]int{"i": i}, "Authorization", "Bearer "+key)
	}
	testenv.Eventually(t, 5*time.Second, func() bool {
		st := getStats(t, a, tenant)
		return st.QueueMessages == n-cfg.PrefetchPerWorker && st.StoredMessages == 0
	}, "messages wait in the queue")
	gate.closed.Store(false)
	testenv.Eventually(t, 10*time.Second, func() bool {
		st = getStats(t, a, tenant, "Authorization", "Bearer "+key) // the tenant's own key may look too
		return st.StoredMessages == n && st.QueueMessages == 0
	}, "stored messages counted")
	// All n were published in the last minute unless the machine is very slow: count those that were, as of the
	// stats' own time.
	recent := testenv.Count(t, a.DB(), "SELECT count(*) FROM messages WHERE tenant_id = $1 AND created_at >= $2",
		uuid.MustParse(tenant), st.At.Add(-time.Minute))
	require.Greater(t, recent, 0)
	require.EqualValues(t, recent, st.StoredLastMinute)
	require.InDelta(t, float64(recent)/60, st.PublishRatePerSecond, 0.001)
	require.NotNil(t, st.NewestMessageAt)
	require.WithinDuration(t, time.Now(), *st.NewestMessageAt, time.Minute)

	publishDirect(t, cfg.AMQPURL, cfg.AMQPExchange, tenant, uuid.NewString(), []byte(`nope`), nil)
	testenv.Eventually(t, 10*time.Second, func() bool { return getStats(t, a, tenant).DeadLetters == 1 }, "dead letter counted")

	r := a.Do(http.MethodPut, "/api/v1/tenants/"+tenant+"/config/concurrency", map[string]any{"workers": 4})
	require.Equal(t, http.StatusOK, r.Status, string(r.Body))
	r = a.Do(http.MethodPut, "/api/v1/tenants/"+tenant+"/config/rate-limit", map[string]any{"messages_per_second": 50})
	require.Equal(t, http.StatusOK, r.Status, string(r.Body))
	st = getStats(t, a, tenant)
	require.Equal(t, 4, st.Workers)
	require.Equal(t, 50.0, st.RateLimit)
	require.False(t, st.RateLimitDefault)

	// A large, busy tenant: 20,000 messages, 7,000 of them from the last 56 seconds (125 per second). The
	// stored count comes from PostgreSQL's statistics and the last minute from the time the newest 5,000 span
	// until now (125 per second right after the insert, less as time passes); both say so.
	big := a.CreateTenant("big", 1)
	db := a.DB()
	inserted := time.Now()
	_, err := db.Exec(context.Background(), `INSERT INTO messages (id, tenant_id, payload, created_at)
SELECT gen_random_uuid(), $1, '{"i":1}', CASE WHEN i <= 7000 THEN now() - i * interval '8 milliseconds'
  ELSE now() - interval '2 minutes' - i * interval '1 millisecond' END
FROM generate_series(1, 20000) AS i`, big)
	require.NoError(t, err)
	_, err = db.Exec(context.Background(), "SELECT pg_stat_force_next_flush()") // report the insert to the statistics now
	require.NoError(t, err)
	testenv.Eventually(t, 20*time.Second, func() bool { return getStats(t, a, big).StoredMessagesEstimated }, "stored count estimated")
	st = getStats(t, a, big)
	require.InDelta(t, 20000, st.StoredMessages, 2000)
	require.True(t, st.StoredLastMinuteEst)
	rate := 5000 / (40 + time.Since(inserted).Seconds()) // the newest 5,000 span 40 s before the insert
	require.InEpsilon(t, rate, st.PublishRatePerSecond, 0.15)
	require.InEpsilon(t, rate*60, float64(st.StoredLastMinute), 0.15)

	require.Equal(t, http.StatusNotFound, a.Do(http.MethodGet, "/api/v1/tenants/"+uuid.NewString()+"/stats", nil).Status)
	require.Equal(t, http.StatusBadRequest, a.Do(http.MethodGet, "/api/v1/tenants/nope/stats", nil).Status)
	other, _ := createTenantWithKey(t, a, "other")
	require.Equal(t, http.StatusNotFound, a.Do(http.MethodGet, "/api/v1/tenants/"+other+"/stats", nil, "Authorization", "Bearer "+key).Status)
}

// TestMessageLookupIsOnePartitionIndexScan: the lookup's plan reads one partition through its primary key,
// never the other partitions.
func TestMessageLookupIsOnePartitionIndexScan(t *testing.T) {
	s := testenv.Get(t)
	a := testenv.Start(t, s.Config(t))
	tenant := a.CreateTenant("plan", 1)
	for i := range 5 {
		a.CreateTenant(fmt.Sprintf("filler-%d", i), 1)
	}
	db := a.DB()
	rows, err := db.Query(context.Background(), "EXPLAIN "+strings.ReplaceAll(strings.ReplaceAll(
		`SELECT payload, created_at, stored_at FROM messages WHERE tenant_id = $1 AND id = $2`, "$1", "'"+tenant+"'"), "$2", "'"+uuid.NewString()+"'"))
	require.NoError(t, err)
	var plan []string
	for rows.Next() {
		var line string
		require.NoError(t, rows.Scan(&line))
		plan = append(plan, line)
	}
	text := strings.Join(plan, "\n")
	require.Contains(t, text, "Index Scan using messages_tenant_"+strings.ReplaceAll(tenant, "-", "")+"_pkey", text)
	parts := map[string]bool{}
	for _, p := range regexp.MustCompile(`messages_tenant_[0-9a-f]{32}`).FindAllString(text, -1) {
		parts[p] = true
	}
	require.Len(t, parts, 1, "more than one partition in the plan:\n%s", text)
}
