// Package cluster carries tenant lifecycle events between replicas through RabbitMQ, one queue per replica.
// Events published locally are forwarded to each other replica's queue; events from other replicas are published
// on the local bus marked remote (events.IsRemote), so subscribers apply only their local effects.
package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
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
//
// Each event goes to every other replica's queue by name (the default exchange), one route per replica, from an
// outbox of that replica's own with one sender: the caller of events.Publish (a tenant's creation, resize or
// deletion, a handover's announcement, a demand report) never waits for RabbitMQ's confirm, and one replica's
// queue that does not answer (a classic queue on a frozen node, or busy) holds only the events to that replica.
// A fanout exchange reached every queue with one publish, but RabbitMQ confirms it only once all of them took it:
// one stuck queue held every replica's events to every other replica, PUBLISH_CONFIRM_TIMEOUT per batch, and
// then PUBLISH_MAX_UNCONFIRMED refused them all (the tenant's rate limit went to N × meanwhile).
//
// Events from other replicas are applied per tenant in order, different tenants side by side (applying).
//
// The replicas sent to are the ones with a heartbeat (Membership.Members) and the ones heard from, each for
// peerLinger after it was last seen: a replica that left keeps hearing, while its consumers drain, which replicas
// took its tenants over (events.TenantsConsumed), and one cut off from PostgreSQL keeps hearing the demand
// reports of the replicas it reports to.
type Relay struct {
	conn      *broker.Conn
	publisher *broker.Publisher
	bus       *events.Bus
	exchange  string
	replica   string
	members   func() []string
	dropped   prometheus.Counter
	log       *zap.Logger
	consumer  *rabbitmq.Consumer
	handlers  map[string]func(json.RawMessage) (remote, error)
	now       func() time.Time

	// applying runs the events of other replicas, those of one tenant in order, different tenants side by side:
	// applying one can take long (a resize drains the tenant's consumer for up to CONSUMER_DRAIN_TIMEOUT), and
	// run one after the other, every event behind it waited, every other tenant's creation, resize and deletion
	// on this replica with them. applyCtx is their context, cancelled at Stop.
	applying    *keyed
	applyCtx    context.Context
	cancelApply context.CancelFunc

	mu      sync.Mutex
	peers   map[string]*peer
	stopped bool

	sendCtx    context.Context // cancelled once Stop stopped waiting for the senders
	cancelSend context.CancelFunc
	stopSend   chan struct{} // closed at Stop: the senders flush what waits, once
	senders    sync.WaitGroup
}

// remote is an event of another replica, decoded: the tenant it is about ("" for none: it is applied at once,
// on the consuming goroutine), and what applies it.
type remote struct {
	tenant string
	apply  func(context.Context) error
}

// peer is another replica the relay sends to.
type peer struct {
	id     string
	queue  string
	outbox chan broker.Message
	gone   chan struct{} // closed when the replica was not seen for peerLinger: its sender stops
	seen   time.Time     // Relay.mu
	// dropping is set while events to this replica are dropped (its outbox full, or a publish failed), so that
	// the warning comes once per spell.
	dropping atomic.Bool
}

const (
	// outboxSize is how many events may wait to be relayed to one replica; more are dropped (it catches up at
	// its next reconciliation and view refresh, and a demand report is current for seconds only), with a warning.
	outboxSize = 1024
	// relayBatch is the most events one publish of a sender carries (their confirms in flight together), under
	// broker.PublisherOptions.MaxUnconfirmed.
	relayBatch = 64
	// peerLinger is how long the relay still sends to a replica after it last saw its heartbeat or heard from it:
	// longer than a leaving replica's drain (CONSUMER_DRAIN_TIMEOUT), and than its queue's expiry (a minute).
	peerLinger = 2 * time.Minute
	// retryPause is how long a sender waits after a publish failed before it sends again.
	retryPause = time.Second
	// applyWorkers bounds the tenants whose remote events apply at once.
	applyWorkers = 64
)

