package messaging

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/acme/msgsvc/platform/broker"
)

// maxEnvelopeItems and maxEnvelopeBytes bound one envelope.
const (
	maxEnvelopeItems = 256
	maxEnvelopeBytes = 1 << 20
)

// errPendingFull refuses a publish at once: too many of the tenant's publishes wait already. Nothing was sent.
var errPendingFull = fmt.Errorf("%w: too many publishes of the tenant wait for RabbitMQ", broker.ErrNotSent)

// coalescers group the messages published to a tenant while an earlier publish of that tenant waits for its
// confirm (group commit). The first message of an idle tenant is sent at once, alone, so an idle service adds
// no latency; messages that arrive while it is in flight wait and go together, as one envelope
// (broker.EncodeEnvelope), as soon as its confirm is back. Each caller is answered with the outcome of the
// publish that carried its message. A busy tenant thus costs RabbitMQ one publish, one confirm, one delivery
// and one ack per envelope instead of per message, and its consumer stores an envelope in one insert.
//
// Without more, a busy tenant's publishers split into two cohorts that take turns: while one cohort's envelope
// waits for its confirm, the other cohort waits for the next, so envelopes carry half the tenant's publishers.
// So when a confirm answers several publishers (the tenant is busy), the next envelope lingers until as many
// messages wait as the tenant had in the air when the confirm came (the answered ones come back), at most
// linger: one cohort, twice the messages per envelope, half the broker and database work per message. A tenant
// whose confirm answered a single publisher with nobody waiting never lingers.
//
// Bounds. A caller waits no longer than its context allows (the service gives each request
// PUBLISH_CONFIRM_TIMEOUT from its start), whatever RabbitMQ does. At most maxPending callers of a tenant wait
// for their envelope; the next one is refused at once (errPendingFull). A caller's message is handed over when
// the publisher, holding a channel and about to write, builds the envelope (broker.Publisher.PublishBuilt):
// under mu, every waiter of the envelope still waiting becomes sent, and one whose context ended before is
// left out. A caller whose context ends while it is still waiting is taken out and its message is never sent
// (the answer wraps broker.ErrNotSent); one whose context ends after the handover is answered that RabbitMQ did
// not confirm in time, and its message may still be stored.
type coalescers struct {
	mu         sync.Mutex
	tenants    map[uuid.UUID]*coalescer
	linger     time.Duration
	maxPending int           // waiting callers per tenant, 0 for no bound
	timeout    time.Duration // a caller's wait when its context has no deadline
	publish    envelopePublisher
	observe    func(items int) // called with the messages of each publish that was sent
	queued     func()          // tests: called after a caller joined its tenant's queue
}

// envelopePublisher publishes to the tenant's queue the items that take returns, calling take once, at the
// handover, just before the write (see broker.Publisher.PublishBuilt); take answers false when nothing is left
// to send. It returns when the publish was confirmed or failed, or ctx ended.
type envelopePublisher func(ctx context.Context, tenantID uuid.UUID, take func() ([]broker.EnvelopeItem, bool)) error

func newCoalescers(linger time.Duration, maxPending int, timeout time.Duration, publish envelopePublisher, observe func(int)) *coalescers {
	return &coalescers{tenants: map[uuid.UUID]*coalescer{}, linger: linger, maxPending: maxPending, timeout: timeout,
		publish: publish, observe: observe}
}

type coalescer struct {
	waiting []*waiter
	want    int           // while lingering: wake the flusher once this many messages wait
	wake    chan struct{} // signalled when want is reached
}

// waiterState is where a waiter's message is; guarded by coalescers.mu.
type waiterState int

const (
	waiting   waiterState = iota // not handed over yet
	sent                         // handed over to the publisher in an envelope
	cancelled                    // its caller gave up before the handover: it is never sent
)

type waiter struct {
	items    []broker.EnvelopeItem
	deadline time.Time
	state    waiterState
	env      *envelope // the envelope being built or sent that took it, nil while queued
	done     chan error
}

// envelope is the waiters one publish takes; guarded by coalescers.mu.
type envelope struct {
	waiters []*waiter
	live    int                // waiters not cancelled
	cancel  context.CancelFunc // ends the publish: every waiter left before the handover
	closed  bool               // the publish returned: a late take sends nothing
}

// send publishes items to the tenant's queue, together with other messages of the tenant published meanwhile,
// and returns once RabbitMQ confirmed (or refused) the publish that carried them, or ctx ended.
func (cs *coalescers) send(ctx context.Context, tenantID uuid.UUID, items []broker.EnvelopeItem) error {
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(cs.timeout)
	}
	w := &waiter{items: items, deadline: deadline, done: make(chan error, 1)}
	cs.mu.Lock()
	c, busy := cs.tenants[tenantID]
	if busy && cs.maxPending > 0 && len(c.waiting) >= cs.maxPending {
		cs.mu.Unlock()
		return errPendingFull
	}
	if !busy {
		c = &coalescer{wake: make(chan struct{}, 1)}
		cs.tenants[tenantID] = c
	}
	c.waiting = append(c.waiting, w)
	if c.want > 0 && len(c.waiting) >= c.want {
		c.want = 0
		select {
		case c.wake <- struct{}{}:
		default:
		}
	}
	cs.mu.Unlock()
	if !busy {
		go cs.flush(tenantID, c)
	}
	if cs.queued != nil {
		cs.queued()
	}
	select {
	case err := <-w.done:
		return err
	case <-ctx.Done():
	}
	cs.mu.Lock()
	if w.state == waiting {
		w.state = cancelled
		if i := slices.Index(c.waiting, w); i >= 0 {
			c.waiting = slices.Delete(c.waiting, i, i+1)
		}
		if e := w.env; e != nil {
			if e.live--; e.live == 0 {
				e.cancel()
			}
		}
		cs.mu.Unlock()
		return fmt.Errorf("%w: %w: the request ended before the message was handed to RabbitMQ: %v",
			broker.ErrUnavailable, broker.ErrNotSent, context.Cause(ctx))
	}
	cs.mu.Unlock()
	select {
	case err := <-w.done:
		return err
	default:
	}
	return fmt.Errorf("%w: no confirm before the request ended: %v", broker.ErrUnavailable, context.Cause(ctx))
}

