package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"
	"go.uber.org/fx"

	"github.com/acme/msgsvc/modules/consumer"
	"github.com/acme/msgsvc/modules/messaging"
	"github.com/acme/msgsvc/platform/config"
	"github.com/acme/msgsvc/test/testenv"
)

// publishDirect publishes body straight to RabbitMQ the documented way: the service's exchange, the tenant id
// as routing key, persistent, with message_id and optional headers.
func publishDirect(t *testing.T, amqpURL, exchange, tenant, messageID string, body []byte, headers amqp.Table) {
	t.Helper()
	ch := testenv.AMQP(t, amqpURL)
	require.NoError(t, ch.Confirm(false))
	dc, err := ch.PublishWithDeferredConfirm(exchange, tenant, true, false, amqp.Publishing{
		DeliveryMode: amqp.Persistent, ContentType: "application/json", MessageId: messageID, Body: body, Headers: headers,
	})
	require.NoError(t, err)
	require.True(t, dc.Wait())
}

func TestPublishAndRead(t *testing.T) {
	s := testenv.Get(t)
	a := testenv.Start(t, s.Config(t))
	db := a.DB()
	tenant := a.CreateTenant("reader", 3)

	r := a.Do(http.MethodPost, "/api/v1/messages", map[string]any{"tenant_id": tenant, "payload": map[string]any{"event": "signup", "user": 42}})
	require.Equal(t, http.StatusAccepted, r.Status, string(r.Body))
	acc := r.Map(t)
	require.Equal(t, "accepted", acc["status"])
	require.Equal(t, tenant, acc["tenant_id"])
	id := uuid.MustParse(acc["id"].(string))
	require.Equal(t, uuid.Version(7), id.Version())

	testenv.Eventually(t, 5*time.Second, func() bool {
		return testenv.Count(t, db, "SELECT count(*) FROM messages WHERE id = $1", id) == 1
	}, "message stored")
	r = a.Do(http.MethodGet, "/api/v1/messages?tenant_id="+tenant, nil)
	require.Equal(t, http.StatusOK, r.Status)
	var page struct {
		Data []struct {
			ID        string          `json:"id"`
			TenantID  string          `json:"tenant_id"`
			Payload   json.RawMessage `json:"payload"`
			CreatedAt string          `json:"created_at"`
		} `json:"data"`
		NextCursor *string `json:"next_cursor"`
		HasMore    bool    `json:"has_more"`
	}
	r.JSON(t, &page)
	require.Len(t, page.Data, 1)
	require.Equal(t, acc["id"], page.Data[0].ID)
	require.JSONEq(t, `{"event":"signup","user":42}`, string(page.Data[0].Payload))
	require.Equal(t, acc["created_at"], page.Data[0].CreatedAt)
	require.False(t, page.HasMore)
	require.Nil(t, page.NextCursor)

	// Arrays are payloads too.
	arr := a.Publish(tenant, []any{1, 2, 3})
	testenv.Eventually(t, 5*time.Second, func() bool {
		return testenv.Count(t, db, "SELECT count(*) FROM messages WHERE id = $1", uuid.MustParse(arr)) == 1
	}, "array stored")

	stored := testenv.Count(t, db, "SELECT count(*) FROM messages")
	bad := []struct {
		body   string
		status int
		field  string
	}{
		{`{"tenant_id":"` + tenant + `","payload":"text"}`, 400, "payload"},
		{`{"tenant_id":"` + tenant + `","payload":42}`, 400, "payload"},
		{`{"tenant_id":"` + tenant + `","payload":null}`, 400, "payload"},
		{`{"tenant_id":"` + tenant + `"}`, 400, "payload"},
		{`{"tenant_id":"` + tenant + `","payload":{"a":"\u0000"}}`, 400, "payload"},
		{`{"payload":{}}`, 400, "tenant_id"},
		{`{"tenant_id":"nope","payload":{}}`, 400, "tenant_id"},
		{`{"tenant_id":7,"payload":{}}`, 400, "tenant_id"},
		{`{"tenant_id":"` + tenant + `","payload":{},"x":1}`, 400, "x"},
		{`{"tenant_id":"` + tenant + `","payload":{`, 400, ""},
		{`{"tenant_id":"` + uuid.NewString() + `","payload":{}}`, 404, ""},
	}
	for _, b := range bad {
		r := a.Do(http.MethodPost, "/api/v1/messages", b.body)
		require.Equal(t, b.status, r.Status, b.body)
		require.Equal(t, b.field, problemField(t, r), b.body)
	}
	require.Equal(t, http.StatusUnsupportedMediaType, a.Do(http.MethodPost, "/api/v1/messages",
		`{"tenant_id":"`+tenant+`","payload":{}}`, "Content-Type", "application/x-www-form-urlencoded").Status)
	big := `{"tenant_id":"` + tenant + `","payload":{"x":"` + strings.Repeat("a", 256<<10) + `"}}`
	require.Equal(t, http.StatusRequestEntityTooLarge, a.Do(http.MethodPost, "/api/v1/messages", big).Status)
	time.Sleep(300 * time.Millisecond)
	require.Equal(t, stored, testenv.Count(t, db, "SELECT count(*) FROM messages"), "bad input stored nothing")

	for _, q := range []string{"", "?tenant_id=bad", "?tenant_id=" + tenant + "&limit=0", "?tenant_id=" + tenant + "&limit=101",
		"?tenant_id=" + tenant + "&cursor=bogus"} {
		require.Equal(t, http.StatusBadRequest, a.Do(http.MethodGet, "/api/v1/messages"+q, nil).Status, q)
	}
	require.Equal(t, http.StatusNotFound, a.Do(http.MethodGet, "/api/v1/messages?tenant_id="+uuid.NewString(), nil).Status)
}

