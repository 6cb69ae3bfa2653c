package broker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/zap"
)

// ChannelHeadroom is the share of a connection's negotiated channel_max the consumer pool leaves unused, so that
// channels being closed and reopened (a consumer's restart, a broker reconnect) never hit the ceiling.
const ChannelHeadroom = 0.1

// ConsumerPool spreads consumers over AMQP connections and supervises them: each consumer takes one channel slot
// on a connection with a free one, and a new connection opens when every open one has PerConn slots taken. So
// the number of tenants one replica consumes has no per-connection ceiling (RabbitMQ's channel_max, 2,047 by
// default).
//
// The pool owns reconnects: a pooled connection that drops is retired at once (Lease.Lost is closed for each of its
// consumers, which their owner closes and starts again on another lease, paced), and a new one is dialled when a
// consumer next needs a slot, with a backoff after a failed dial. The connections are plain amqp091 ones, which never
// reconnect, so the consumers of a dropped connection never re-consume on their own, all at once; and a consumer on
// them costs no goroutine of a reconnecting library (go-rabbitmq's consumer kept four per tenant, idle or not, for a
// reconnect the pool never let run). A consumer that may itself make its connection drop (RabbitMQ 3.10 closes the
// whole connection on a consume of a quorum queue that is not running yet) takes an isolated lease, on a connection
// of its own. It is safe for concurrent use.
type ConsumerPool struct {
	perConn   int
	name      string
	urls      []string
	reconnect time.Duration
	log       *zap.Logger

	mu      sync.Mutex // guards conns, closed, dialled and the dial backoff; never held while dialling
	conns   []*pooledConn
	closed  bool
	dialled int // connections dialled so far, for their names

	dialMu      sync.Mutex // one dial at a time
	dialErr     error      // the last dial's failure, answered until retryAt
	retryAt     time.Time
	dialBackoff time.Duration

	lost      atomic.Int64 // shared connections lost (not closed by the pool)
	lostIso   atomic.Int64 // isolated connections lost
	dials     atomic.Int64 // connections dialled successfully
	isolatedN atomic.Int64 // isolated connections open now
}

type pooledConn struct {
	conn     *amqp.Connection
	name     string
	used     int
	isolated bool          // one consumer's own connection, closed when it is released
	lost     chan struct{} // closed when the connection dropped or was closed
	// lostCtx is cancelled when lost is closed: context.AfterFunc on it runs a lease's callback on the loss
	// without a goroutine per lease waiting for it.
	lostCtx  context.Context
	markLost context.CancelFunc
	gone     bool // lost was closed; guarded by the pool's mu
}

// newPooledConn returns a connection's pool entry, not dialled yet.
func newPooledConn(name string, isolated bool) *pooledConn {
	pc := &pooledConn{name: name, isolated: isolated, lost: make(chan struct{})}
	pc.lostCtx, pc.markLost = context.WithCancel(context.Background())
	return pc
}

// closeLost tells the connection's leases that it is gone; call it once.
func (pc *pooledConn) closeLost() {
	close(pc.lost)
	pc.markLost()
}

// Lease is one channel slot on a pooled connection, held by one consumer until Release. When the connection
// drops, Lost is closed: the consumer must be closed (it will not consume again by itself) and started again on
// a new lease.
type Lease struct {
	// Conn is the connection the consumer opens its channel on.
	Conn *amqp.Connection
	pool *ConsumerPool
	pc   *pooledConn
	once sync.Once
}

// Lost is closed when the lease's connection dropped (or the pool closed).
func (l *Lease) Lost() <-chan struct{} { return l.pc.lost }

// AfterLost arranges for f to run in its own goroutine once the lease's connection dropped (or the pool closed),
// like context.AfterFunc: nothing waits for it meanwhile, so an idle consumer's watch costs no goroutine. stop
// cancels it and reports whether it did so before f started.
func (l *Lease) AfterLost(f func()) (stop func() bool) { return context.AfterFunc(l.pc.lostCtx, f) }

// Isolated reports whether the lease has a connection of its own.
func (l *Lease) Isolated() bool { return l.pc.isolated }

// Release returns the slot to the pool; call it after the consumer closed. It may be called more than once.
func (l *Lease) Release() {
	l.once.Do(func() {
		l.pool.mu.Lock()
		l.pc.used--
		retire := l.pc.isolated && l.pc.used == 0 && !l.pc.gone
		if retire {
			l.pool.removeLocked(l.pc)
		}
		l.pool.mu.Unlock()
		if retire {
			l.pool.retire(l.pc)
		}
	})
}

