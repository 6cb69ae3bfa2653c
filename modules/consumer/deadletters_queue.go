package consumer

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"
	rabbitmq "github.com/wagslane/go-rabbitmq"
	"go.uber.org/zap"

	"github.com/acme/msgsvc/platform/broker"
)

// DeadLetterExchange is the exchange the tenants' queues dead-letter to (x-dead-letter-exchange).
func DeadLetterExchange(exchange string) string { return exchange + ".dlx" }

// DeadQueueName is the one queue, shared by every tenant, that receives what the broker dead-letters by itself;
// the runtime moves its messages into the dead_letters table.
func DeadQueueName(exchange string) string { return exchange + ".dead" }

// brokerDeliveryLimit is the x-delivery-limit of quorum queues: only a backstop far above the service's own
// limit, so that the broker never dead-letters a message that did not fail (RabbitMQ 4.0–4.2 count every return).
func brokerDeliveryLimit(serviceLimit int) int64 { return int64(max(1000, 10*serviceLimit)) }

// deadQueue is the shared dead-letter queue's declaration.
func (o Options) deadQueue() broker.Queue {
	args := amqp.Table{"x-queue-type": o.QueueType}
	if o.QueueType == "quorum" {
		// RabbitMQ 4.0–4.2 give quorum queues a default limit of 20 returns; this queue has no dead-letter target.
		args["x-delivery-limit"] = int64(1_000_000)
	}
	return broker.Queue{Name: DeadQueueName(o.Exchange), Args: args}
}

// deadBinding binds the shared dead-letter queue to the dead-letter exchange for a tenant's routing key. It binds
// only (the runtime declared the queue at start, and declares it again only when it is missing): a creation then
// never waits on the shared queue's process, which a backlog of dead letters or a frozen node can keep busy.
func (o Options) deadBinding(id uuid.UUID) broker.Queue {
	q := o.deadQueue()
	q.Exchange, q.Key, q.BindOnly = DeadLetterExchange(o.Exchange), id.String(), true
	return q
}

// brokerDeadRows describes a message the broker dead-lettered by itself (or an older service version put in a
// per-tenant dead-letter queue), from its x-death and headers: one row, or one per message of an envelope; ok
// is false when no tenant can be told.
func brokerDeadRows(d amqp.Delivery) ([]deadRow, bool) {
	tenant, err := uuid.Parse(d.RoutingKey)
	reason, queue := "rejected", ""
	count := int64(0)
	if deaths, ok := d.Headers["x-death"].([]any); ok && len(deaths) > 0 {
		if death, ok := deaths[0].(amqp.Table); ok {
			if r, ok := death["reason"].(string); ok {
				reason = r
			}
			queue, _ = death["queue"].(string)
			count, _ = death["count"].(int64)
		}
	}
	if err != nil {
		id, ok := parseQueueName(queue)
		if !ok {
			return nil, false
		}
		tenant = id
	}
	lastErr := fmt.Sprintf("dead-lettered by RabbitMQ (%s) from queue %s", reason, queue)
	if r, ok := d.Headers["x-dead-letter-reason"].(string); ok { // older service versions
		reason = r
		lastErr, _ = d.Headers["x-last-error"].(string)
	}
	n := attempts(d)
	if reason == "delivery_limit" || reason == "rejected" {
		n = max(n, int(count), int(deliveryCount(d.Headers)))
	}
	return rowsFor(tenant, d, reason, lastErr, n), true
}

// deliveryCount is how often the broker delivered a message before (quorum queues count it in x-delivery-count).
func deliveryCount(h amqp.Table) int64 {
	switch v := h["x-delivery-count"].(type) {
	case int64:
		return v
	case int32:
		return int64(v)
	}
	return 0
}

// Start declares the shared dead-letter queue, binds it for every tenant, consumes it, and moves what older
// versions left in per-tenant dead-letter queues into the table (in the background).
func (s *DeadLetters) Start(ctx context.Context) error {
	if err := broker.Retry(ctx, s.log, "consuming the dead-letter queue", s.consume); err != nil {
		return err
	}
	s.bg.Add(1)
	go func() {
		defer s.bg.Done()
		ctx, cancel := s.untilStopped()
		defer cancel()
		if err := s.adoptTenants(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("moving old dead-letter queues into the table failed; the next start retries", zap.Error(err))
		}
	}()
	return nil
}

