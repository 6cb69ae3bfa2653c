package e2e

import (
	"context"
	"errors"
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

type deadLetters struct {
	Count int `json:"count"`
	Data  []struct {
		ID         string    `json:"id"`
		Reason     string    `json:"reason"`
		LastError  string    `json:"last_error"`
		FirstSeen  time.Time `json:"first_seen"`
		RawPayload string    `json:"raw_payload"`
	} `json:"data"`
}

func TestDeadLettersListAndReplay(t *testing.T) {
	s := testenv.Get(t)
	cfg := s.Config(t)
	cfg.StoreRetryInitial = 20 * time.Millisecond
	cfg.StoreRetryBudget = 100 * time.Millisecond
	cfg.AMQPDeliveryLimit = 2
	flaky := &flakyHandler{}
	a := testenv.Start(t, cfg, fx.Decorate(func(h consumer.Handler) consumer.Handler { flaky.inner = h; return flaky }))
	db := a.DB()
	tenant := a.CreateTenant("dlq", 2)
	tid := uuid.MustParse(tenant)

	// Undecodable: dead-lettered at once, with its reason.
	publishDirect(t, cfg.AMQPURL, cfg.AMQPExchange, tenant, uuid.NewString(), []byte(`not json`), nil)
	testenv.Eventually(t, 10*time.Second, func() bool {
		_, n, _ := testenv.QueueState(t, cfg.AMQPURL, consumer.DeadLetterQueueName(tid))
		return n == 1
	}, "undecodable message dead-lettered")
	// Transient failures past the retry budget and the delivery limit: dead-lettered as retries exhausted.
	flaky.broken.Store(true)
	var ids []string
	for i := range 3 {
		ids = append(ids, a.Publish(tenant, map[string]int{"i": i}))
	}
	testenv.Eventually(t, 20*time.Second, func() bool {
		_, n, _ := testenv.QueueState(t, cfg.AMQPURL, consumer.DeadLetterQueueName(tid))
		return n == 4
	}, "four dead letters")
	flaky.broken.Store(false)

	var dl deadLetters
	for range 2 { // looking does not consume
		r := a.Do(http.MethodGet, "/api/v1/tenants/"+tenant+"/dead-letters?limit=10", nil)
		require.Equal(t, http.StatusOK, r.Status, string(r.Body))
		r.JSON(t, &dl)
		require.Equal(t, 4, dl.Count)
		require.Len(t, dl.Data, 4)
	}
	reasons := map[string]int{}
	for _, d := range dl.Data {
		reasons[d.Reason]++
		require.NotEmpty(t, d.LastError)
		require.WithinDuration(t, time.Now(), d.FirstSeen, time.Minute)
	}
	require.Equal(t, map[string]int{"undecodable": 1, "retries_exhausted": 3}, reasons)
	r := a.Do(http.MethodGet, "/api/v1/tenants/"+tenant+"/dead-letters?limit=1", nil)
	r.JSON(t, &dl)
	require.Len(t, dl.Data, 1)
	require.Equal(t, 4, dl.Count)

	require.Equal(t, http.StatusBadRequest, a.Do(http.MethodGet, "/api/v1/tenants/"+tenant+"/dead-letters?limit=0", nil).Status)
	require.Equal(t, http.StatusNotFound, a.Do(http.MethodGet, "/api/v1/tenants/"+uuid.NewString()+"/dead-letters", nil).Status)
	require.Equal(t, http.StatusNotFound, a.Do(http.MethodPost, "/api/v1/tenants/"+uuid.NewString()+"/dead-letters/replay", nil).Status)

	// Replay everything: the three stored now, the undecodable one dead-lettered again.
	r = a.Do(http.MethodPost, "/api/v1/tenants/"+tenant+"/dead-letters/replay", nil)
	require.Equal(t, http.StatusOK, r.Status, string(r.Body))
	require.EqualValues(t, 4, r.Map(t)["replayed"])
	testenv.Eventually(t, 10*time.Second, func() bool {
		return testenv.Count(t, db, "SELECT count(*) FROM messages WHERE tenant_id = $1", tid) == 3
	}, "replayed messages stored")
	for _, id := range ids {
		require.Equal(t, 1, testenv.Count(t, db, "SELECT count(*) FROM messages WHERE id = $1", uuid.MustParse(id)))
	}
	testenv.Eventually(t, 10*time.Second, func() bool {
		_, n, _ := testenv.QueueState(t, cfg.AMQPURL, consumer.DeadLetterQueueName(tid))
		return n == 1
	}, "the undecodable message is back in the dead-letter queue")
	require.Contains(t, scrape(t, a.URL), `msgsvc_dead_letters_replayed_total{tenant="`+tenant+`"} 4`)
	require.Contains(t, scrape(t, a.URL), `msgsvc_messages_dead_lettered_total{reason="retries_exhausted",tenant="`+tenant+`"} 3`)
}