func TestPaginationWalksEveryMessageOnceInOrder(t *testing.T) {
	s := testenv.Get(t)
	a := testenv.Start(t, s.Config(t))
	db := a.DB()
	tenant := a.CreateTenant("pages", 8)
	// 1,000 messages published straight to RabbitMQ; 400 of them share one created_at.
	same := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	ch := testenv.AMQP(t, a.Config.AMQPURL)
	require.NoError(t, ch.Confirm(false))
	want := map[string]time.Time{}
	for i := range 1000 {
		at := same
		if i%5 >= 2 {
			at = same.Add(time.Duration(i) * time.Millisecond)
		}
		id := uuid.Must(uuid.NewV7()).String()
		want[id] = at
		dc, err := ch.PublishWithDeferredConfirm(a.Config.AMQPExchange, tenant, true, false, amqp.Publishing{
			DeliveryMode: amqp.Persistent, MessageId: id, Body: []byte(fmt.Sprintf(`{"i":%d}`, i)),
			Headers: amqp.Table{messaging.HeaderCreatedAt: at.UnixMicro()}})
		require.NoError(t, err)
		require.True(t, dc.Wait())
	}
	testenv.Eventually(t, 30*time.Second, func() bool {
		return testenv.Count(t, db, "SELECT count(*) FROM messages WHERE tenant_id = $1", uuid.MustParse(tenant)) == 1000
	}, "1000 stored")

	var got []string
	var prev struct {
		at time.Time
		id string
	}
	cursor := ""
	for {
		path := "/api/v1/messages?limit=7&tenant_id=" + tenant
		if cursor != "" {
			path += "&cursor=" + url.QueryEscape(cursor)
		}
		r := a.Do(http.MethodGet, path, nil)
		require.Equal(t, http.StatusOK, r.Status, string(r.Body))
		var page struct {
			Data []struct {
				ID        string    `json:"id"`
				CreatedAt time.Time `json:"created_at"`
			} `json:"data"`
			NextCursor *string `json:"next_cursor"`
			HasMore    bool    `json:"has_more"`
		}
		r.JSON(t, &page)
		require.LessOrEqual(t, len(page.Data), 7)
		for _, m := range page.Data {
			if prev.id != "" {
				require.True(t, m.CreatedAt.Before(prev.at) || (m.CreatedAt.Equal(prev.at) && m.ID < prev.id), "order: %s %s after %s %s", m.CreatedAt, m.ID, prev.at, prev.id)
			}
			require.True(t, want[m.ID].Equal(m.CreatedAt))
			prev.at, prev.id = m.CreatedAt, m.ID
			got = append(got, m.ID)
		}
		if !page.HasMore {
			break
		}
		cursor = *page.NextCursor
	}
	require.Len(t, got, 1000)
	uniq := map[string]bool{}
	for _, id := range got {
		uniq[id] = true
	}
	require.Len(t, uniq, 1000, "each exactly once")

	// An RFC 3339 cursor returns messages older than that instant.
	r := a.Do(http.MethodGet, "/api/v1/messages?limit=100&tenant_id="+tenant+"&cursor="+url.QueryEscape(same.Add(time.Millisecond).Format(time.RFC3339Nano)), nil)
	require.Equal(t, http.StatusOK, r.Status)
	var page struct {
		Data []struct {
			CreatedAt time.Time `json:"created_at"`
		} `json:"data"`
	}
	r.JSON(t, &page)
	require.Len(t, page.Data, 100)
	for _, m := range page.Data {
		require.True(t, m.CreatedAt.Equal(same))
	}
}

