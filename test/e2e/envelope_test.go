package e2e

import (
	"net/http"
	"regexp"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"

	"github.com/acme/msgsvc/modules/consumer"
	"github.com/acme/msgsvc/platform/broker"
	"github.com/acme/msgsvc/test/testenv"
)

var perPublishCount = regexp.MustCompile(`(?m)^msgsvc_messages_per_publish_count (\d+)$`)

// TestConcurrentPublishesShareEnvelopes publishes from 32 clients into one tenant: publishes that arrive while
// the tenant's previous one waits for its confirm travel together as one envelope, and every message answered
// 202 is stored exactly once and found by its own id.
func TestConcurrentPublishesShareEnvelopes(t *testing.T) {
	s := testenv.Get(t)
	a := testenv.Start(t, s.Config(t))
	tenant := a.CreateTenant("envelopes", 3)

	const clients, each = 32, 25
	all := publishFromClients(a, clients, each, func(int, int) string { return tenant })

	m := perPublishCount.FindStringSubmatch(scrape(t, a.URL))
	require.NotNil(t, m, "msgsvc_messages_per_publish is exported")
	publishes, _ := strconv.Atoi(m[1])
	require.Less(t, publishes, clients*each, "some publishes were coalesced into envelopes")
	t.Logf("%d messages in %d AMQP publishes", clients*each, publishes)

	db := a.DB()
	awaitStored(t, db, all, 30*time.Second, "every accepted message is stored")
	require.Equal(t, len(all), testenv.Count(t, db, "SELECT count(*) FROM messages WHERE tenant_id = $1", uuid.MustParse(tenant)),
		"each once")
	r := a.Do(http.MethodGet, "/api/v1/messages/"+all[len(all)/2].String()+"?tenant_id="+tenant, nil)
	require.Equal(t, http.StatusOK, r.Status, "a message that travelled in an envelope is found by its id: %s", r.Body)
}

// TestEnvelopeWithAnUnstorableMessage publishes an envelope straight to a tenant's queue in which one message
// can never be stored: the others are stored, that one becomes a dead letter of its own (found by its id), and
// the envelope leaves the queue.
func TestEnvelopeWithAnUnstorableMessage(t *testing.T) {
	s := testenv.Get(t)
	cfg := s.Config(t)
	a := testenv.Start(t, cfg)
	tenant := a.CreateTenant("envelope-poison", 1)
	now := time.Now().UnixMicro()
	good1, bad, good2 := uuid.New(), uuid.New(), uuid.New()
	items := []broker.EnvelopeItem{
		{ID: good1, CreatedAt: now, Payload: []byte(`{"n":1}`)},
		{ID: bad, CreatedAt: now, Payload: []byte(`not json`)},
		{ID: good2, CreatedAt: now, Payload: []byte(`{"n":2}`)},
	}
	publishDirect(t, cfg.AMQPURL, cfg.AMQPExchange, tenant, uuid.NewString(), broker.EncodeEnvelope(items),
		amqp.Table{broker.HeaderEnvelope: int64(len(items))})

	db := a.DB()
	awaitStored(t, db, []uuid.UUID{good1, good2}, 15*time.Second, "the storable messages of the envelope are stored")
	testenv.Eventually(t, 15*time.Second, func() bool {
		return len(listDeadLetters(t, a, tenant, "").Data) == 1
	}, "the unstorable message is dead-lettered")
	dl := listDeadLetters(t, a, tenant, "").Data[0]
	require.Equal(t, bad.String(), dl.ID)
	require.Equal(t, consumer.ReasonUndecodable, dl.Reason)
	require.NotNil(t, dl.RawPayload)
	require.Equal(t, "not json", *dl.RawPayload)
	testenv.Eventually(t, 5*time.Second, func() bool {
		_, ready, _ := testenv.QueueState(t, cfg.AMQPURL, consumer.QueueName(uuid.MustParse(tenant)))
		return ready == 0
	}, "the envelope left the queue")
	// Acked, not merely held: a stop would give back what is unacknowledged.
	require.NoError(t, a.Stop())
	time.Sleep(500 * time.Millisecond)
	_, ready, _ := testenv.QueueState(t, cfg.AMQPURL, consumer.QueueName(uuid.MustParse(tenant)))
	require.Zero(t, ready, "the envelope was acked")
}

// publishFromClients publishes each messages from each of clients concurrent clients, client c's i-th to
// tenantOf(c, i), and returns the ids answered 202.
func publishFromClients(a *testenv.App, clients, each int, tenantOf func(c, i int) string) []uuid.UUID {
	ids := make(chan string, clients*each)
	var wg sync.WaitGroup
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				ids <- a.Publish(tenantOf(c, i), map[string]int{"client": c, "i": i})
			}
		}()
	}
	wg.Wait()
	close(ids)
	var all []uuid.UUID
	for id := range ids {
		all = append(all, uuid.MustParse(id))
	}
	return all
}

// awaitConsumed waits until tenant id's queue exists with one consumer.
func awaitConsumed(t *testing.T, amqpURL string, id uuid.UUID, timeout time.Duration, msg string, args ...any) {
	t.Helper()
	testenv.Eventually(t, timeout, func() bool {
		ok, _, c := testenv.QueueState(t, amqpURL, consumer.QueueName(id))
		return ok && c == 1
	}, msg, args...)
}

// awaitStored waits until every message of ids is stored.
func awaitStored(t *testing.T, db *pgx.Conn, ids []uuid.UUID, timeout time.Duration, msg string) {
	t.Helper()
	testenv.Eventually(t, timeout, func() bool {
		return testenv.Count(t, db, "SELECT count(*) FROM messages WHERE id = ANY($1)", ids) == len(ids)
	}, msg)
}
