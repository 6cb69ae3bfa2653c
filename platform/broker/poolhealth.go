package broker

import (
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// PoolHealth watches whether the consumer pool's connections are up, so that a replica that cannot keep them up
// can give its tenants to the others (cluster.Membership stops heartbeating after REPLICA_BROKER_GRACE).
//
// A sweep asks every pooled connection whether it is closed every few hundred milliseconds: a connection that
// is closed (lost; the pool dials a new one when a consumer needs it) is down, as is a pool whose last dial
// failed. A sweep that has not finished within stuckAfter (a dial that hangs) counts as down too, since the
// sweep began. Nothing is learned from log text.
type PoolHealth struct {
	closed     func() bool // whether a pooled connection is closed; may block during a reconnect's dial
	now        func() time.Time
	every      time.Duration
	stuckAfter time.Duration

	mu        sync.Mutex
	downSince time.Time // zero while every connection was open at the last sweep
	sweepFrom time.Time // when the sweep in progress began; zero when none runs

	stop chan struct{}
	done chan struct{}
}

// NewPoolHealth returns a watcher of p's connections sweeping every every; Start starts it.
func NewPoolHealth(p *ConsumerPool, every time.Duration) *PoolHealth {
	return newPoolHealth(p.anyClosed, every, time.Now)
}

func newPoolHealth(closed func() bool, every time.Duration, now func() time.Time) *PoolHealth {
	return &PoolHealth{closed: closed, now: now, every: every, stuckAfter: max(2*every, time.Second),
		stop: make(chan struct{}), done: make(chan struct{})}
}

// Start starts sweeping; Stop ends it.
func (h *PoolHealth) Start() {
	go h.run()
}

// Stop stops sweeping. It waits a second at most for a sweep in progress (one stuck in a reconnect's dial ends
// with the dial).
func (h *PoolHealth) Stop() {
	close(h.stop)
	select {
	case <-h.done:
	case <-time.After(time.Second):
	}
}

func (h *PoolHealth) run() {
	defer close(h.done)
	t := time.NewTicker(h.every)
	defer t.Stop()
	for {
		h.sweep()
		select {
		case <-h.stop:
			return
		case <-t.C:
		}
	}
}

// sweep asks each pooled connection whether it is closed.
func (h *PoolHealth) sweep() {
	began := h.now()
	h.mu.Lock()
	h.sweepFrom = began
	h.mu.Unlock()
	closed := h.closed()
	h.mu.Lock()
	defer h.mu.Unlock()
	h.sweepFrom = time.Time{}
	switch {
	case !closed:
		h.downSince = time.Time{}
	case h.downSince.IsZero():
		h.downSince = began
	}
}

// Down reports whether a consumer connection is down (closed, or its check hangs in a reconnect), and since
// when. It never blocks on the broker.
func (h *PoolHealth) Down() (since time.Time, down bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	since, down = h.downSince, !h.downSince.IsZero()
	if !h.sweepFrom.IsZero() && h.now().Sub(h.sweepFrom) >= h.stuckAfter && (!down || h.sweepFrom.Before(since)) {
		since, down = h.sweepFrom, true
	}
	return since, down
}

// anyClosed reports whether the pool cannot keep its connections up: its last dial failed (the broker
// unreachable, or refusing this replica's user) and no dial succeeded since, or a pooled connection is closed.
// The pool retires a dropped connection at once and dials only when a consumer needs a slot, so after a failed
// dial a sweep whose backoff passed dials once itself: a replica whose consumers all stopped (it gave its
// tenants away) still learns that the broker is back.
func (p *ConsumerPool) anyClosed() bool {
	p.mu.Lock()
	failing, retry := p.dialErr != nil, !time.Now().Before(p.retryAt)
	p.mu.Unlock()
	if failing {
		if !retry {
			return true
		}
		// A new connection joins the pool, or one with a free slot exists and is checked below.
		if _, err := p.dial(false); err != nil {
			return true
		}
	}
	p.mu.Lock()
	conns := make([]*amqp.Connection, 0, len(p.conns))
	for _, c := range p.conns {
		if c.conn != nil {
			conns = append(conns, c.conn)
		}
	}
	p.mu.Unlock()
	for _, c := range conns {
		if c.IsClosed() {
			return true
		}
	}
	return false
}