// untilStopped is a context that ends with Stop.
func (s *DeadLetters) untilStopped() (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		select {
		case <-s.stopped:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

// consume declares the shared dead-letter queue and consumes it until Stop. When the consume fails at once
// (RabbitMQ 3.10 closes the connection when it reaches a quorum queue another replica declared an instant
// before), it consumes again, in the background, once the connection is back.
func (s *DeadLetters) consume(ctx context.Context) error {
	if err := s.conn.DeclareQueues(ctx, s.opts.deadQueue()); err != nil {
		return fmt.Errorf("consumer: declare the dead-letter queue: %w", err)
	}
	c, err := rabbitmq.NewConsumer(s.conn.Conn, DeadQueueName(s.opts.Exchange),
		rabbitmq.WithConsumerOptionsQueueNoDeclare,
		rabbitmq.WithConsumerOptionsConcurrency(1),
		rabbitmq.WithConsumerOptionsQOSPrefetch(50),
		rabbitmq.WithConsumerOptionsForceShutdown,
		rabbitmq.WithConsumerOptionsConsumerName(s.opts.ReplicaID+"/"+DeadQueueName(s.opts.Exchange)),
		rabbitmq.WithConsumerOptionsLogger(broker.Logger(s.log)),
	)
	if err != nil {
		return fmt.Errorf("consumer: consume the dead-letter queue: %w", err)
	}
	s.mu.Lock()
	if s.stopping.Load() { // Stop came first: it will not close this one
		s.mu.Unlock()
		c.Close()
		return nil
	}
	s.c = c
	s.mu.Unlock()
	s.bg.Add(1)
	go func() {
		defer s.bg.Done()
		err := c.Run(s.handle)
		if err == nil || s.stopping.Load() {
			return
		}
		c.Close()
		ctx, cancel := s.untilStopped()
		defer cancel()
		_ = broker.Retry(ctx, s.log, "consuming the dead-letter queue (after: "+err.Error()+")", s.consume)
	}()
	return nil
}

// adoptTenants binds the shared dead-letter queue for every existing tenant and moves the messages of their
// per-tenant dead-letter queues (made by versions before the table) into the table, then deletes those queues.
func (s *DeadLetters) adoptTenants(ctx context.Context) error {
	tenants, err := s.dir.Tenants(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, t := range tenants {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err := s.conn.DeclareQueues(ctx, s.opts.deadBinding(t.ID)); err != nil {
			errs = append(errs, err)
			continue
		}
		if err := s.adoptLegacyQueue(ctx, t.ID); err != nil {
			errs = append(errs, fmt.Errorf("tenant %s: %w", t.ID, err))
		}
	}
	return errors.Join(errs...)
}

// adoptLegacyQueue moves the messages of a tenant's per-tenant dead-letter queue into the table, each acked
// after its insert committed, and deletes the queue once it is empty.
func (s *DeadLetters) adoptLegacyQueue(ctx context.Context, id uuid.UUID) error {
	name := DeadLetterQueueName(id)
	st, err := s.conn.InspectQueue(ctx, name)
	if err != nil || !st.Exists {
		return err
	}
	moved := 0
	err = s.conn.WithChannel(ctx, func(ch *amqp.Channel) error {
		for {
			var batch []amqp.Delivery
			for len(batch) < 100 {
				d, ok, err := ch.Get(name, false)
				if err != nil {
					return err
				}
				if !ok {
					break
				}
				batch = append(batch, d)
			}
			if len(batch) == 0 {
				_, err := ch.QueueDelete(name, false, false, false)
				return err
			}
			rows := make([]deadRow, 0, len(batch))
			for _, d := range batch {
				if d.RoutingKey == "" || d.RoutingKey != id.String() {
					d.RoutingKey = id.String()
				}
				r, _ := brokerDeadRows(d)
				rows = append(rows, r...)
			}
			if err := s.insert(ctx, rows); err != nil {
				return err // the channel's close returns the batch to the queue
			}
			if err := ch.Ack(batch[len(batch)-1].DeliveryTag, true); err != nil {
				return err
			}
			moved += len(batch)
		}
	})
	if moved > 0 {
		s.log.Info("moved an old dead-letter queue into the table", zap.String("tenant_id", id.String()), zap.Int("messages", moved))
	}
	return err
}

// handle moves one delivery of the shared dead-letter queue into the table and acks it after the commit; while
// the database refuses it retries with backoff, and on stop it leaves the delivery to the channel's close.
func (s *DeadLetters) handle(d rabbitmq.Delivery) rabbitmq.Action {
	s.chanMu.RLock()
	defer s.chanMu.RUnlock()
	rows, ok := brokerDeadRows(d.Delivery)
	if !ok {
		s.log.Error("a dead letter of no known tenant; dropping it", zap.String("routing_key", d.RoutingKey),
			zap.String("message_id", d.MessageId))
		if !s.closed {
			_ = d.Ack(false)
		}
		return rabbitmq.Manual
	}
	backoff := s.opts.RetryInitial
	for attempt := 1; ; attempt++ {
		if s.stopping.Load() {
			return rabbitmq.Manual
		}
		err := s.insertUntil(s.stopped, rows)
		if err == nil {
			break
		}
		if attempt == 1 || attempt%10 == 0 {
			s.log.Warn("could not store a dead letter; retrying", zap.String("tenant_id", rows[0].tenant.String()), zap.Error(err))
		}
		select {
		case <-time.After(backoff):
		case <-s.stopped:
		}
		backoff = min(backoff*2, maxBackoff)
	}
	if !s.closed {
		if err := d.Ack(false); err != nil {
			s.log.Warn("could not ack a stored dead letter; it is stored again (once)", zap.Error(err))
		}
	}
	for _, row := range rows {
		s.metrics.deadLetter(s.metrics.tenant(row.tenant), row.reason).Inc()
	}
	return rabbitmq.Manual
}

// Stop stops consuming the shared dead-letter queue; what was not stored yet stays in it.
func (s *DeadLetters) Stop(ctx context.Context) error {
	if !s.stopping.Swap(true) {
		close(s.stopped)
	}
	s.chanMu.Lock() // waits for a running handle
	s.closed = true
	s.chanMu.Unlock()
	s.mu.Lock()
	c := s.c
	s.mu.Unlock()
	if c != nil {
		c.CloseWithContext(ctx)
	}
	s.bg.Wait()
	return nil
}

// unbind removes the shared dead-letter queue's binding for a deleted tenant.
func (s *DeadLetters) unbind(ctx context.Context, id uuid.UUID) error {
	return s.conn.UnbindQueue(ctx, DeadQueueName(s.opts.Exchange), id.String(), DeadLetterExchange(s.opts.Exchange))
}
