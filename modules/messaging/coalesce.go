package messaging

import (
	"context"
	"fmt"
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
type coalescers struct {
	mu      sync.Mutex
	tenants map[uuid.UUID]*coalescer
	linger  time.Duration
}

type coalescer struct {
	waiting []*waiter
	want    int           // while lingering: wake the flusher once this many messages wait
	wake    chan struct{} // signalled when want is reached
}

type waiter struct {
	items []broker.EnvelopeItem
	done  chan error
}

// send publishes items to the tenant's queue, together with other messages of the tenant published meanwhile,
// and returns once RabbitMQ confirmed (or refused) the publish that carried them.
func (s *Service) send(ctx context.Context, tenantID uuid.UUID, items []broker.EnvelopeItem) error {
	w := &waiter{items: items, done: make(chan error, 1)}
	s.coal.mu.Lock()
	c, busy := s.coal.tenants[tenantID]
	if !busy {
		c = &coalescer{wake: make(chan struct{}, 1)}
		s.coal.tenants[tenantID] = c
	}
	c.waiting = append(c.waiting, w)
	if c.want > 0 && len(c.waiting) >= c.want {
		c.want = 0
		select {
		case c.wake <- struct{}{}:
		default:
		}
	}
	s.coal.mu.Unlock()
	if !busy {
		go s.flush(tenantID, c)
	}
	select {
	case err := <-w.done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("%w: %v", broker.ErrUnavailable, context.Cause(ctx))
	}
}

// flush publishes what waits for the tenant, one publish at a time, until nothing waits.
func (s *Service) flush(tenantID uuid.UUID, c *coalescer) {
	answered := 0 // publishers the last confirm answered
	for {
		s.coal.mu.Lock()
		if inAir := answered + len(c.waiting); answered > 1 && len(c.waiting) < inAir && s.coal.linger > 0 {
			c.want = inAir
			s.coal.mu.Unlock()
			s.lingerFor(c)
			s.coal.mu.Lock()
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
		batch := c.waiting[:n:n]
		c.waiting = c.waiting[n:]
		if n == 0 {
			delete(s.coal.tenants, tenantID)
			s.coal.mu.Unlock()
			return
		}
		s.coal.mu.Unlock()
		all := batch[0].items
		if len(batch) > 1 {
			all = make([]broker.EnvelopeItem, 0, items)
			for _, w := range batch {
				all = append(all, w.items...)
			}
		}
		err := s.publisher.Publish(context.Background(), s.message(tenantID, all))
		s.metrics.perPublish.Observe(float64(len(all)))
		for _, w := range batch {
			w.done <- err
		}
		answered = len(batch)
	}
}

// lingerFor waits until c.want messages wait or the linger passed.
func (s *Service) lingerFor(c *coalescer) {
	t := time.NewTimer(s.coal.linger)
	defer t.Stop()
	select {
	case <-c.wake:
	case <-t.C:
	}
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
