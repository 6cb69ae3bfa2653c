package faults

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"

	"github.com/acme/msgsvc/modules/consumer"
	"github.com/acme/msgsvc/test/testenv"
)

// answer is one publish request of a stream as the client saw it.
type answer struct {
	start    time.Time
	duration time.Duration
	status   int    // 0: no HTTP answer (connection refused or reset, client timeout)
	id       string // the accepted message's id, with status 202
	tenant   string
}

// stream publishes a steady flow of messages over HTTP into several tenants, from a few concurrent clients,
// until stopped, and records every answer. The service's URL may change while it runs (a restarted process).
type stream struct {
	tenants []string
	url     atomic.Pointer[string]
	client  *http.Client
	pause   time.Duration

	mu      sync.Mutex
	answers []answer

	stop chan struct{}
	wg   sync.WaitGroup
}

// startStream starts clients publishing into tenants at baseURL; each client pauses between requests.
func startStream(t *testing.T, baseURL string, tenants []string, clients int, pause time.Duration) *stream {
	t.Helper()
	s := &stream{tenants: tenants, pause: pause, stop: make(chan struct{}),
		// The timeout only stops a hung request from blocking the test; the fault tests assert much less.
		client: &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: clients}}}
	s.setURL(baseURL)
	for c := range clients {
		s.wg.Add(1)
		go s.run(c)
	}
	t.Cleanup(s.halt)
	return s
}

func (s *stream) setURL(u string) { s.url.Store(&u) }

func (s *stream) run(client int) {
	defer s.wg.Done()
	for i := 0; ; i++ {
		select {
		case <-s.stop:
			return
		default:
		}
		tenant := s.tenants[(client+i)%len(s.tenants)]
		body, _ := json.Marshal(map[string]any{"tenant_id": tenant,
			"payload": map[string]any{"client": client, "i": i, "note": "fault-injection stream"}})
		a := answer{start: time.Now(), tenant: tenant}
		status, raw, err := call(s.client, http.MethodPost, *s.url.Load()+"/api/v1/messages", body)
		if err == nil {
			a.status = status
			if a.status == http.StatusAccepted {
				var acc struct {
					ID string `json:"id"`
				}
				if json.Unmarshal(raw, &acc) == nil {
					a.id = acc.ID
				}
			}
		}
		a.duration = time.Since(a.start)
		s.mu.Lock()
		s.answers = append(s.answers, a)
		s.mu.Unlock()
		if a.status == 0 {
			// The service is not there (being restarted): do not spin.
			time.Sleep(100 * time.Millisecond)
		}
		select {
		case <-s.stop:
			return
		case <-time.After(s.pause):
		}
	}
}

// halt stops the clients and waits for their last requests.
func (s *stream) halt() {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	s.wg.Wait()
	s.client.CloseIdleConnections()
}

// snapshot returns the answers so far.
func (s *stream) snapshot() []answer {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.answers)
}

// count returns how many answers had status since from.
func (s *stream) count(status int, from time.Time) int {
	n := 0
	for _, a := range s.snapshot() {
		if a.status == status && !a.start.Before(from) {
			n++
		}
	}
	return n
}

// accepted returns the ids answered 202, with their tenants; an id accepted twice fails t.
func accepted(t *testing.T, answers []answer) map[string]string {
	t.Helper()
	ids := map[string]string{}
	for _, a := range answers {
		if a.status != http.StatusAccepted {
			continue
		}
		require.NotEmpty(t, a.id, "a 202 without an id")
		_, dup := ids[a.id]
		require.False(t, dup, "id %s accepted twice", a.id)
		ids[a.id] = a.tenant
	}
	return ids
}

// statuses summarises answers by status code ("none" for no HTTP answer).
func statuses(answers []answer) string {
	by := map[int]int{}
	for _, a := range answers {
		by[a.status]++
	}
	codes := make([]int, 0, len(by))
	for c := range by {
		codes = append(codes, c)
	}
	sort.Ints(codes)
	var b bytes.Buffer
	for i, c := range codes {
		if i > 0 {
			b.WriteString(" ")
		}
		if c == 0 {
			fmt.Fprintf(&b, "none:%d", by[c])
		} else {
			fmt.Fprintf(&b, "%d:%d", c, by[c])
		}
	}
	return b.String()
}

// slowest returns the longest answer time.
func slowest(answers []answer) answer {
	var m answer
	for _, a := range answers {
		if a.duration > m.duration {
			m = a
		}
	}
	return m
}