// PoolChannelsPerConn returns how many consumer channels one connection carries: the configured number when
// it is positive and fits, otherwise the negotiated channelMax less ChannelHeadroom.
func PoolChannelsPerConn(channelMax, configured int) int {
	limit := int(float64(channelMax) * (1 - ChannelHeadroom))
	if limit < 1 {
		limit = 1
	}
	if configured > 0 && configured < limit {
		return configured
	}
	return limit
}

// NewConsumerPool returns a pool that opens connections named name-consumer-N to the brokers at opts, with
// perConn consumer channels each. It opens the first connection at once, so that an unreachable broker fails
// the start.
func NewConsumerPool(opts Options, perConn int, log *zap.Logger) (*ConsumerPool, error) {
	p := &ConsumerPool{perConn: max(perConn, 1), name: opts.ConnectionName, urls: opts.URLs,
		reconnect: opts.ReconnectInterval, log: log.Named("broker.pool")}
	if err := p.grow(); err != nil {
		return nil, err
	}
	return p, nil
}

// grow dials one more shared connection unless one with a free slot exists (another caller may have grown the
// pool meanwhile).
func (p *ConsumerPool) grow() error {
	_, err := p.dial(false)
	return err
}

// dial opens one more connection, shared or isolated. Dials are serialised, and p.mu is not held while one
// runs, so releases and acquires on the open connections go on. After a failed dial, dials fail at once with
// its error until a backoff passed (AMQP_RECONNECT_INTERVAL, doubling up to 16 times it): the consumers of a
// dropped connection asking for new slots while the broker is down cost one dial per backoff, not one each.
func (p *ConsumerPool) dial(isolated bool) (*pooledConn, error) {
	p.dialMu.Lock()
	defer p.dialMu.Unlock()
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, fmt.Errorf("%w: consumer pool closed", ErrUnavailable)
	}
	if !isolated && p.free() != nil {
		p.mu.Unlock()
		return nil, nil
	}
	if time.Now().Before(p.retryAt) {
		err := p.dialErr
		p.mu.Unlock()
		return nil, err
	}
	p.dialled++
	name := fmt.Sprintf("%s-consumer-%d", p.name, p.dialled)
	if isolated {
		name = fmt.Sprintf("%s-consumer-isolated-%d", p.name, p.dialled)
	}
	p.mu.Unlock()
	pc := newPooledConn(name, isolated)
	c, err := dialPooled(p.urls, name, func() { p.lose(pc) })
	p.mu.Lock()
	defer p.mu.Unlock()
	if err != nil {
		p.dialBackoff = min(max(2*p.dialBackoff, p.reconnect), 16*p.reconnect)
		p.retryAt = time.Now().Add(p.dialBackoff)
		p.dialErr = fmt.Errorf("%w: consumer connection %s: %v", ErrUnavailable, name, err)
		return nil, p.dialErr
	}
	p.dialBackoff, p.retryAt, p.dialErr = 0, time.Time{}, nil
	p.dials.Add(1)
	pc.conn = c
	if p.closed || pc.gone {
		go func() { _ = c.CloseDeadline(time.Now().Add(closeWait)) }()
		return nil, fmt.Errorf("%w: consumer connection %s closed as it opened", ErrUnavailable, name)
	}
	p.conns = append(p.conns, pc)
	if isolated {
		p.isolatedN.Add(1)
		p.log.Info("isolated consumer connection opened", zap.String("connection", name))
	} else {
		p.log.Info("consumer connection opened", zap.String("connection", name), zap.Int("connections", len(p.conns)),
			zap.Int("channels_per_connection", p.perConn))
	}
	return pc, nil
}

// lose retires a connection that dropped: no new lease goes to it, and its leases' Lost is closed. It runs on
// amqp091's shutdown, so it does not block.
func (p *ConsumerPool) lose(pc *pooledConn) {
	p.mu.Lock()
	if pc.gone {
		p.mu.Unlock()
		return
	}
	if pc.conn == nil {
		// Still being dialled: the dial sees gone and fails; nothing holds a lease on it.
		pc.gone = true
		p.mu.Unlock()
		return
	}
	p.removeLocked(pc)
	closed, used := p.closed, pc.used
	p.mu.Unlock()
	if !closed {
		if pc.isolated {
			p.lostIso.Add(1)
		} else {
			p.lost.Add(1)
		}
		p.log.Warn("consumer connection lost; its consumers start again on another one, paced",
			zap.String("connection", pc.name), zap.Int("consumers", used))
	}
	p.retire(pc)
}

