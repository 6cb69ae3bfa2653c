package broker

import (
	"context"
	"fmt"
	"sync"
	"time"

	rabbitmq "github.com/wagslane/go-rabbitmq"
	"go.uber.org/zap"
)

// ChannelHeadroom is the share of a connection's negotiated channel_max the consumer pool leaves unused, so that
// channels being closed and reopened (a consumer's restart, a broker reconnect) never hit the ceiling.
const ChannelHeadroom = 0.1

// ConsumerPool spreads consumers over reconnecting AMQP connections: each consumer takes one channel slot on a
// connection with a free one, and a new connection opens when every open one has PerConn slots taken. So the
// number of tenants one replica consumes has no per-connection ceiling (RabbitMQ's channel_max, 2,047 by
// default). Connections are never closed before the pool is; a reconnecting connection keeps its slots, as
// go-rabbitmq reopens their channels. It is safe for concurrent use.
type ConsumerPool struct {
	perConn   int
	name      string
	urls      []string
	reconnect time.Duration
	log       *zap.Logger

	mu     sync.Mutex // guards conns and closed; never held while dialling
	conns  []*pooledConn
	closed bool

	dialMu sync.Mutex // one dial at a time
}

type pooledConn struct {
	conn *rabbitmq.Conn
	used int
}

// Lease is one channel slot on a pooled connection, held by one consumer until Release.
type Lease struct {
	// Conn is the connection the consumer opens its channel on.
	Conn *rabbitmq.Conn
	pool *ConsumerPool
	pc   *pooledConn
	once sync.Once
}

// Release returns the slot to the pool; call it after the consumer closed. It may be called more than once.
func (l *Lease) Release() {
	l.once.Do(func() {
		l.pool.mu.Lock()
		l.pc.used--
		l.pool.mu.Unlock()
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

// grow dials one more connection unless one with a free slot exists (another caller may have grown the pool
// meanwhile). Dials are serialised, and p.mu is not held while one runs, so releases and acquires on the open
// connections go on.
func (p *ConsumerPool) grow() error {
	p.dialMu.Lock()
	defer p.dialMu.Unlock()
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return fmt.Errorf("%w: consumer pool closed", ErrUnavailable)
	}
	if p.free() != nil {
		p.mu.Unlock()
		return nil
	}
	name := fmt.Sprintf("%s-consumer-%d", p.name, len(p.conns)+1)
	p.mu.Unlock()
	c, err := dialReconnecting(p.urls, name, p.reconnect, p.log)
	if err != nil {
		return fmt.Errorf("%w: consumer connection %s: %v", ErrUnavailable, name, err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		_ = c.Close()
		return fmt.Errorf("%w: consumer pool closed", ErrUnavailable)
	}
	p.conns = append(p.conns, &pooledConn{conn: c})
	p.log.Info("consumer connection opened", zap.String("connection", name), zap.Int("connections", len(p.conns)),
		zap.Int("channels_per_connection", p.perConn))
	return nil
}

// free returns the first connection with a free slot, or nil; p.mu must be held.
func (p *ConsumerPool) free() *pooledConn {
	for _, c := range p.conns {
		if c.used < p.perConn {
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

// Close closes every connection of the pool; close the consumers first.
func (p *ConsumerPool) Close() error {
	p.mu.Lock()
	p.closed = true
	conns := p.conns
	p.conns = nil
	p.mu.Unlock()
	var first error
	for _, c := range conns {
		if err := c.conn.Close(); err != nil && first == nil {
			first = err
		}
	}
	return first
}
