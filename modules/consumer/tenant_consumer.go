package consumer

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"
	rabbitmq "github.com/wagslane/go-rabbitmq"
	"go.uber.org/zap"

	"github.com/acme/msgsvc/platform/broker"
)

// tenantConsumer supervises the consumer of one tenant's queue on this replica. Its worker pool is a
// go-rabbitmq consumer whose concurrency and prefetch are fixed when it starts; a resize therefore stops the
// running generation (its in-flight deliveries finish and are acked, its prefetched ones return to the queue)
// and starts a new one with the new size. The queue itself is never touched.
type tenantConsumer struct {
	rt *Runtime
	id uuid.UUID

	mu      sync.Mutex // serialises start, resize and stop
	workers int
	gen     *generation
}

// generation is one go-rabbitmq consumer with a fixed worker count.
type generation struct {
	c       *rabbitmq.Consumer
	workers int
	// stopping is the stop gate: set before Close, so that a handler go-rabbitmq starts after its own wait
	// returns the delivery unprocessed instead of storing it on a closing channel.
	stopping atomic.Bool
	stopped  chan struct{} // closed when stopping is set, to cut retry backoffs short
	done     chan struct{} // closed when Run returned
	err      error         // Run's error, valid after done
}

func (g *generation) alive() bool {
	select {
	case <-g.done:
		return false
	default:
		return true
	}
}

// running reports whether a live generation consumes.
func (tc *tenantConsumer) running() bool {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	return tc.gen != nil && tc.gen.alive()
}

// start runs a new generation with workers workers; tc.mu must be held and no generation running.
func (tc *tenantConsumer) start(workers int, reason string) error {
	rt := tc.rt
	g := &generation{workers: workers, done: make(chan struct{}), stopped: make(chan struct{})}
	c, err := rabbitmq.NewConsumer(rt.conn.Conn, QueueName(tc.id),
		rabbitmq.WithConsumerOptionsQueueNoDeclare,
		rabbitmq.WithConsumerOptionsConcurrency(workers),
		rabbitmq.WithConsumerOptionsQOSPrefetch(workers*rt.opts.PrefetchPerWorker),
		rabbitmq.WithConsumerOptionsConsumerName(rt.opts.ReplicaID+"/"+QueueName(tc.id)+"/"+uuid.NewString()[:8]),
		rabbitmq.WithConsumerOptionsLogger(broker.Logger(rt.log.With(zap.String("tenant_id", tc.id.String())))),
	)
	if err != nil {
		return err
	}
	g.c = c
	started := make(chan error, 1)
	go func() {
		defer close(g.done)
		g.err = c.Run(func(d rabbitmq.Delivery) rabbitmq.Action { return tc.handle(g, d) })
		select {
		case started <- g.err:
		default:
		}
		if g.err != nil && !g.stopping.Load() {
			rt.log.Warn("consumer failed to start; reconciliation will retry", zap.String("tenant_id", tc.id.String()), zap.Error(g.err))
			g.c.Close()
		}
	}()
	// Run only returns early when the first consume fails (a missing queue, the broker down); give it a moment
	// so that this error reaches the caller instead of the log.
	select {
	case err := <-started:
		if err != nil {
			return err
		}
	case <-time.After(100 * time.Millisecond):
	}
	tc.gen, tc.workers = g, workers
	rt.metrics.workers.WithLabelValues(rt.metrics.tenant(tc.id)).Add(float64(workers))
	rt.metrics.running.Inc()
	rt.metrics.restarts.WithLabelValues(reason).Inc()
	rt.log.Info("consumer started", zap.String("tenant_id", tc.id.String()), zap.Int("workers", workers), zap.String("reason", reason))
	return nil
}