// NewRelay returns a relay for replica: it sends events to the queues of the replicas members returns (and of
// those heard from) and consumes its own, bound to exchange. dropped counts the events dropped.
func NewRelay(conn *broker.Conn, p *broker.Publisher, bus *events.Bus, exchange, replica string, members func() []string,
	dropped prometheus.Counter, log *zap.Logger) *Relay {
	r := &Relay{conn: conn, publisher: p, bus: bus, exchange: exchange, replica: replica, members: members,
		dropped: dropped, log: log.Named("cluster"), now: time.Now,
		handlers: map[string]func(json.RawMessage) (remote, error){},
		peers:    map[string]*peer{}, stopSend: make(chan struct{}), applying: newKeyed(applyWorkers)}
	r.sendCtx, r.cancelSend = context.WithCancel(context.Background())
	r.applyCtx, r.cancelApply = context.WithCancel(context.Background())
	relay(r, "tenant.created", func(e events.TenantCreated) uuid.UUID { return e.Tenant.ID })
	relay(r, "tenant.concurrency_changed", func(e events.TenantConcurrencyChanged) uuid.UUID { return e.TenantID })
	relay(r, "tenant.rate_limit_changed", func(e events.TenantRateLimitChanged) uuid.UUID { return e.TenantID })
	relay(r, "tenant.retention_changed", func(e events.TenantRetentionChanged) uuid.UUID { return e.TenantID })
	relay(r, "tenant.deleting", func(e events.TenantDeleting) uuid.UUID { return e.TenantID })
	// These are applied in memory at once (a demand report's shares, a handover's successors, a kick of the
	// new owner's reconciliation).
	relay[events.TenantDemand](r, "tenant.demand", nil)
	relay[events.TenantsConsumed](r, "tenants.consumed", nil)
	relay[events.TenantsHandedOver](r, "tenants.handed_over", nil)
	return r
}

// relay forwards local events of type E under name and accepts remote ones; tenant names the tenant an event is
// about (nil: none).
func relay[E any](r *Relay, name string, tenant func(E) uuid.UUID) {
	events.Subscribe(r.bus, "cluster.relay", func(ctx context.Context, e E) error {
		if events.IsRemote(ctx) {
			return nil
		}
		return r.send(ctx, name, e)
	})
	r.handlers[name] = func(data json.RawMessage) (remote, error) {
		var e E
		if err := json.Unmarshal(data, &e); err != nil {
			return remote{}, err
		}
		ev := remote{apply: func(ctx context.Context) error { return events.Publish(ctx, r.bus, e) }}
		if tenant != nil {
			ev.tenant = tenant(e).String()
		}
		return ev, nil
	}
}

// queueOf is the name of replica's events queue.
func (r *Relay) queueOf(replica string) string { return r.exchange + "." + replica }

func (r *Relay) send(ctx context.Context, name string, e any) error {
	data, err := json.Marshal(e)
	if err != nil {
		return err
	}
	body, _ := json.Marshal(envelope{Type: name, Origin: r.replica, Data: data})
	for _, p := range r.current() {
		select {
		case p.outbox <- broker.Message{RoutingKey: p.queue, MessageID: uuid.NewString(), Body: body}:
		default:
			// The replica catches up at its next reconciliation.
			r.dropped.Inc()
			if !p.dropping.Swap(true) {
				r.log.Warn("dropping events to a replica: too many wait for RabbitMQ's confirm of its events queue",
					zap.String("to", p.id), zap.String("queue", p.queue), zap.String("event", name), zap.Int("waiting", outboxSize))
			}
		}
	}
	return nil
}

// current returns the replicas to send to now: it adds the replicas with a heartbeat, and forgets (stopping
// their senders) those not seen for peerLinger.
func (r *Relay) current() []*peer {
	members := r.members()
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now()
	for _, id := range members {
		r.seenLocked(id, now)
	}
	out := make([]*peer, 0, len(r.peers))
	for id, p := range r.peers {
		if now.Sub(p.seen) > peerLinger {
			close(p.gone)
			delete(r.peers, id)
			continue
		}
		out = append(out, p)
	}
	return out
}

// heard notes that replica is alive: the relay sends to it for peerLinger from now.
func (r *Relay) heard(replica string) {
	r.mu.Lock()
	r.seenLocked(replica, r.now())
	r.mu.Unlock()
}

// seenLocked notes replica as seen at now, starting its sender when it is new; r.mu must be held.
func (r *Relay) seenLocked(replica string, now time.Time) {
	if replica == r.replica || replica == "" || r.stopped {
		return
	}
	if p, ok := r.peers[replica]; ok {
		p.seen = now
		return
	}
	p := &peer{id: replica, queue: r.queueOf(replica), outbox: make(chan broker.Message, outboxSize),
		gone: make(chan struct{}), seen: now}
	r.peers[replica] = p
	r.senders.Add(1)
	go r.sendLoop(p)
}

// sendLoop publishes p's outbox in order, up to relayBatch at a time, until p is gone or Stop; at Stop it sends
// what waits, once. A batch RabbitMQ cannot have got (broker.ErrNotSent: PUBLISH_MAX_UNCONFIRMED of them wait
// for the stuck queue's confirm, or no connection) is sent again after retryPause; one it may have got and did
// not confirm is dropped.
func (r *Relay) sendLoop(p *peer) {
	defer r.senders.Done()
	var batch []broker.Message
	for {
		if len(batch) == 0 {
			select {
			case m := <-p.outbox:
				batch = append(batch, m)
			case <-p.gone:
				return
			case <-r.stopSend:
				r.flush(p, nil)
				return
			}
		}
		var ok bool
		if batch, ok = r.publish(p, take(p.outbox, batch)); ok {
			continue
		}
		select {
		case <-time.After(retryPause):
		case <-p.gone:
			return
		case <-r.stopSend:
			r.flush(p, batch)
			return
		}
	}
}