// outcome is what a fault test found in the database and the broker once everything settled.
type outcome struct {
	accepted     int // ids answered 202
	stored       int // rows of the test's tenants
	missing      int // accepted but not stored
	duplicates   int // ids stored more than once
	extra        int // stored without a 202 (the client saw an error, the broker had confirmed it)
	deadLettered int // messages in the tenants' dead-letter queues
}

func (o outcome) String() string {
	return fmt.Sprintf("accepted=%d stored=%d missing=%d duplicates=%d stored-without-202=%d dead-lettered=%d",
		o.accepted, o.stored, o.missing, o.duplicates, o.extra, o.deadLettered)
}

// settle waits (up to timeout) until every accepted message is stored, then compares the accepted ids with
// the stored rows and fails t when one is missing or stored twice.
func settle(t *testing.T, dbURL, amqpURL string, tenants []string, acc map[string]string, timeout time.Duration) outcome {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dbURL)
	require.NoError(t, err)
	defer conn.Close(ctx)
	ids := make([]uuid.UUID, 0, len(acc))
	for id := range acc {
		ids = append(ids, uuid.MustParse(id))
	}
	storedOf := func() int {
		var n int
		require.NoError(t, conn.QueryRow(ctx, "SELECT count(DISTINCT id) FROM messages WHERE id = ANY($1)", ids).Scan(&n))
		return n
	}
	deadline := time.Now().Add(timeout)
	for storedOf() < len(ids) && time.Now().Before(deadline) {
		time.Sleep(250 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond) // redeliveries still on their way would show as duplicates

	tenantIDs := make([]uuid.UUID, len(tenants))
	for i, tn := range tenants {
		tenantIDs[i] = uuid.MustParse(tn)
	}
	rows, err := conn.Query(ctx, "SELECT id::text FROM messages WHERE tenant_id = ANY($1)", tenantIDs)
	require.NoError(t, err)
	seen := map[string]int{}
	o := outcome{accepted: len(acc)}
	for rows.Next() {
		var id string
		require.NoError(t, rows.Scan(&id))
		seen[id]++
		o.stored++
	}
	require.NoError(t, rows.Err())
	for id, n := range seen {
		if n > 1 {
			o.duplicates++
		}
		if _, ok := acc[id]; !ok {
			o.extra++
		}
	}
	var missing []string
	for id := range acc {
		if seen[id] == 0 {
			missing = append(missing, id)
		}
	}
	o.missing = len(missing)
	o.deadLettered = testenv.Count(t, conn, "SELECT count(*) FROM dead_letters")
	if len(missing) > 5 {
		missing = missing[:5]
	}
	if o.missing > 0 {
		t.Logf("queues after %s: %s", timeout, queueStates(amqpURL, tenants))
	}
	require.Zero(t, o.missing, "accepted but not stored after %s: %s (first: %v)", timeout, o, missing)
	require.Zero(t, o.duplicates, "stored twice: %s", o)
	return o
}

// queueStates says where missing messages may be: each tenant queue's ready messages (waiting for a consumer
// the broker serves) and consumers, by passive declares. It never fails the test: what failed is reported after.
func queueStates(amqpURL string, tenants []string) string {
	conn, err := amqp.DialConfig(amqpURL, amqp.Config{Dial: amqp.DefaultDial(5 * time.Second)})
	if err != nil {
		return "unknown: " + err.Error()
	}
	defer conn.Close()
	var queues []string
	for _, tn := range tenants {
		name := consumer.QueueName(uuid.MustParse(tn))
		ch, err := conn.Channel()
		if err != nil {
			return "unknown: " + err.Error()
		}
		q, err := ch.QueueDeclarePassive(name, true, false, false, false, nil)
		if err != nil {
			queues = append(queues, fmt.Sprintf("%s: %v", tn, err))
			continue // the failed declare closed the channel
		}
		_ = ch.Close()
		queues = append(queues, fmt.Sprintf("%s: %d ready, %d consumers", tn, q.Messages, q.Consumers))
	}
	return strings.Join(queues, "; ")
}

// waitConsumers waits until every tenant's queue has a consumer again.
func waitConsumers(t *testing.T, amqpURL string, tenants []string, timeout time.Duration) {
	t.Helper()
	for _, tn := range tenants {
		testenv.Eventually(t, timeout, func() bool {
			_, _, c := testenv.QueueState(t, amqpURL, consumer.QueueName(uuid.MustParse(tn)))
			return c >= 1
		}, "tenant %s has no consumer", tn)
	}
}
