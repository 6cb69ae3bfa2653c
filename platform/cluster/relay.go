// Package cluster carries tenant lifecycle events between replicas through RabbitMQ: a fanout exchange with
// one queue per replica. Events published locally are forwarded; events from other replicas are published on
// the local bus marked remote (events.IsRemote), so subscribers apply only their local effects.
package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"
	rabbitmq "github.com/wagslane/go-rabbitmq"
	"go.uber.org/zap"

	"github.com/acme/msgsvc/platform/broker"
	"github.com/acme/msgsvc/platform/events"
)

// envelope is the wire form of a relayed event.
type envelope struct {
	Type   string          `json:"type"`
	Origin string          `json:"origin"`
	Data   json.RawMessage `json:"data"`
}

// Relay forwards tenant events to and from the other replicas.
type Relay struct {
	conn      *broker.Conn
	publisher *broker.Publisher
	bus       *events.Bus
	exchange  string
	replica   string
	log       *zap.Logger
	consumer  *rabbitmq.Consumer
	handlers  map[string]func(context.Context, json.RawMessage) error

	// outbox holds the events to relay, in order, for one sender (sendLoop): the caller of events.Publish (a
	// tenant's creation, resize or deletion, a handover's announcement) never waits for RabbitMQ's confirm. The
	// fanout reaches every replica's queue, and RabbitMQ confirms only once all of them took the event: one
	// replica's queue that does not answer (a classic queue on a frozen node) held every tenant operation of every
	// replica for PUBLISH_CONFIRM_TIMEOUT.
	outbox   chan broker.Message
	stopSend chan struct{}
	sent     chan struct{} // closed when sendLoop returned
}

// outboxSize is how many events may wait to be relayed; more are dropped (the other replicas catch up at their
// next reconciliation and view refresh), with a warning.
const outboxSize = 4096

// relayBatch is the most events one publish of the sender carries (their confirms in flight together), under
// broker.PublisherOptions.MaxUnconfirmed.
const relayBatch = 64

// NewRelay returns a relay over the fanout exchange for replica.
func NewRelay(conn *broker.Conn, p *broker.Publisher, bus *events.Bus, exchange, replica string, log *zap.Logger) *Relay {
	r := &Relay{conn: conn, publisher: p, bus: bus, exchange: exchange, replica: replica, log: log.Named("cluster"),
		handlers: map[string]func(context.Context, json.RawMessage) error{},
		outbox:   make(chan broker.Message, outboxSize), stopSend: make(chan struct{}), sent: make(chan struct{})}
	go r.sendLoop()
	relay[events.TenantCreated](r, "tenant.created")
	relay[events.TenantConcurrencyChanged](r, "tenant.concurrency_changed")
	relay[events.TenantRateLimitChanged](r, "tenant.rate_limit_changed")
	relay[events.TenantRetentionChanged](r, "tenant.retention_changed")
	relay[events.TenantDeleting](r, "tenant.deleting")
	relay[events.TenantDemand](r, "tenant.demand")
	relay[events.TenantsConsumed](r, "tenants.consumed")
	return r
}

// relay forwards local events of type E under name and accepts remote ones.
func relay[E any](r *Relay, name string) {
	events.Subscribe(r.bus, "cluster.relay", func(ctx context.Context, e E) error {
		if events.IsRemote(ctx) {
			return nil
		}
		return r.send(ctx, name, e)
	})
	r.handlers[name] = func(ctx context.Context, data json.RawMessage) error {
		var e E
		if err := json.Unmarshal(data, &e); err != nil {
			return err
		}
		return events.Publish(ctx, r.bus, e)
	}
}

func (r *Relay) send(ctx context.Context, name string, e any) error {
	data, err := json.Marshal(e)
	if err != nil {
		return err
	}
	body, _ := json.Marshal(envelope{Type: name, Origin: r.replica, Data: data})
	select {
	case r.outbox <- broker.Message{Exchange: r.exchange, MessageID: uuid.NewString(), Body: body}:
	default:
		// Other replicas catch up at their next reconciliation.
		r.log.Warn("could not relay event to other replicas: too many wait for RabbitMQ's confirm", zap.String("event", name),
			zap.Int("waiting", outboxSize))
	}
	return nil
}

// sendLoop publishes the outbox's events in order, up to relayBatch at a time, until Stop; then it sends what
// is left once.
func (r *Relay) sendLoop() {
	defer close(r.sent)
	for {
		var batch []broker.Message
		select {
		case m := <-r.outbox:
			batch = append(batch, m)
		case <-r.stopSend:
			r.flush()
			return
		}
		batch = r.take(batch)
		r.publish(batch)
	}
}