// removeLocked takes pc out of the pool and marks it gone; p.mu must be held.
func (p *ConsumerPool) removeLocked(pc *pooledConn) {
	pc.gone = true
	for i, c := range p.conns {
		if c == pc {
			p.conns = append(p.conns[:i:i], p.conns[i+1:]...)
			if pc.isolated {
				p.isolatedN.Add(-1)
			}
			break
		}
	}
}

// retire closes a connection taken out of the pool (removeLocked) and tells its leases.
func (p *ConsumerPool) retire(pc *pooledConn) {
	pc.closeLost()
	go func() {
		if pc.conn != nil {
			_ = pc.conn.CloseDeadline(time.Now().Add(closeWait))
		}
	}()
}

// free returns the first connection with a free slot, or nil; p.mu must be held.
func (p *ConsumerPool) free() *pooledConn {
	for _, c := range p.conns {
		if !c.isolated && c.used < p.perConn {
			return c
		}
	}
	return nil
}

// Acquire takes a channel slot on the first connection with one free, opening a new connection when none has.
func (p *ConsumerPool) Acquire(ctx context.Context) (*Lease, error) {
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, fmt.Errorf("%w: consumer pool closed", ErrUnavailable)
		}
		if pc := p.free(); pc != nil {
			pc.used++
			p.mu.Unlock()
			return &Lease{Conn: pc.conn, pool: p, pc: pc}, nil
		}
		p.mu.Unlock()
		if err := p.grow(); err != nil {
			return nil, err
		}
	}
}

// AcquireIsolated takes the one slot of a new connection of its own, for a consumer that may make its
// connection drop; the connection closes when the lease is released.
func (p *ConsumerPool) AcquireIsolated(ctx context.Context) (*Lease, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	pc, err := p.dial(true)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if pc.gone {
		return nil, fmt.Errorf("%w: consumer connection %s lost as it opened", ErrUnavailable, pc.name)
	}
	pc.used++
	return &Lease{Conn: pc.conn, pool: p, pc: pc}, nil
}

// Lost returns how many shared connections dropped (a broker restart, a connection closed by an operator or by
// the broker) since the pool opened.
func (p *ConsumerPool) Lost() int64 { return p.lost.Load() }

// LostIsolated returns how many isolated connections dropped since the pool opened.
func (p *ConsumerPool) LostIsolated() int64 { return p.lostIso.Load() }

// Dials returns how many connections the pool opened, shared and isolated.
func (p *ConsumerPool) Dials() int64 { return p.dials.Load() }

// Isolated returns how many isolated connections are open now.
func (p *ConsumerPool) Isolated() int64 { return p.isolatedN.Load() }

// Stats returns the open connections and the consumer channels in use over them.
func (p *ConsumerPool) Stats() (connections, channels int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		channels += c.used
	}
	return len(p.conns), channels
}

// PerConn is the most consumer channels one pooled connection carries.
func (p *ConsumerPool) PerConn() int { return p.perConn }

// Close closes every connection of the pool; close the consumers first. A connection whose close RabbitMQ does
// not answer within closeWait (a channel on a queue that does not answer holds the answer) is dropped: the error
// is logged, not returned, since the connection is gone either way.
func (p *ConsumerPool) Close() error {
	p.mu.Lock()
	p.closed = true
	conns := p.conns
	p.conns = nil
	for _, c := range conns {
		c.gone = true
	}
	p.mu.Unlock()
	for _, c := range conns {
		c.closeLost()
		if err := c.conn.CloseDeadline(time.Now().Add(closeWait)); err != nil && !errors.Is(err, amqp.ErrClosed) {
			p.log.Warn("consumer connection closed without RabbitMQ's answer", zap.String("connection", c.name), zap.Error(err))
		}
	}
	return nil
}

// dialPooled opens a plain amqp091 connection named name to the first of urls that answers, in order; onLost is
// called once its socket closes, whatever closed it.
func dialPooled(urls []string, name string, onLost func()) (*amqp.Connection, error) {
	c, err := dialFirst(context.Background(), urls, amqp.Config{Properties: amqp.Table{"connection_name": name}},
		func(c net.Conn) net.Conn { return &watchedConn{Conn: newCombiningConn(c), onClose: onLost} })
	if err != nil {
		return nil, fmt.Errorf("broker: connect: %w", err)
	}
	return c, nil
}

// watchedConn is a connection's socket that tells when it closes: amqp091 closes it when the connection shuts
// down, for whatever reason (the broker closed it, the network failed, the client closed it).
type watchedConn struct {
	net.Conn
	onClose func()
	once    sync.Once
}

func (c *watchedConn) Close() error {
	c.once.Do(c.onClose)
	return c.Conn.Close()
}