func TestIdempotency(t *testing.T) {
	s := testenv.Get(t)
	a := testenv.Start(t, s.Config(t))
	db := a.DB()
	tenant := a.CreateTenant("idem", 2)
	id1 := a.Publish(tenant, map[string]any{"try": 1}, "Idempotency-Key", "order-42")
	id2 := a.Publish(tenant, map[string]any{"try": 2}, "Idempotency-Key", "order-42")
	require.Equal(t, id1, id2)

	dup := uuid.Must(uuid.NewV7()).String()
	publishDirect(t, a.Config.AMQPURL, a.Config.AMQPExchange, tenant, dup, []byte(`{"copy":1}`), nil)
	publishDirect(t, a.Config.AMQPURL, a.Config.AMQPExchange, tenant, dup, []byte(`{"copy":2}`), nil)
	marker := a.Publish(tenant, map[string]any{"last": true})
	testenv.Eventually(t, 5*time.Second, func() bool {
		return testenv.Count(t, db, "SELECT count(*) FROM messages WHERE id = $1", uuid.MustParse(marker)) == 1
	}, "marker stored")
	time.Sleep(300 * time.Millisecond)
	require.Equal(t, 1, testenv.Count(t, db, "SELECT count(*) FROM messages WHERE id = $1", uuid.MustParse(id1)))
	require.Equal(t, 1, testenv.Count(t, db, "SELECT count(*) FROM messages WHERE id = $1", uuid.MustParse(dup)))
	require.Equal(t, 3, testenv.Count(t, db, "SELECT count(*) FROM messages WHERE tenant_id = $1", uuid.MustParse(tenant)))
}

func TestPoisonMessageIsDeadLettered(t *testing.T) {
	s := testenv.Get(t)
	a := testenv.Start(t, s.Config(t))
	db := a.DB()
	tenant := a.CreateTenant("poison", 2)
	tid := uuid.MustParse(tenant)
	publishDirect(t, a.Config.AMQPURL, a.Config.AMQPExchange, tenant, uuid.NewString(), []byte(`this is not json`), nil)
	publishDirect(t, a.Config.AMQPURL, a.Config.AMQPExchange, tenant, "not-a-uuid", []byte(`{}`), nil)
	good := a.Publish(tenant, map[string]any{"fine": true})
	testenv.Eventually(t, 10*time.Second, func() bool {
		return testenv.Count(t, db, "SELECT count(*) FROM dead_letters WHERE tenant_id = $1 AND reason = 'undecodable'", tid) == 2
	}, "two dead letters")
	testenv.Eventually(t, 5*time.Second, func() bool {
		return testenv.Count(t, db, "SELECT count(*) FROM messages WHERE id = $1", uuid.MustParse(good)) == 1
	}, "the good message is stored")
	time.Sleep(time.Second)
	_, ready, _ := testenv.QueueState(t, a.Config.AMQPURL, consumer.QueueName(tid))
	require.Equal(t, 0, ready, "poison is not redelivered")
	require.Equal(t, 2, testenv.Count(t, db, "SELECT count(*) FROM dead_letters WHERE tenant_id = $1", tid))
	// The message id that was not a UUID is kept; its row has an id made from it.
	require.Equal(t, 1, testenv.Count(t, db, "SELECT count(*) FROM dead_letters WHERE original_id = 'not-a-uuid'"))
}

func TestRestartDrainsBacklog(t *testing.T) {
	s := testenv.Get(t)
	cfg := s.Config(t)
	a := testenv.Start(t, cfg)
	tenant := a.CreateTenant("backlog", 3)
	require.NoError(t, a.Stop())

	// While the service is down, 200 messages wait in the tenant's queue.
	ch := testenv.AMQP(t, cfg.AMQPURL)
	require.NoError(t, ch.Confirm(false))
	for i := range 200 {
		dc, err := ch.PublishWithDeferredConfirm(cfg.AMQPExchange, tenant, true, false, amqp.Publishing{
			DeliveryMode: amqp.Persistent, MessageId: uuid.NewString(), Body: []byte(fmt.Sprintf(`{"i":%d}`, i))})
		require.NoError(t, err)
		require.True(t, dc.Wait())
	}
	_, ready, consumers := testenv.QueueState(t, cfg.AMQPURL, consumer.QueueName(uuid.MustParse(tenant)))
	require.Equal(t, 200, ready)
	require.Equal(t, 0, consumers)

	b := testenv.Start(t, cfg)
	db := b.DB()
	testenv.Eventually(t, 20*time.Second, func() bool {
		return testenv.Count(t, db, "SELECT count(*) FROM messages") == 200
	}, "backlog stored after restart")
}

// slowHandler stores like the real one after a delay and records how many store calls (workers) run at once.
type slowHandler struct {
	inner consumer.Handler
	delay time.Duration
	cur   atomic.Int64
	max   atomic.Int64
}

