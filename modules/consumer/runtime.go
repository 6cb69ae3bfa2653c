package consumer

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/zap"

	"github.com/acme/msgsvc/platform/broker"
	"github.com/acme/msgsvc/platform/events"
	"github.com/acme/msgsvc/platform/periodic"
)

// Options configure the runtime.
type Options struct {
	ReplicaID         string
	Exchange          string // direct exchange the tenants' queues are bound to
	QueueType         string // quorum or classic
	DeliveryLimit     int
	PrefetchPerWorker int
	BatchSize         int // deliveries a worker stores in one insert at most
	RetryInitial      time.Duration
	RetryBudget       time.Duration
	DrainTimeout      time.Duration
	ReconcileInterval time.Duration
	OrphanGrace       time.Duration // how long a tenant queue stays without a tenant before it is deleted
	ManagementURL     string        // RabbitMQ management API, to find orphan queues; optional
	AMQPURL           string        // names the virtual host whose queues the management API lists
}

// Runtime runs one consumer per tenant on this replica.
type Runtime struct {
	conn      *broker.Conn
	pool      *broker.ConsumerPool
	publisher *broker.Publisher
	handler   Handler
	dir       events.TenantDirectory
	opts      Options
	log       *zap.Logger
	metrics   *Metrics

	mu        sync.Mutex
	consumers map[uuid.UUID]*tenantConsumer
	closed    bool

	orphans map[string]time.Time // queue name → when reconciliation first saw it without a tenant
	loop    *periodic.Loop       // periodic reconciliation
}

// NewRuntime returns a runtime; Start brings every tenant's consumer up.
func NewRuntime(conn *broker.Conn, pool *broker.ConsumerPool, p *broker.Publisher, h Handler, dir events.TenantDirectory, opts Options, m *Metrics, log *zap.Logger) *Runtime {
	return &Runtime{conn: conn, pool: pool, publisher: p, handler: h, dir: dir, opts: opts, metrics: m, log: log.Named("consumer"),
		consumers: map[uuid.UUID]*tenantConsumer{}, orphans: map[string]time.Time{}}
}

// DeadLetterExchange is the exchange tenants' rejected and exhausted deliveries go to.
func (r *Runtime) DeadLetterExchange() string { return r.opts.Exchange + ".dlx" }

// queues returns a tenant's queue and dead-letter queue.
func (r *Runtime) queues(id uuid.UUID) []broker.Queue {
	args := amqp.Table{
		"x-queue-type":              r.opts.QueueType,
		"x-dead-letter-exchange":    r.DeadLetterExchange(),
		"x-dead-letter-routing-key": id.String(),
	}
	if r.opts.QueueType == "quorum" {
		args["x-delivery-limit"] = int64(r.opts.DeliveryLimit)
	}
	return []broker.Queue{
		{Name: DeadLetterQueueName(id), Args: amqp.Table{"x-queue-type": r.opts.QueueType}, Exchange: r.DeadLetterExchange(), Key: id.String()},
		{Name: QueueName(id), Args: args, Exchange: r.opts.Exchange, Key: id.String()},
	}
}

// DeclareTopology declares a tenant's queue (bound to the exchange with the tenant id as routing key) and its
// dead-letter queue. It is idempotent.
func (r *Runtime) DeclareTopology(ctx context.Context, id uuid.UUID) error {
	if err := r.conn.DeclareQueues(ctx, r.queues(id)...); err != nil {
		return fmt.Errorf("declare queues of tenant %s: %w", id, err)
	}
	return nil
}

// DeleteTopology deletes a tenant's queue and dead-letter queue with whatever they hold.
func (r *Runtime) DeleteTopology(ctx context.Context, id uuid.UUID) error {
	if err := r.conn.DeleteQueues(ctx, QueueName(id), DeadLetterQueueName(id)); err != nil {
		return fmt.Errorf("delete queues of tenant %s: %w", id, err)
	}
	return nil
}

func (r *Runtime) consumer(id uuid.UUID, create bool) *tenantConsumer {
	r.mu.Lock()
	defer r.mu.Unlock()
	tc := r.consumers[id]
	if tc == nil && create && !r.closed {
		tc = &tenantConsumer{rt: r, id: id}
		r.consumers[id] = tc
	}
	return tc
}

// Ensure makes the tenant's consumer run with workers workers, starting or resizing it as needed.
func (r *Runtime) Ensure(ctx context.Context, id uuid.UUID, workers int, reason string) error {
	tc := r.consumer(id, true)
	if tc == nil {
		return fmt.Errorf("consumer runtime is stopped")
	}
	if err := tc.ensure(ctx, workers, reason); err != nil {
		return fmt.Errorf("start consumer of tenant %s: %w", id, err)
	}
	return nil
}

// Stop drains and stops the tenant's consumer and forgets it.
func (r *Runtime) Stop(ctx context.Context, id uuid.UUID, reason string) {
	r.mu.Lock()
	tc := r.consumers[id]
	delete(r.consumers, id)
	r.mu.Unlock()
	if tc != nil {
		tc.stop(ctx, reason)
		r.metrics.forget(id)
	}
}

// Workers returns the worker count of the tenant's running consumer, 0 when none runs.
func (r *Runtime) Workers(id uuid.UUID) int {
	tc := r.consumer(id, false)
	if tc == nil {
		return 0
	}
	tc.mu.Lock()
	defer tc.mu.Unlock()
	if tc.gen == nil || !tc.gen.alive() {
		return 0
	}
	return tc.gen.workers
}

// Start declares the exchanges, brings every tenant's topology and consumer up, and starts reconciliation.
func (r *Runtime) Start(ctx context.Context) error {
	if err := r.conn.DeclareExchange(ctx, r.opts.Exchange, amqp.ExchangeDirect); err != nil {
		return fmt.Errorf("consumer: declare exchange: %w", err)
	}
	if err := r.conn.DeclareExchange(ctx, r.DeadLetterExchange(), amqp.ExchangeDirect); err != nil {
		return fmt.Errorf("consumer: declare dead-letter exchange: %w", err)
	}
	if err := r.Reconcile(ctx); err != nil {
		return fmt.Errorf("consumer: start tenants' consumers: %w", err)
	}
	r.loop = periodic.Start(r.opts.ReconcileInterval, r.Reconcile, func(err error) {
		r.log.Warn("reconciliation failed; next run will retry", zap.Error(err))
	})
	return nil
}

// Shutdown stops reconciliation and drains every consumer; queues and their messages stay.
func (r *Runtime) Shutdown(ctx context.Context) error {
	r.loop.Stop()
	r.mu.Lock()
	r.closed = true
	all := make([]*tenantConsumer, 0, len(r.consumers))
	for _, tc := range r.consumers {
		all = append(all, tc)
	}
	r.consumers = map[uuid.UUID]*tenantConsumer{}
	r.mu.Unlock()
	var wg sync.WaitGroup
	for _, tc := range all {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tc.stop(ctx, "shutdown")
		}()
	}
	wg.Wait()
	r.log.Info("all consumers stopped", zap.Int("consumers", len(all)))
	return nil
}
