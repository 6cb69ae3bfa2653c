package consumer

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"
	rabbitmq "github.com/wagslane/go-rabbitmq"
	"go.uber.org/zap"

	"github.com/acme/msgsvc/platform/database"
)

// scriptedHandler answers each store with the next error of its script (nil once it runs out) and tells
// every call on calls.
type scriptedHandler struct {
	script []error
	calls  chan int
	n      int
}

func (h *scriptedHandler) Handle(_ context.Context, _ uuid.UUID, ds []amqp.Delivery) []error {
	var err error
	if h.n < len(h.script) {
		err = h.script[h.n]
	}
	h.n++
	if h.calls != nil {
		h.calls <- h.n
	}
	errs := make([]error, len(ds))
	for i := range errs {
		errs[i] = err
	}
	return errs
}

// settlements is a consumer channel that records what the worker settled: "ack" from the acker, "nack" and
// "reject" from the deliveries.
type settlements chan string

func (s settlements) Ack(uint64, bool) error          { s <- "ack"; return nil }
func (s settlements) Nack(uint64, bool, bool) error   { s <- "nack"; return nil }
func (s settlements) Reject(tag uint64, _ bool) error { s <- "reject"; return nil }

// processBench is a tenant consumer whose generation has one delivery registered. Its retry budget is spent
// by the first failure that counts, and it has neither publisher nor dead-letter store: an exhausted delivery
// would panic, so a test passes only when no failure counted.
func processBench(h Handler, gate *database.Gate) (*tenantConsumer, *generation, rabbitmq.Delivery, settlements) {
	rt := &Runtime{handler: h, gate: gate, metrics: NewMetrics(prometheus.NewRegistry(), true), log: zap.NewNop(),
		opts: Options{RetryInitial: time.Millisecond, RetryBudget: time.Nanosecond, DeliveryLimit: 1}}
	tc := &tenantConsumer{rt: rt, id: uuid.New(), log: tenantLog{base: zap.NewNop()}}
	ch := make(settlements, 10)
	g := &generation{stopped: make(chan struct{}), done: make(chan struct{}),
		acks: newAcker(func(c amqp.Acknowledger, tag uint64, multiple bool) { _ = c.Ack(tag, multiple) }, func(f func()) { f() })}
	d := rabbitmq.Delivery{Delivery: amqp.Delivery{Acknowledger: ch, DeliveryTag: 1, MessageId: uuid.NewString()}}
	g.acks.register(d.Delivery, false)
	return tc, g, d, ch
}

func TestTransientStoreFailuresNeverCount(t *testing.T) {
	pg := func(code string) error { return fmt.Errorf("store 1 messages: %w", &pgconn.PgError{Code: code}) }
	h := &scriptedHandler{script: []error{pg("40P01"), pg("55P03"), pg("57014"), pg("XX000")}}
	tc, g, d, ch := processBench(h, nil)
	tc.process(g, []rabbitmq.Delivery{d})
	require.Equal(t, 5, h.n, "retried until stored")
	require.Equal(t, "ack", <-ch)
}

func TestStoresWaitForTheDatabaseGate(t *testing.T) {
	waits, ticks, probes := make(chan time.Duration, 10), make(chan time.Time), make(chan error)
	gate := database.NewGate(database.GateOptions{
		After: func(d time.Duration) <-chan time.Time { waits <- d; return ticks },
		Probe: func(context.Context) error { return <-probes }})
	defer gate.Close()
	refused := fmt.Errorf("store 1 messages: %w", &pgconn.ConnectError{Config: &pgconn.Config{}})
	h := &scriptedHandler{script: []error{refused}, calls: make(chan int, 10)}
	tc, g, d, ch := processBench(h, gate)
	done := make(chan struct{})
	go func() { defer close(done); tc.process(g, []rabbitmq.Delivery{d}) }()

	require.Equal(t, 1, <-h.calls)
	<-waits // the gate closed and its probe waits: the worker waits for the gate, not its own backoff
	require.False(t, gate.Available())
	ticks <- time.Now()
	probes <- errors.New("still refused")
	<-waits
	require.Empty(t, h.calls, "a worker stored while the gate was closed")
	ticks <- time.Now()
	probes <- nil // the database answers
	require.Equal(t, 2, <-h.calls)
	<-done
	require.Equal(t, "ack", <-ch, "stored once the database answered, uncounted")
	require.EqualValues(t, 1, gate.Failures())
}

func TestStopWhileTheDatabaseIsAwayRequeuesUncounted(t *testing.T) {
	waits := make(chan time.Duration, 10)
	gate := database.NewGate(database.GateOptions{
		After: func(d time.Duration) <-chan time.Time { waits <- d; return nil }})
	defer gate.Close()
	h := &scriptedHandler{script: []error{fmt.Errorf("store: %w", &pgconn.PgError{Code: "57P01"})}, calls: make(chan int, 10)}
	tc, g, d, ch := processBench(h, gate)
	done := make(chan struct{})
	go func() { defer close(done); tc.process(g, []rabbitmq.Delivery{d}) }()
	<-h.calls
	<-waits
	g.stopping.Store(true)
	close(g.stopped)
	<-done
	require.Equal(t, "nack", <-ch, "given back to the queue, without an attempt counted")
	require.Equal(t, 1, h.n)
}