// take adds to batch the events waiting, up to relayBatch.
func (r *Relay) take(batch []broker.Message) []broker.Message {
	for len(batch) < relayBatch {
		select {
		case m := <-r.outbox:
			batch = append(batch, m)
		default:
			return batch
		}
	}
	return batch
}

// flush sends the events still waiting at Stop, in one round.
func (r *Relay) flush() {
	for {
		batch := r.take(nil)
		if len(batch) == 0 {
			return
		}
		if !r.publish(batch) {
			return
		}
	}
}

// publish sends batch and reports whether RabbitMQ confirmed it; a failure is logged, and the other replicas
// catch up at their next reconciliation.
func (r *Relay) publish(batch []broker.Message) bool {
	if err := r.publisher.PublishAll(context.Background(), batch); err != nil {
		r.log.Warn("could not relay events to other replicas", zap.Int("events", len(batch)), zap.Error(err))
		return false
	}
	return true
}

// Start declares the fanout exchange and consumes this replica's queue.
func (r *Relay) Start(ctx context.Context) error {
	return broker.Retry(ctx, r.log, "cluster events: consuming this replica's queue", r.start)
}

func (r *Relay) start(ctx context.Context) error {
	if err := r.conn.DeclareExchange(ctx, r.exchange, amqp.ExchangeFanout); err != nil {
		return fmt.Errorf("cluster: declare exchange: %w", err)
	}
	queue := r.exchange + "." + r.replica
	// Not auto-delete: the queue keeps the events relayed while this replica reconnects (an auto-delete queue
	// went with the connection, and those events with it). It expires a minute after its replica is gone.
	c, err := rabbitmq.NewConsumer(r.conn.Conn, queue,
		rabbitmq.WithConsumerOptionsQueueArgs(rabbitmq.Table{"x-queue-type": "classic", "x-expires": int64(60_000)}),
		rabbitmq.WithConsumerOptionsExchangeName(r.exchange),
		rabbitmq.WithConsumerOptionsExchangeKind(amqp.ExchangeFanout),
		rabbitmq.WithConsumerOptionsExchangeDurable,
		rabbitmq.WithConsumerOptionsRoutingKey(""),
		rabbitmq.WithConsumerOptionsLogger(broker.Logger(r.log)),
	)
	if err != nil {
		return fmt.Errorf("cluster: consumer: %w", err)
	}
	errc := make(chan error, 1)
	var started atomic.Bool
	go func() {
		err := c.Run(r.receive)
		if err != nil && started.Load() {
			r.log.Error("cluster events: consuming this replica's queue failed; events from other replicas are not applied until a restart (the periodic reconciliation and view refresh still catch up)",
				zap.String("queue", queue), zap.Error(err))
		}
		errc <- err
	}()
	// Run returns early only when the first consume fails; give it a moment so that start-up reports it.
	select {
	case err := <-errc:
		if err != nil {
			c.Close()
			return fmt.Errorf("cluster: consume: %w", err)
		}
	case <-ctx.Done():
	case <-time.After(100 * time.Millisecond):
	}
	r.consumer = c
	started.Store(true)
	return nil
}

func (r *Relay) receive(d rabbitmq.Delivery) rabbitmq.Action {
	var env envelope
	if err := json.Unmarshal(d.Body, &env); err != nil {
		r.log.Warn("undecodable cluster event dropped", zap.Error(err))
		return rabbitmq.Ack
	}
	if env.Origin == r.replica {
		return rabbitmq.Ack
	}
	h, ok := r.handlers[env.Type]
	if !ok {
		r.log.Warn("unknown cluster event dropped", zap.String("event", env.Type))
		return rabbitmq.Ack
	}
	if err := h(events.WithRemote(context.Background(), env.Origin), env.Data); err != nil {
		r.log.Warn("applying a remote event failed; reconciliation will catch up", zap.String("event", env.Type),
			zap.String("origin", env.Origin), zap.Error(err))
	}
	return rabbitmq.Ack
}

// Stop sends the events still waiting (for a second at most: a stuck publish must not take the shutdown's time)
// and stops consuming; the replica's queue expires a minute later unless the replica comes back.
func (r *Relay) Stop(ctx context.Context) error {
	select {
	case <-r.stopSend:
	default:
		close(r.stopSend)
	}
	select {
	case <-r.sent:
	case <-ctx.Done():
	case <-time.After(time.Second):
	}
	if r.consumer != nil {
		r.consumer.CloseWithContext(ctx)
	}
	return nil
}
