package broker

import (
	"context"
	"fmt"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Queue describes a durable queue and where it is bound.
type Queue struct {
	Name     string
	Args     amqp.Table
	Exchange string // bound to Exchange with RoutingKey when not empty
	Key      string
}

// QueueState is what a passive declare tells about a queue.
type QueueState struct {
	Exists    bool
	Messages  int
	Consumers int
}

// DeclareExchange declares a durable exchange of kind.
func (c *Conn) DeclareExchange(ctx context.Context, name, kind string) error {
	return c.WithChannel(ctx, func(ch *amqp.Channel) error {
		return ch.ExchangeDeclare(name, kind, true, false, false, false, nil)
	})
}

// DeclareQueues declares each durable queue and its binding, in order, on one channel (an idle one of the
// administrative connection's, as probes use: a tenant's creation or deletion then costs the broker no channel
// opened and closed).
func (c *Conn) DeclareQueues(ctx context.Context, qs ...Queue) error {
	names := make([]string, len(qs))
	for i, q := range qs {
		names[i] = q.Name
	}
	return c.withIdleChannel(ctx, names, func(ch *amqp.Channel) error {
		for _, q := range qs {
			if _, err := ch.QueueDeclare(q.Name, true, false, false, false, q.Args); err != nil {
				return err
			}
			if q.Exchange != "" {
				if err := ch.QueueBind(q.Name, q.Key, q.Exchange, false, nil); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

// DeleteQueues deletes the named queues with whatever they hold, on an idle channel as DeclareQueues; a queue
// already gone is not an error.
func (c *Conn) DeleteQueues(ctx context.Context, names ...string) error {
	return c.withIdleChannel(ctx, names, func(ch *amqp.Channel) error {
		for _, n := range names {
			if _, err := ch.QueueDelete(n, false, false, false); err != nil {
				return err
			}
		}
		return nil
	})
}

// UnbindQueue removes queue's binding to exchange with key, on an idle channel as DeclareQueues, waiting for the
// broker's answer at most AnswerTimeout.
func (c *Conn) UnbindQueue(ctx context.Context, queue, key, exchange string) error {
	return c.withIdleChannel(ctx, []string{queue}, func(ch *amqp.Channel) error {
		return ch.QueueUnbind(queue, key, exchange, nil)
	})
}

// InspectQueue passively declares name and reports whether it exists, its ready messages and consumers. It waits
// for the broker's answer as long as ctx allows and at most AnswerTimeout (awaitAnswer).
func (c *Conn) InspectQueue(ctx context.Context, name string) (QueueState, error) {
	if err := c.waiting.check([]string{name}); err != nil {
		return QueueState{}, err
	}
	ch, err := c.probeChannel(ctx)
	if err != nil {
		return QueueState{}, err
	}
	st, abandoned, err := c.declarePassive(ctx, ch, name)
	switch {
	case abandoned:
		return QueueState{}, err
	case err != nil:
		_ = ch.Close()
		return QueueState{}, err
	case !st.Exists:
		return st, nil // the broker closed the channel with it
	}
	c.putProbeChannel(ch)
	return st, nil
}

// probeChannels is the most idle channels the administrative connection keeps for InspectQueue, DeclareQueues
// and DeleteQueues.
const probeChannels = 16

// withIdleChannel runs fn, calls about the named queues, on an idle channel of the administrative connection
// (probeChannel) and keeps the channel for the next caller when fn succeeded; a channel fn failed on is closed
// (the broker closed it already on a channel error, and after any other error its state is not known). It
// waits for fn as long as ctx allows and at most AnswerTimeout (awaitAnswer).
func (c *Conn) withIdleChannel(ctx context.Context, names []string, fn func(ch *amqp.Channel) error) error {
	if err := c.waiting.check(names); err != nil {
		return err
	}
	ch, err := c.probeChannel(ctx)
	if err != nil {
		return err
	}
	abandoned, err := c.awaitAnswer(ctx, names, ch, func() error { return fn(ch) })
	if abandoned {
		return err
	}
	if err != nil {
		_ = ch.Close()
		return err
	}
	c.putProbeChannel(ch)
	return nil
}

// probeChannel returns an open channel of the administrative connection for one passive declare: an idle one
// when there is one, so that a probe costs one round trip, not a channel's open and close as well (a start polls
// its queue until the broker counts its consumer, with many starts at once after a restart).
func (c *Conn) probeChannel(ctx context.Context) (*amqp.Channel, error) {
	c.probeMu.Lock()
	for len(c.probes) > 0 {
		ch := c.probes[len(c.probes)-1]
		c.probes = c.probes[:len(c.probes)-1]
		if !ch.IsClosed() {
			c.probeMu.Unlock()
			return ch, nil
		}
	}
	c.probeMu.Unlock()
	conn, err := c.adminConn(ctx)
	if err != nil {
		return nil, err
	}
	ch, err := conn.Channel()
	if err != nil {
		return nil, fmt.Errorf("%w: open channel: %v", ErrUnavailable, err)
	}
	return ch, nil
}

// putProbeChannel keeps ch for the next probe, or closes it when enough are kept.
func (c *Conn) putProbeChannel(ch *amqp.Channel) {
	c.probeMu.Lock()
	if len(c.probes) < probeChannels && !ch.IsClosed() {
		c.probes = append(c.probes, ch)
		ch = nil
	}
	c.probeMu.Unlock()
	if ch != nil {
		_ = ch.Close()
	}
}
