package broker

import (
	"context"
	"errors"

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

// DeclareQueues declares each durable queue and its binding, in order, on one channel.
func (c *Conn) DeclareQueues(ctx context.Context, qs ...Queue) error {
	return c.WithChannel(ctx, func(ch *amqp.Channel) error {
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

// DeleteQueues deletes the named queues with whatever they hold; a queue already gone is not an error.
func (c *Conn) DeleteQueues(ctx context.Context, names ...string) error {
	return c.WithChannel(ctx, func(ch *amqp.Channel) error {
		for _, n := range names {
			if _, err := ch.QueueDelete(n, false, false, false); err != nil {
				return err
			}
		}
		return nil
	})
}

// InspectQueue passively declares name and reports whether it exists, its ready messages and consumers.
func (c *Conn) InspectQueue(ctx context.Context, name string) (QueueState, error) {
	var st QueueState
	err := c.WithChannel(ctx, func(ch *amqp.Channel) error {
		q, err := ch.QueueDeclarePassive(name, true, false, false, false, nil)
		var ae *amqp.Error
		if errors.As(err, &ae) && ae.Code == amqp.NotFound {
			return nil
		}
		if err != nil {
			return err
		}
		st = QueueState{Exists: true, Messages: q.Messages, Consumers: q.Consumers}
		return nil
	})
	return st, err
}