// flush publishes what waits for the tenant, one publish at a time, until nothing waits.
func (cs *coalescers) flush(tenantID uuid.UUID, c *coalescer) {
	answered := 0 // publishers the last confirm answered
	for {
		cs.mu.Lock()
		if inAir := answered + len(c.waiting); answered > 1 && len(c.waiting) < inAir && cs.linger > 0 {
			c.want = inAir
			cs.mu.Unlock()
			cs.lingerFor(c)
			cs.mu.Lock()
			c.want = 0
			select { // a wake sent as the linger ended must not cut the next one short
			case <-c.wake:
			default:
			}
		}
		n, items, size := 0, 0, 0
		for n < len(c.waiting) {
			w := c.waiting[n]
			if n > 0 && (items+len(w.items) > maxEnvelopeItems || size > maxEnvelopeBytes) {
				break
			}
			n++
			items += len(w.items)
			for _, it := range w.items {
				size += len(it.Payload)
			}
		}
		if n == 0 {
			delete(cs.tenants, tenantID)
			cs.mu.Unlock()
			return
		}
		e := &envelope{waiters: slices.Clone(c.waiting[:n]), live: n}
		c.waiting = slices.Delete(c.waiting, 0, n)
		deadline := time.Time{}
		for _, w := range e.waiters {
			w.env = e
			if w.deadline.After(deadline) {
				deadline = w.deadline
			}
		}
		// The publish may take until the last of its callers gives up, and ends sooner when all of them gave
		// up before the handover.
		ctx, cancel := context.WithDeadline(context.Background(), deadline)
		e.cancel = cancel
		cs.mu.Unlock()

		err := cs.publish(ctx, tenantID, func() ([]broker.EnvelopeItem, bool) { return cs.take(e) })
		cancel()

		cs.mu.Lock()
		e.closed = true
		answered = 0
		for _, w := range e.waiters {
			switch w.state {
			case sent:
				w.done <- err
				answered++
			case waiting: // the publish failed before the handover (blocked, closed): nothing of it was sent
				// (take runs once and hands over every waiter still waiting, so no waiter of e was sent).
				w.state = cancelled
				notSent := err
				if !isNotSent(err) {
					notSent = fmt.Errorf("%w: %w: %v", broker.ErrUnavailable, broker.ErrNotSent, err)
				}
				w.done <- notSent
			}
		}
		cs.mu.Unlock()
	}
}

// take hands e's waiters that are still waiting over to the publisher and returns their items; false when none
// is left (or the publish already returned).
func (cs *coalescers) take(e *envelope) ([]broker.EnvelopeItem, bool) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if e.closed {
		return nil, false
	}
	var all []broker.EnvelopeItem
	for _, w := range e.waiters {
		if w.state != waiting {
			continue
		}
		w.state = sent
		if all == nil {
			all = w.items
		} else {
			all = append(slices.Clip(all), w.items...)
		}
	}
	if len(all) == 0 {
		return nil, false
	}
	if cs.observe != nil {
		cs.observe(len(all))
	}
	return all, true
}

// lingerFor waits until c.want messages wait or the linger passed.
func (cs *coalescers) lingerFor(c *coalescer) {
	t := time.NewTimer(cs.linger)
	defer t.Stop()
	select {
	case <-c.wake:
	case <-t.C:
	}
}

// publishEnvelope publishes the items take returns to the tenant's queue: the message alone, or an envelope.
func (s *Service) publishEnvelope(ctx context.Context, tenantID uuid.UUID, take func() ([]broker.EnvelopeItem, bool)) error {
	return s.publisher.PublishBuilt(ctx, func() (broker.Message, bool) {
		items, ok := take()
		if !ok {
			return broker.Message{}, false
		}
		return s.message(tenantID, items), true
	})
}

// message is the AMQP message carrying items to the tenant's queue: the message itself when there is one, an
// envelope when there are several.
func (s *Service) message(tenantID uuid.UUID, items []broker.EnvelopeItem) broker.Message {
	if len(items) == 1 {
		return broker.Message{Exchange: s.exchange, RoutingKey: tenantID.String(), MessageID: items[0].ID.String(),
			Mandatory: true, Headers: map[string]any{HeaderCreatedAt: items[0].CreatedAt}, Body: items[0].Payload}
	}
	return broker.Message{Exchange: s.exchange, RoutingKey: tenantID.String(), MessageID: uuid.Must(uuid.NewV7()).String(),
		Mandatory: true, Headers: map[string]any{HeaderCreatedAt: items[0].CreatedAt, broker.HeaderEnvelope: int64(len(items))},
		Body: broker.EncodeEnvelope(items)}
}

// isNotSent reports whether err says the message never reached RabbitMQ (a retry cannot make a duplicate).
func isNotSent(err error) bool { return errors.Is(err, broker.ErrNotSent) }