// stopGen drains and closes the running generation; tc.mu must be held.
func (tc *tenantConsumer) stopGen(ctx context.Context, reason string) {
	g := tc.gen
	if g == nil {
		return
	}
	tc.gen = nil
	rt := tc.rt
	g.stopping.Store(true)
	close(g.stopped)
	if g.alive() {
		ctx, cancel := context.WithTimeout(ctx, rt.opts.DrainTimeout)
		g.c.CloseWithContext(ctx)
		cancel()
	}
	rt.metrics.workers.WithLabelValues(rt.metrics.tenant(tc.id)).Sub(float64(g.workers))
	rt.metrics.running.Dec()
	rt.log.Info("consumer stopped", zap.String("tenant_id", tc.id.String()), zap.Int("workers", g.workers), zap.String("reason", reason))
}

// ensure makes a generation with workers run: it starts one when none is alive and replaces one of another size.
func (tc *tenantConsumer) ensure(ctx context.Context, workers int, reason string) error {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	if tc.gen != nil && tc.gen.alive() && tc.gen.workers == workers {
		return nil
	}
	if tc.gen != nil {
		tc.stopGen(ctx, reason)
	}
	return tc.start(workers, reason)
}

// stop drains and stops the consumer.
func (tc *tenantConsumer) stop(ctx context.Context, reason string) {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	tc.stopGen(ctx, reason)
}

// handle processes one delivery on a worker: store it, ack after commit; dead-letter what can never be
// stored; retry transient failures with exponential backoff for the retry budget, then return the delivery
// to the queue with a reject, which counts towards the queue's delivery limit.
func (tc *tenantConsumer) handle(g *generation, d rabbitmq.Delivery) rabbitmq.Action {
	rt := tc.rt
	label := rt.metrics.tenant(tc.id)
	if g.stopping.Load() {
		rt.metrics.requeued.WithLabelValues(label, "stopping").Inc()
		return rabbitmq.NackRequeue
	}
	inflight := rt.metrics.inflight.WithLabelValues(label)
	inflight.Inc()
	defer inflight.Dec()

	backoff := rt.opts.RetryInitial
	deadline := time.Now().Add(rt.opts.RetryBudget)
	for attempt := 1; ; attempt++ {
		err := rt.handler.Handle(context.Background(), tc.id, []amqp.Delivery{d.Delivery})[0]
		switch {
		case err == nil:
			return rabbitmq.Ack
		case broker.IsPermanent(err):
			rt.log.Warn("delivery can never be stored; dead-lettering it", zap.String("tenant_id", tc.id.String()),
				zap.String("message_id", d.MessageId), zap.Error(err))
			rt.metrics.deadLettered.WithLabelValues(label, "undecodable").Inc()
			tc.ackOrLog(d.Reject(false), d)
			return rabbitmq.Manual
		}
		if g.stopping.Load() {
			rt.metrics.requeued.WithLabelValues(label, "stopping").Inc()
			return rabbitmq.NackRequeue
		}
		if time.Now().Add(backoff).After(deadline) {
			rt.log.Warn("store keeps failing; returning the delivery to the queue", zap.String("tenant_id", tc.id.String()),
				zap.String("message_id", d.MessageId), zap.Int("attempts", attempt), zap.Error(err))
			rt.metrics.requeued.WithLabelValues(label, "retry_budget").Inc()
			tc.ackOrLog(d.Reject(true), d)
			return rabbitmq.Manual
		}
		if attempt == 1 || attempt%10 == 0 {
			rt.log.Warn("store failed; retrying with backoff", zap.String("tenant_id", tc.id.String()),
				zap.String("message_id", d.MessageId), zap.Int("attempt", attempt), zap.Duration("backoff", backoff), zap.Error(err))
		}
		rt.metrics.retried.WithLabelValues(label).Inc()
		select {
		case <-time.After(backoff):
		case <-g.stopped:
		}
		backoff = min(backoff*2, maxBackoff)
	}
}

const maxBackoff = 5 * time.Second

func (tc *tenantConsumer) ackOrLog(err error, d rabbitmq.Delivery) {
	if err != nil && !errors.Is(err, context.Canceled) {
		tc.rt.log.Warn("could not settle delivery; the broker will redeliver it", zap.String("tenant_id", tc.id.String()),
			zap.String("message_id", d.MessageId), zap.Error(err))
	}
}