func (h *slowHandler) Handle(ctx context.Context, tenant uuid.UUID, ds []amqp.Delivery) []error {
	n := h.cur.Add(1)
	for {
		m := h.max.Load()
		if n <= m || h.max.CompareAndSwap(m, n) {
			break
		}
	}
	time.Sleep(h.delay)
	defer h.cur.Add(-1)
	return h.inner.Handle(ctx, tenant, ds)
}

func TestResizeLiveConsumer(t *testing.T) {
	s := testenv.Get(t)
	// Each store call takes 100 ms, so that the stream below (about a hundred messages a second, fewer on a loaded
	// machine) keeps 6 workers busy at once: with 50 ms, a loaded CI machine's stream once reached 5 of 6
	// (2026-12-07, RabbitMQ 4.0 in Docker).
	slow := &slowHandler{delay: 100 * time.Millisecond}
	var rt *consumer.Runtime
	a := testenv.Start(t, s.Config(t),
		fx.Decorate(func(h consumer.Handler) consumer.Handler { slow.inner = h; return slow }),
		fx.Populate(&rt))
	db := a.DB()
	tenant := a.CreateTenant("resize", 2)
	tid := uuid.MustParse(tenant)

	var (
		mu       sync.Mutex
		accepted []string
		stop     atomic.Bool
		wg       sync.WaitGroup
	)
	// A steady stream of publishes across both resizes, stopped before the service is (when the test fails too).
	t.Cleanup(func() { stop.Store(true); wg.Wait() })
	for w := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; !stop.Load(); i++ {
				r := a.Do(http.MethodPost, "/api/v1/messages", map[string]any{"tenant_id": tenant, "payload": map[string]any{"w": w, "i": i}})
				if r.Status == http.StatusAccepted {
					mu.Lock()
					accepted = append(accepted, r.Map(t)["id"].(string))
					mu.Unlock()
				}
				time.Sleep(10 * time.Millisecond)
			}
		}()
	}
	phase := func(workers int) {
		t.Helper()
		if workers != 2 {
			r := a.Do(http.MethodPut, "/api/v1/tenants/"+tenant+"/config/concurrency", map[string]int{"workers": workers})
			require.Equal(t, http.StatusOK, r.Status)
			// A resize starts a new consumer before the old one stops; on a loaded machine (both branches of the
			// suite at once, RabbitMQ 4.0 in Docker) that took more than a second once.
			testenv.Eventually(t, 10*time.Second, func() bool { return rt.Workers(tid) == workers }, "the resize took effect")
		}
		time.Sleep(200 * time.Millisecond) // let the previous generation's last deliveries finish
		slow.max.Store(0)
		time.Sleep(1500 * time.Millisecond)
		require.Equal(t, int64(workers), slow.max.Load(), "store calls at once with %d workers", workers)
	}
	phase(2)
	phase(6)
	phase(1)
	stop.Store(true)
	wg.Wait()
	// Drain the backlog with many workers (one more resize, under load).
	require.Equal(t, http.StatusOK, a.Do(http.MethodPut, "/api/v1/tenants/"+tenant+"/config/concurrency", map[string]int{"workers": 50}).Status)

	if !testenv.Wait(30*time.Second, func() bool {
		return testenv.Count(t, db, "SELECT count(*) FROM messages WHERE tenant_id = $1", tid) >= len(accepted)
	}) {
		q, err := s.Management(t).Queue(context.Background(), config.VHost(a.Config.AMQPURL), consumer.QueueName(tid))
		t.Fatalf("not every accepted message stored: %d accepted, %d stored, queue %+v (%v)", len(accepted),
			testenv.Count(t, db, "SELECT count(*) FROM messages WHERE tenant_id = $1", tid), q, err)
	}
	rows, err := db.Query(context.Background(), "SELECT id::text FROM messages WHERE tenant_id = $1", tid)
	require.NoError(t, err)
	stored := map[string]int{}
	for rows.Next() {
		var id string
		require.NoError(t, rows.Scan(&id))
		stored[id]++
	}
	require.Len(t, stored, len(accepted))
	for _, id := range accepted {
		require.Equal(t, 1, stored[id], id)
	}
	// The broker may not count the last resize's consumer yet when the backlog is already stored (seen once in CI,
	// 2026-12-07: 0 consumers 50 ms after that resize, the cause not found; a start can return before its consume
	// is confirmed, tenantConsumer.start). What is checked is that it comes to one, not two and not none.
	var (
		ok        bool
		consumers int
	)
	one := testenv.Wait(10*time.Second, func() bool {
		ok, _, consumers = testenv.QueueState(t, a.Config.AMQPURL, consumer.QueueName(tid))
		return ok && consumers == 1
	})
	require.True(t, ok, "the queue was kept")
	require.True(t, one, "one consumer after resizes, not %d", consumers)
	t.Logf("accepted and stored exactly once across resizes 2→6→1: %d messages", len(accepted))
}
