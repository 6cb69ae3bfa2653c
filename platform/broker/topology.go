package broker

import (
	"context"
	"errors"
	"fmt"
	"slices"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Queue describes a durable queue and where it is bound.
type Queue struct {
	Name     string
	Args     amqp.Table
	Exchange string // bound to Exchange with RoutingKey when not empty
	Key      string
	// BindOnly binds a queue declared elsewhere (at start) without declaring it again: a declare of an existing
	// queue asks the queue's process for its figures and waits for it, a bind does not. A queue found missing is
	// declared, then bound (DeclareQueues).
	BindOnly bool
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
// opened and closed). It waits for each queue's answer on its own (withIdleChannel): a queue the broker does not
// answer about is the only one marked unanswered, never the shared dead-letter queue a creation names with it.
func (c *Conn) DeclareQueues(ctx context.Context, qs ...Queue) error {
	err := c.declareQueues(ctx, qs)
	var ae *amqp.Error
	if !errors.As(err, &ae) || ae.Code != amqp.NotFound || !slices.ContainsFunc(qs, func(q Queue) bool { return q.BindOnly }) {
		return err
	}
	// A queue to bind only is missing (deleted by hand): declare every queue, in the same order.
	again := slices.Clone(qs)
	for i := range again {
		again[i].BindOnly = false
	}
	return c.declareQueues(ctx, again)
}

func (c *Conn) declareQueues(ctx context.Context, qs []Queue) error {
	steps := make([]queueCall, len(qs))
	for i, q := range qs {
		steps[i] = queueCall{q.Name, func(ch *amqp.Channel) error {
			if !q.BindOnly {
				if _, err := ch.QueueDeclare(q.Name, true, false, false, false, q.Args); err != nil {
					return err
				}
			}
			if q.Exchange != "" {
				return ch.QueueBind(q.Name, q.Key, q.Exchange, false, nil)
			}
			return nil
		}}
	}
	return c.withIdleChannel(ctx, steps...)
}

// DeleteQueues deletes the named queues with whatever they hold, on an idle channel as DeclareQueues; a queue
// already gone is not an error.
func (c *Conn) DeleteQueues(ctx context.Context, names ...string) error {
	steps := make([]queueCall, len(names))
	for i, n := range names {
		steps[i] = queueCall{n, func(ch *amqp.Channel) error {
			_, err := ch.QueueDelete(n, false, false, false)
			return err
		}}
	}
	return c.withIdleChannel(ctx, steps...)
}

// UnbindQueue removes queue's binding to exchange with key, on an idle channel as DeclareQueues, waiting for the
// broker's answer at most AnswerTimeout.
func (c *Conn) UnbindQueue(ctx context.Context, queue, key, exchange string) error {
	return c.withIdleChannel(ctx, queueCall{queue, func(ch *amqp.Channel) error {
		return ch.QueueUnbind(queue, key, exchange, nil)
	}})
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

// queueCall is one or more synchronous methods about one queue, run on a channel of withIdleChannel's.
type queueCall struct {
	queue string
	fn    func(ch *amqp.Channel) error
}

// withIdleChannel runs calls, in order, on an idle channel of the administrative connection (probeChannel) and
// keeps the channel for the next caller when all succeeded; a channel a call failed on is closed (the broker
// closed it already on a channel error, and after any other error its state is not known). It fails at once when
// a call about one of the queues is still unanswered, and waits for each call on its own as long as ctx allows and
// at most AnswerTimeout (awaitAnswer). A call given up on marks its own queue alone: the calls after it are not
// sent, and those before it were answered. Waiting for them together marked every queue they named, and one
// tenant queue whose declare hung refused every creation, since each names the shared dead-letter queue.
func (c *Conn) withIdleChannel(ctx context.Context, calls ...queueCall) error {
	names := make([]string, len(calls))
	for i, call := range calls {
		names[i] = call.queue
	}
	if err := c.waiting.check(names); err != nil {
		return err
	}
	ch, err := c.probeChannel(ctx)
	if err != nil {
		return err
	}
	for _, call := range calls {
		abandoned, err := c.awaitAnswer(ctx, call.queue, ch, func() error { return call.fn(ch) })
		if abandoned {
			return err
		}
		if err != nil {
			_ = ch.Close()
			return err
		}
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