// take adds to batch the events waiting in outbox, up to relayBatch.
func take(outbox chan broker.Message, batch []broker.Message) []broker.Message {
	for len(batch) < relayBatch {
		select {
		case m := <-outbox:
			batch = append(batch, m)
		default:
			return batch
		}
	}
	return batch
}

// flush sends batch and the events still waiting for p at Stop, until one publish fails.
func (r *Relay) flush(p *peer, batch []broker.Message) {
	for {
		batch = take(p.outbox, batch)
		if len(batch) == 0 {
			return
		}
		var ok bool
		if batch, ok = r.publish(p, batch); !ok {
			return
		}
	}
}

// publish sends batch to p and reports whether RabbitMQ confirmed it, returning what is left to send: nothing
// when it was confirmed, or when it may have reached RabbitMQ (dropped: the replica catches up at its next
// reconciliation); the whole batch when it cannot have (broker.ErrNotSent), to be sent again. The first failure of
// a spell is logged.
func (r *Relay) publish(p *peer, batch []broker.Message) (rest []broker.Message, ok bool) {
	err := r.publisher.PublishAll(r.sendCtx, batch)
	if err == nil {
		if p.dropping.Swap(false) {
			r.log.Info("relaying events to a replica again", zap.String("to", p.id))
		}
		return batch[:0], true
	}
	notSent := errors.Is(err, broker.ErrNotSent)
	if !p.dropping.Swap(true) {
		r.log.Warn("could not relay events to a replica; those not sent are sent again, and the replica catches up at its next reconciliation",
			zap.String("to", p.id), zap.Int("events", len(batch)), zap.Bool("not_sent", notSent), zap.Error(err))
	}
	if notSent {
		return batch, false
	}
	r.dropped.Add(float64(len(batch)))
	return nil, false
}

// Start consumes this replica's queue. The queue is also bound to the fanout exchange, which replicas of earlier
// versions publish their events to (one publish for every queue), so that a rolling upgrade loses none of them.
func (r *Relay) Start(ctx context.Context) error {
	return broker.Retry(ctx, r.log, "cluster events: consuming this replica's queue", r.start)
}

func (r *Relay) start(ctx context.Context) error {
	if err := r.conn.DeclareExchange(ctx, r.exchange, amqp.ExchangeFanout); err != nil {
		return fmt.Errorf("cluster: declare exchange: %w", err)
	}
	queue := r.queueOf(r.replica)
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
	r.heard(env.Origin)
	h, ok := r.handlers[env.Type]
	if !ok {
		r.log.Warn("unknown cluster event dropped", zap.String("event", env.Type))
		return rabbitmq.Ack
	}
	ev, err := h(env.Data)
	if err != nil {
		r.log.Warn("undecodable cluster event dropped", zap.String("event", env.Type), zap.String("origin", env.Origin), zap.Error(err))
		return rabbitmq.Ack
	}
	apply := func() {
		if err := ev.apply(events.WithRemote(r.applyCtx, env.Origin)); err != nil {
			r.log.Warn("applying a remote event failed; reconciliation will catch up", zap.String("event", env.Type),
				zap.String("origin", env.Origin), zap.Error(err))
		}
	}
	if ev.tenant == "" {
		apply()
	} else {
		// Acked once queued: an event not applied when this replica stops is caught up by its next start's
		// reconciliation, as one lost would be.
		r.applying.submit(ev.tenant, apply)
	}
	return rabbitmq.Ack
}

// Stop sends the events still waiting (for a second at most: a stuck publish must not take the shutdown's time),
// stops consuming, and drops the other replicas' events not yet applied (the consumer runtime stopped before); the
// replica's queue expires a minute later unless the replica comes back.
func (r *Relay) Stop(ctx context.Context) error {
	r.mu.Lock()
	if !r.stopped {
		r.stopped = true
		close(r.stopSend)
	}
	r.mu.Unlock()
	sent := make(chan struct{})
	go func() {
		r.senders.Wait()
		close(sent)
	}()
	select {
	case <-sent:
	case <-ctx.Done():
	case <-time.After(time.Second):
	}
	r.cancelSend()
	if r.consumer != nil {
		r.consumer.CloseWithContext(ctx)
	}
	r.applying.stop()
	r.cancelApply()
	return nil
}
