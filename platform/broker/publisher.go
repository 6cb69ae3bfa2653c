package broker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	rabbitmq "github.com/wagslane/go-rabbitmq"
	"go.uber.org/zap"
)

// ErrUnroutable means a mandatory publish reached no queue.
var ErrUnroutable = errors.New("no queue is bound for the routing key")

// Message is one publish: a persistent message with a message id and headers.
type Message struct {
	Exchange   string
	RoutingKey string
	MessageID  string
	Headers    map[string]any
	Body       []byte
	// Mandatory asks the broker to return the message when no queue takes it.
	Mandatory bool
}

// Publisher publishes persistent messages in confirm mode over a pool of channels and waits for each confirm
// with a deadline. It is safe for concurrent use; many confirms are in flight at once.
type Publisher struct {
	conn    *Conn
	log     *zap.Logger
	pubs    []atomic.Pointer[rabbitmq.Publisher]
	fixing  []atomic.Bool // a replacement of pubs[i] is under way
	closed  atomic.Bool
	next    atomic.Uint64
	timeout time.Duration

	returnsMu sync.Mutex
	returned  map[string]struct{}
}

// NewPublisher opens channels confirming publishers on conn; each confirm is awaited at most timeout.
func NewPublisher(conn *Conn, channels int, timeout time.Duration, log *zap.Logger) (*Publisher, error) {
	p := &Publisher{conn: conn, log: log.Named("publisher"), timeout: timeout, returned: map[string]struct{}{},
		pubs: make([]atomic.Pointer[rabbitmq.Publisher], channels), fixing: make([]atomic.Bool, channels)}
	for i := range p.pubs {
		pub, err := p.open()
		if err != nil {
			p.Close()
			return nil, err
		}
		p.pubs[i].Store(pub)
	}
	return p, nil
}

// Publish sends m and returns once the broker confirmed it, or an error wrapping ErrUnavailable when the
// broker is down, refuses the message or does not confirm within the deadline, or ErrUnroutable.
func (p *Publisher) Publish(ctx context.Context, m Message) error {
	return p.PublishAll(ctx, []Message{m})
}

// PublishAll sends every message on one channel, with their confirms in flight together, and returns once the
// broker confirmed them all (nil) or the first failure. On failure some messages may have been confirmed.
func (p *Publisher) PublishAll(ctx context.Context, ms []Message) error {
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	slot := int(p.next.Add(1) % uint64(len(p.pubs)))
	pub := p.pubs[slot].Load()
	confs := make([]*amqp.DeferredConfirmation, 0, len(ms))
	for _, m := range ms {
		opts := []func(*rabbitmq.PublishOptions){
			rabbitmq.WithPublishOptionsExchange(m.Exchange),
			rabbitmq.WithPublishOptionsPersistentDelivery,
			rabbitmq.WithPublishOptionsContentType("application/json"),
			rabbitmq.WithPublishOptionsMessageID(m.MessageID),
		}
		if m.Headers != nil {
			opts = append(opts, rabbitmq.WithPublishOptionsHeaders(m.Headers))
		}
		if m.Mandatory {
			opts = append(opts, rabbitmq.WithPublishOptionsMandatory)
		}
		c, err := pub.PublishWithDeferredConfirmWithContext(ctx, m.Body, []string{m.RoutingKey}, opts...)
		if err != nil {
			return fmt.Errorf("%w: publish: %v", ErrUnavailable, err)
		}
		if len(c) != 1 || c[0] == nil {
			return fmt.Errorf("%w: publisher not in confirm mode", ErrUnavailable)
		}
		confs = append(confs, c[0])
	}
	for i, c := range confs {
		ok, err := c.WaitContext(ctx)
		if err != nil {
			return fmt.Errorf("%w: no confirm within %s: %v", ErrUnavailable, p.timeout, err)
		}
		if !ok {
			p.replace(slot, pub)
			return fmt.Errorf("%w: negative confirm (the channel closed or the broker nacked)", ErrUnavailable)
		}
		if ms[i].Mandatory && p.wasReturned(ms[i].MessageID) {
			return ErrUnroutable
		}
	}
	return nil
}

// wasReturned reports (and forgets) whether the broker returned the message with id. A return precedes the
// confirm on the wire, but go-rabbitmq runs the return handler on its own goroutine, so this is a best-effort
// check: callers keep their own view of which routing keys have queues.
func (p *Publisher) wasReturned(id string) bool {
	p.returnsMu.Lock()
	defer p.returnsMu.Unlock()
	if _, ok := p.returned[id]; ok {
		delete(p.returned, id)
		return true
	}
	return false
}

// open opens one confirming channel of the pool.
func (p *Publisher) open() (*rabbitmq.Publisher, error) {
	pub, err := rabbitmq.NewPublisher(p.conn.Conn,
		rabbitmq.WithPublisherOptionsConfirm,
		rabbitmq.WithPublisherOptionsLogger(Logger(p.log)),
	)
	if err != nil {
		return nil, fmt.Errorf("broker: publisher: %w", err)
	}
	pub.NotifyReturn(func(r rabbitmq.Return) {
		p.returnsMu.Lock()
		if len(p.returned) > 10000 { // returns that arrived after their confirm was checked
			clear(p.returned)
		}
		p.returned[r.MessageId] = struct{}{}
		p.returnsMu.Unlock()
	})
	return pub, nil
}

// replace swaps the pool's channel slot, which got a negative confirm, for a new channel, in the background.
// RabbitMQ 3.10 nacks every publish on a channel that first published to a quorum queue within about 0.4 s of
// the queue leader's node dying, until that node is back (measured); a new channel publishes normally.
func (p *Publisher) replace(slot int, old *rabbitmq.Publisher) {
	if !p.fixing[slot].CompareAndSwap(false, true) {
		return
	}
	go func() {
		defer p.fixing[slot].Store(false)
		if p.closed.Load() {
			return
		}
		fresh, err := p.open()
		if err != nil {
			p.log.Warn("replacing a publisher channel after a negative confirm", zap.Error(err))
			return
		}
		if !p.pubs[slot].CompareAndSwap(old, fresh) {
			fresh.Close()
			return
		}
		old.Close()
	}()
}

// Close closes every publisher channel.
func (p *Publisher) Close() {
	p.closed.Store(true)
	for i := range p.pubs {
		if pub := p.pubs[i].Load(); pub != nil {
			pub.Close()
		}
	}
}
