package consumer

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"
	rabbitmq "github.com/wagslane/go-rabbitmq"
	"go.uber.org/zap"

	"github.com/acme/msgsvc/platform/broker"
	"github.com/acme/msgsvc/platform/database"
)

// tenantConsumer supervises the consumer of one tenant's queue on this replica.
//
// One generation of it is a consume on a channel of its own (amqp091, on a pooled connection) with prefetch workers ×
// PrefetchPerWorker, whose single goroutine only hands deliveries over to at most `workers` store workers. Each
// worker takes what is waiting (up to BatchSize deliveries), stores it in one multi-row insert and acks each delivery
// after the commit, so a tenant's worker count is the number of store transactions it runs at once. Workers start
// when a delivery is handed over and none is idle, and leave after workerIdle without one, so an idle tenant runs
// none: its goroutines are the consume's and amqp091's delivery buffer (two per consumer; go-rabbitmq's consumer,
// used until 2026-12-06, kept five), and its connection is watched without a goroutine (Lease.AfterLost). The
// prefetch is fixed when a consume starts, so a resize stops the running generation (in-flight batches finish and are
// acked, the deliveries not started yet are returned to the queue) and starts a new one with the new size and
// prefetch. The queue itself is never touched.
type tenantConsumer struct {
	rt  *Runtime
	id  uuid.UUID
	log tenantLog // the runtime's logger with tenant_id added to each line

	mu sync.Mutex // serialises start, resize and stop
	// gen is the running generation, nil when none; set under mu, read without it (running, live, Workers): a
	// start or stop holds mu for as long as the broker takes to answer, up to startWait or the drain timeout (a
	// channel on a queue that does not answer closes after RabbitMQ's 15 s channel operation timeout; the stop
	// waits no longer), and reconciliation asks every tenant whether its consumer runs, one after the other.
	gen atomic.Pointer[generation]

	// lastErr is why the last start failed, "" after a success; guarded by rt.mu.
	lastErr string
	// suspect is set when the broker answered the tenant's consume by closing the whole connection (RabbitMQ 3.10
	// does so on a consume of a quorum queue that is not running yet, 541 INTERNAL_ERROR): the tenant's next
	// consumes take a connection of their own (an isolated lease) until one succeeds, so that its queue cannot
	// keep a shared connection, and every other consumer on it, cycling.
	suspect atomic.Bool
	// handing is set while a make-before-break handover of the tenant waits for its new owner (Runtime.handOver).
	handing atomic.Bool
}

// generation is one consume of the tenant's queue, on a channel of its own, with a fixed worker count.
type generation struct {
	chMu sync.Mutex
	ch   *amqp.Channel // the consume's channel, once its consume was answered and no stop came; guarded by chMu
	shut bool          // closeChannel ran: a consume being set up closes its channel once answered; guarded by chMu
	// opened is closed when the consume's setup (channel, qos, consume) ended, answered or failed: ch is set
	// then, or stays nil.
	opened  chan struct{}
	lease   *broker.Lease // the channel slot ch holds on a pooled connection
	started time.Time     // when its start returned
	workers int           // the most store workers at once
	// pending holds the deliveries handed over by the consume, waiting for a store worker. It holds pointers: its
	// capacity is the prefetch, allocated for the generation's life, and an idle tenant keeps it.
	pending chan *rabbitmq.Delivery
	// unwatch cancels the replacement of the generation when its connection drops (Lease.AfterLost).
	unwatch func() bool
	spawnMu sync.Mutex
	running int          // store workers running; guarded by spawnMu
	idle    int          // of them, those waiting for a delivery; guarded by spawnMu
	halted  bool         // no worker starts any more (the generation stops); guarded by spawnMu
	acks    *acker       // coalesces the acks of stored deliveries into multiple acks
	storing atomic.Int32 // workers inside a store call now
	// stopping is the stop gate: set before the workers are waited for and the consumer closed, so that a
	// delivery handed over after that is returned to the queue instead of being stored on a closing channel.
	stopping atomic.Bool
	stopped  chan struct{} // closed when stopping is set; cuts waits and retry backoffs short
	// storeCtx is the context of the workers' stores; the stop cancels it at the drain deadline and then waits
	// for the workers to return, so that no store of this generation runs once its channel closed (and the
	// broker gave its deliveries to the next consumer).
	storeCtx    context.Context
	cancelStore context.CancelCauseFunc
	workersDone sync.WaitGroup
	done        chan struct{} // closed when consume returned
	err         error         // consume's error, valid after done
	// chanMu orders everything sent on the consumer's channel before the channel's close: acks, nacks and
	// rejects hold it shared and are skipped once closed is set (the closing channel returns their deliveries
	// to the queue), handOver holds it shared while it runs, and the stop holds it exclusively to set closed
	// before it closes the channel. A frame that reaches the broker after the channel's close is a connection
	// error (CHANNEL_ERROR, "expected 'channel.open'"), which closes the connection every tenant's consumers and
	// the publishers share.
	chanMu sync.RWMutex
	closed bool
}

// alive reports whether the generation consumes: its consume did not return and its connection did not drop (a
// generation of a dropped connection never consumes again; it is replaced).
func (g *generation) alive() bool {
	select {
	case <-g.done:
		return false
	case <-g.lease.Lost():
		return false
	default:
		return true
	}
}

// live returns the live generation, nil when none consumes.
func (tc *tenantConsumer) live() *generation {
	if g := tc.gen.Load(); g != nil && g.alive() {
		return g
	}
	return nil
}

// running reports whether a live generation consumes.
func (tc *tenantConsumer) running() bool {
	g := tc.gen.Load()
	return g != nil && g.alive()
}

// start runs a new generation with workers workers; tc.mu must be held and no generation running. It returns
// once the consumer consumes (a classic queue answered its consume; a quorum queue counts a consumer), or its
// consume failed, or ctx ended or
// startWait passed (it goes on starting, and reconciliation looks at it again if it fails). At most
// startParallelism consumes run at once in the runtime, whatever starts them (reconciliation, events, the
// restart of the consumers of a dropped connection).
func (tc *tenantConsumer) start(ctx context.Context, workers int, reason string) error {
	rt := tc.rt
	prefetch := workers * rt.opts.PrefetchPerWorker
	if err := rt.starts.acquire(ctx); err != nil {
		return err
	}
	defer rt.starts.release()
	acquire := rt.pool.Acquire
	if tc.suspect.Load() {
		acquire = rt.pool.AcquireIsolated
	}
	lease, err := acquire(ctx)
	if err != nil {
		return err
	}
	g := &generation{workers: workers, lease: lease, pending: make(chan *rabbitmq.Delivery, prefetch),
		done: make(chan struct{}), stopped: make(chan struct{}), opened: make(chan struct{})}
	g.storeCtx, g.cancelStore = context.WithCancelCause(context.Background())
	g.acks = newAcker(func(ch amqp.Acknowledger, tag uint64, multiple bool) {
		if err := ch.Ack(tag, multiple); err != nil {
			tc.log.Warn("could not ack stored deliveries; the broker will redeliver them",
				zap.Uint64("delivery_tag", tag), zap.Bool("multiple", multiple), zap.Error(err))
		}
	}, g.whileOpen)
	g.acks.delay, g.acks.maxDue = rt.opts.AckDelay, uint64(max(1, prefetch/4))
	tag := rt.opts.ReplicaID + "/" + QueueName(tc.id) + "/" + uuid.NewString()[:8]
	failed := make(chan error, 1)
	go func() {
		defer close(g.done)
		g.err = tc.consume(g, prefetch, tag)
		if errors.Is(g.err, errCancelled) {
			g.err = nil
			go rt.stopCancelled(tc, g)
			return
		}
		if closedConnection(g.err) {
			tc.suspect.Store(true)
			tc.log.Warn("the broker closed the consumer's whole connection in answer to its consume; the tenant's "+
				"consumer starts on a connection of its own until it consumes", zap.Error(g.err))
		}
		// The connection dropped (amqp091 marks it closed before it ends its channels' deliveries; the pool learns
		// of it when the socket closes, just after): stopLost or replaceLost stops the generation.
		if g.lease.Conn.IsClosed() {
			return
		}
		if g.err != nil && !g.stopping.Swap(true) {
			failed <- g.err
			close(g.stopped)
			g.halt()
			g.workersDone.Wait()
			g.cancelStore(errStopped)
			g.closeChannel(context.Background())
			g.lease.Release()
			if tc.gen.Load() == g {
				tc.log.Warn("the tenant's consumer channel closed; reconciliation starts it again now", zap.Error(g.err))
				rt.Kick()
			}
		}
	}()
	// consume runs while the consumer lives and returns early when the consume fails (a missing queue, a refused
	// consume, the broker down). That it consumes, the broker says:
	//   - a classic queue answers the consume (consume-ok) once its process registered the consumer, waiting or
	//     active, so its answer is enough (awaitConsumeOK). Polling the queue instead cost the broker two to four
	//     passive declares a creation, and tens of thousands at a restart;
	//   - a quorum queue may answer the consume before its Raft member turns out not to run, and RabbitMQ 3.10 then
	//     closes the whole connection (541): counting that consume as started would clear the tenant's suspect mark.
	//     So the queue must count a consumer (awaitConsumer). That is this one when the queue had none; while a
	//     handover goes on it may be the old owner's (a quorum queue counts only its single active consumer, so a
	//     waiting one cannot be seen), and the start returns at once: a consume that fails later ends the
	//     generation, which reconciliation starts again.
	consuming := make(chan struct{})
	probeCtx, stopProbe := context.WithCancel(ctx)
	defer stopProbe()
	if rt.opts.QueueType == "classic" {
		go g.awaitConsumeOK(probeCtx, consuming)
	} else {
		go tc.awaitConsumer(probeCtx, consuming)
	}
	counted := false
	select {
	case err := <-failed:
		return err
	case <-lease.Lost():
		tc.stopLost(g)
		return fmt.Errorf("consumer connection dropped while the consume started (the queue may not be usable yet): %w",
			broker.ErrUnavailable)
	case <-consuming:
		counted = true
	case <-ctx.Done():
		// Still starting: it goes on, and reconciliation looks at it again if it fails.
	case <-time.After(startWait):
	}
	if lease.Isolated() {
		tc.suspect.Store(false)
	}
	g.started = time.Now()
	tc.gen.Store(g)
	// When the connection drops, the runtime replaces the generation (paced with every other start): the pool's
	// connections never reconnect by themselves.
	g.unwatch = lease.AfterLost(func() { rt.replaceLost(tc, g) })
	rt.metrics.workers.WithLabelValues(rt.metrics.tenant(tc.id)).Add(float64(workers))
	rt.metrics.running.Inc()
	rt.metrics.restarts.WithLabelValues(reason).Inc()
	if counted {
		// A replica giving this tenant up drains its consumer once it has seen this (make-before-break).
		rt.announce(tc.id)
	} else {
		rt.succ.forget(tc.id)
	}
	tc.log.Info("consumer started", zap.Int("workers", workers),
		zap.Int("prefetch", prefetch), zap.String("reason", reason), zap.Bool("isolated", lease.Isolated()))
	return nil
}

// errCancelled is consume's answer when the broker cancelled the consumer (its queue was deleted, or its quorum
// queue lost its leader for good): the channel is still open, and the stop closes it.
var errCancelled = errors.New("consumer cancelled by the broker")

// consume opens the generation's channel on its lease, consumes the tenant's queue with prefetch, and hands every
// delivery over (handOver) until the deliveries end. It returns nil when the stop closed the channel, the
// channel's close error when the broker or the connection closed it, and errCancelled when the broker cancelled
// the consumer. Besides this goroutine, a consume costs one of amqp091's (its delivery buffer): two per idle tenant.
func (tc *tenantConsumer) consume(g *generation, prefetch int, tag string) error {
	deliveries, closed, err := tc.openConsume(g, prefetch, tag)
	if err != nil || deliveries == nil {
		return err
	}
	for d := range deliveries {
		tc.handOver(g, rabbitmq.Delivery{Delivery: d})
	}
	// amqp091 sends a channel's close error, and closes its close notifications, before it ends the deliveries.
	select {
	case e, ok := <-closed:
		if ok && e != nil {
			return e
		}
		return nil // closed by closeChannel
	default:
		return errCancelled
	}
}

// beforeConsume, when set (by a test), runs between the consume's qos and its consume, and is told whether a stop
// closed the generation's channel.
var beforeConsume func(closing func() bool)

// openConsume opens the generation's channel, sets its prefetch and consumes the tenant's queue on it. The channel
// is never closed while this runs: amqp091 sends a command on a channel whose close it sent, and RabbitMQ answers
// any command on a channel it closed but channel.open by closing the whole connection (504 CHANNEL_ERROR "expected
// 'channel.open'"), with every consumer on it. A start returns once the queue counts a consumer, which may be
// another's (a handover, or a consumer of the last generation the queue still counts), so a resize can stop a
// generation whose consume was not sent yet. When a stop came meanwhile, this closes the channel itself, after the
// broker answered the consume; deliveries is nil when the stop came before the qos.
func (tc *tenantConsumer) openConsume(g *generation, prefetch int, tag string) (deliveries <-chan amqp.Delivery,
	closed chan *amqp.Error, err error) {
	defer close(g.opened)
	ch, err := g.lease.Conn.Channel()
	if err != nil {
		return nil, nil, err
	}
	if g.isShut() {
		_ = ch.Close()
		return nil, nil, nil
	}
	if err = ch.Qos(prefetch, 0, false); err == nil {
		if beforeConsume != nil {
			beforeConsume(g.isShut)
		}
		closed = ch.NotifyClose(make(chan *amqp.Error, 1))
		deliveries, err = ch.Consume(QueueName(tc.id), tag, false, false, false, false, nil)
	}
	// Whoever sees the other's mark closes the channel: closeChannel once ch is set, this when shut is.
	g.chMu.Lock()
	shut := g.shut
	if !shut {
		g.ch = ch
	}
	g.chMu.Unlock()
	if err != nil || shut {
		_ = ch.Close() // at once when the broker closed it already (a failed qos or consume)
	}
	return deliveries, closed, err
}

// isShut reports whether closeChannel ran.
func (g *generation) isShut() bool {
	g.chMu.Lock()
	defer g.chMu.Unlock()
	return g.shut
}

// closeChannel closes the generation's channel, waiting for RabbitMQ's answer (which returns the deliveries not
// acked to the queue) until ctx ends; the close goes out even when ctx has ended already (the drain timeout). A
// consume still being set up closes its channel itself once the broker answered it (openConsume): this then waits
// for that, until ctx ends. It may be called more than once.
func (g *generation) closeChannel(ctx context.Context) {
	g.chMu.Lock()
	g.shut = true
	ch := g.ch
	g.chMu.Unlock()
	if ch == nil {
		select {
		case <-g.opened:
		case <-ctx.Done():
		}
		return
	}
	if ch.IsClosed() {
		return
	}
	// amqp091's close takes no context; on a queue that does not answer, RabbitMQ answers after its channel
	// operation timeout (15 s). Two closes of one channel are safe: amqp091 runs them one after the other, and the
	// second returns at once.
	done := make(chan struct{})
	go func() {
		_ = ch.Close()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
	}
}

// awaitConsumeOK closes consuming once the broker answered the generation's consume with consume-ok (openConsume
// set its channel), unless ctx ends first. A consume that failed leaves consuming open: start learns of it from
// the failure.
func (g *generation) awaitConsumeOK(ctx context.Context, consuming chan<- struct{}) {
	select {
	case <-g.opened:
	case <-ctx.Done():
		return
	}
	g.chMu.Lock()
	ok := g.ch != nil
	g.chMu.Unlock()
	if ok {
		close(consuming)
	}
}

// awaitConsumer closes consuming once the broker counts a consumer on the tenant's queue, polling until ctx ends:
// first after consumerProbeFirst, then at intervals doubling up to consumerProbeMax. A consume takes a few round
// trips and, on a quorum queue, a Raft command, and after a restart many run at once: polling every 10 ms, each
// probe on a channel of its own (three round trips), made the probes most of the broker's commands.
func (tc *tenantConsumer) awaitConsumer(ctx context.Context, consuming chan<- struct{}) {
	wait := consumerProbeFirst
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, consumerProbeMax)
		st, err := tc.rt.conn.InspectQueue(ctx, QueueName(tc.id))
		if err == nil && st.Consumers > 0 {
			close(consuming)
			return
		}
	}
}

// closedConnection reports whether err is the broker closing the whole connection in answer to this consumer's
// own command (an AMQP 0-9-1 hard error), not the connection dropping under it (amqp.ErrClosed, or 320
// CONNECTION_FORCED when an operator or a broker shutdown closed it), nor a channel error (404, 405, ...).
func closedConnection(err error) bool {
	var ae *amqp.Error
	if !errors.As(err, &ae) || !ae.Server {
		return false
	}
	switch ae.Code {
	case amqp.FrameError, amqp.SyntaxError, amqp.CommandInvalid, amqp.ChannelError, amqp.UnexpectedFrame,
		amqp.ResourceError, amqp.NotAllowed, amqp.NotImplemented, amqp.InternalError:
		return true
	}
	return false
}

// How often a start asks the broker whether its consumer is registered: first after consumerProbeFirst, then at
// intervals doubling up to consumerProbeMax.
const (
	consumerProbeFirst = 5 * time.Millisecond
	consumerProbeMax   = 80 * time.Millisecond
)

// stopLost closes a generation that never became tc.gen because its connection dropped while it started.
func (tc *tenantConsumer) stopLost(g *generation) {
	if g.stopping.Swap(true) {
		return // the consume failed, and its goroutine closes the channel and releases the lease
	}
	close(g.stopped)
	g.halt()
	g.workersDone.Wait()
	g.cancelStore(errStopped)
	g.chanMu.Lock()
	g.closed = true
	g.chanMu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	g.closeChannel(ctx)
	g.lease.Release()
}

// halt keeps store workers from starting any more; the stop calls it before it waits for the running ones.
func (g *generation) halt() {
	g.spawnMu.Lock()
	g.halted = true
	g.spawnMu.Unlock()
}

// stopGen drains and closes the running generation; tc.mu must be held. In-flight stores get DrainTimeout to
// finish; then they are cancelled, and the channel closes only once every worker returned (or ctx ended): the
// broker gives the deliveries to the next consumer (a new generation, another replica) only after that, so a
// one-worker tenant never has two stores at once.
func (tc *tenantConsumer) stopGen(ctx context.Context, reason string) {
	g := tc.gen.Load()
	if g == nil {
		return
	}
	tc.gen.Store(nil)
	rt := tc.rt
	if g.unwatch != nil {
		g.unwatch()
	}
	defer g.cancelStore(errStopped)
	drainCtx, cancel := context.WithTimeout(ctx, rt.opts.DrainTimeout)
	defer cancel()
	if !g.stopping.Swap(true) {
		close(g.stopped)
	}
	g.halt()
	// In-flight batches finish and are acked while the channel is still open.
	workersDone := make(chan struct{})
	go func() { g.workersDone.Wait(); close(workersDone) }()
	select {
	case <-workersDone:
	case <-drainCtx.Done():
		tc.log.Warn("drain timeout: cancelling the stores in flight; the broker redelivers their deliveries",
			zap.Duration("drain_timeout", rt.opts.DrainTimeout))
		g.cancelStore(errDrainTimeout)
		select {
		case <-workersDone:
		case <-ctx.Done():
			tc.log.Error("a store did not return after its cancellation; closing the consumer with it still running",
				zap.Error(context.Cause(ctx)))
		}
	}
	ctx = drainCtx
	// Acks still waiting behind a delivery held for the close go now, one by one.
	g.chanMu.RLock()
	if !g.closed {
		g.acks.flush()
	}
	g.chanMu.RUnlock()
	g.chanMu.Lock() // waits for a running handOver and settlements
	g.closed = true
	g.chanMu.Unlock()
	g.closeChannel(ctx)
	// Deliveries handed over after the workers left were not acked; the closed channel returned them.
	for n := len(g.pending); n > 0; n-- {
		<-g.pending
		rt.metrics.inflight.WithLabelValues(rt.metrics.tenant(tc.id)).Dec()
	}
	g.lease.Release()
	rt.metrics.workers.WithLabelValues(rt.metrics.tenant(tc.id)).Sub(float64(g.workers))
	rt.metrics.running.Dec()
	tc.log.Info("consumer stopped", zap.Int("workers", g.workers), zap.String("reason", reason))
}

// ensure makes a generation with workers run: it starts one when none is alive and replaces one of another size.
// started reports that it started one (the start may still have failed: err). listed, when not zero, is when
// workers was read (a reconciliation pass's tenant list): a generation started since then keeps its size, since
// what started it (a concurrency change's event) read a count at least as new.
func (tc *tenantConsumer) ensure(ctx context.Context, workers int, reason string, listed time.Time) (started bool, err error) {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	g := tc.gen.Load()
	if g != nil && g.alive() && (g.workers == workers || !listed.IsZero() && !g.started.Before(listed)) {
		return false, nil
	}
	if g != nil {
		tc.stopGen(ctx, reason)
	}
	return true, tc.start(ctx, workers, reason)
}

// stop drains and stops the consumer.
func (tc *tenantConsumer) stop(ctx context.Context, reason string) {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	tc.stopGen(ctx, reason)
}

// stopStartedBefore stops the live generation if it started before t, and reports whether it did: the check
// and the stop under one lock, so that a generation started in between is never the one stopped.
func (tc *tenantConsumer) stopStartedBefore(ctx context.Context, t time.Time, reason string) bool {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	if g := tc.gen.Load(); g == nil || !g.alive() || !g.started.Before(t) {
		return false
	}
	tc.stopGen(ctx, reason)
	return true
}

// stopGeneration drains and closes generation g if it is still the running one, and reports whether it was.
func (tc *tenantConsumer) stopGeneration(ctx context.Context, g *generation, reason string) bool {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	if tc.gen.Load() != g {
		return false
	}
	tc.stopGen(ctx, reason)
	return true
}

// handOver runs on the consume's goroutine: it passes the delivery to the store workers, which settle
// it themselves, or, when the generation is stopping, leaves it unacknowledged: the channel's close returns it
// to the queue (a nack now could reach the broker after the close).
func (tc *tenantConsumer) handOver(g *generation, d rabbitmq.Delivery) rabbitmq.Action {
	g.chanMu.RLock()
	defer g.chanMu.RUnlock()
	label := tc.rt.metrics.tenant(tc.id)
	if g.stopping.Load() {
		g.acks.register(d.Delivery, true)
		tc.rt.metrics.requeued.WithLabelValues(label, requeueStopping).Inc()
		return rabbitmq.Manual
	}
	tc.rt.metrics.inflight.WithLabelValues(label).Inc()
	// Registered before a worker can see it, so that no multiple ack passes over it.
	g.acks.register(d.Delivery, false)
	select {
	case g.pending <- &d:
		tc.wake(g)
		return rabbitmq.Manual
	case <-g.stopped:
		g.acks.register(d.Delivery, true)
		tc.rt.metrics.inflight.WithLabelValues(label).Dec()
		tc.rt.metrics.requeued.WithLabelValues(label, requeueStopping).Inc()
		return rabbitmq.Manual
	}
}

// workerIdle is how long a store worker waits for a delivery before it leaves; one starts again when a delivery
// arrives and no worker is idle.
const workerIdle = time.Second

// wake starts a store worker for a delivery just handed over, unless one is idle (it takes the delivery), the
// tenant's worker count runs already, or the generation stops (the delivery waits for the channel's close).
func (tc *tenantConsumer) wake(g *generation) {
	g.spawnMu.Lock()
	defer g.spawnMu.Unlock()
	if g.halted || g.idle > 0 || g.running >= g.workers {
		return
	}
	g.running++
	g.workersDone.Add(1)
	go tc.work(g)
}

// work is one store worker: it takes a batch of waiting deliveries and processes it, until none came for
// workerIdle or the generation stops; then it returns the deliveries still waiting to the queue.
func (tc *tenantConsumer) work(g *generation) {
	defer g.workersDone.Done()
	idle := time.NewTimer(workerIdle)
	defer idle.Stop()
	var batch []rabbitmq.Delivery
	for {
		d := tc.next(g, idle)
		if d == nil {
			return
		}
		if batch == nil {
			batch = make([]rabbitmq.Delivery, 0, tc.rt.opts.BatchSize)
		}
		batch = append(batch[:0], *d)
		batch = tc.fill(g, batch)
		tc.process(g, batch)
		clear(batch) // the bodies are not kept while the worker waits
	}
}

// next waits for a delivery for a store worker. It returns nil when the worker leaves: the generation stops (the
// deliveries still waiting go back to the queue), or none came for workerIdle and none waits.
func (tc *tenantConsumer) next(g *generation, idle *time.Timer) *rabbitmq.Delivery {
	for {
		if g.stopping.Load() {
			tc.requeueWaiting(g)
			g.spawnMu.Lock()
			g.running--
			g.spawnMu.Unlock()
			return nil
		}
		select {
		case d := <-g.pending:
			return d
		default:
		}
		g.spawnMu.Lock()
		g.idle++
		g.spawnMu.Unlock()
		idle.Reset(workerIdle)
		var d *rabbitmq.Delivery
		timedOut := false
		select {
		case d = <-g.pending:
		case <-g.stopped:
		case <-idle.C:
			timedOut = true
		}
		g.spawnMu.Lock()
		g.idle--
		// A delivery handed over before this check is seen here; one handed over after it finds this worker gone
		// (wake runs after the hand-over, under the same lock) and starts another.
		if timedOut && len(g.pending) == 0 {
			g.running--
			g.spawnMu.Unlock()
			return nil
		}
		g.spawnMu.Unlock()
		if d != nil {
			return d
		}
	}
}

// fill adds what is waiting to batch, up to BatchSize. When another worker of the tenant is storing right now
// (the tenant is busy) and the batch is not full, it lingers up to Linger for more: one insert of many rows costs
// PostgreSQL and the broker (one multiple ack) little more than one of a single row, and the other worker's
// transaction would make this one wait for its locks and WAL flush anyway. An idle tenant's worker never
// lingers, so light load adds no latency.
func (tc *tenantConsumer) fill(g *generation, batch []rabbitmq.Delivery) []rabbitmq.Delivery {
	size := tc.rt.opts.BatchSize
	var timer <-chan time.Time
	for len(batch) < size {
		select {
		case d := <-g.pending:
			batch = append(batch, *d)
			continue
		default:
		}
		if timer == nil {
			if tc.rt.opts.Linger <= 0 || g.storing.Load() == 0 {
				return batch
			}
			timer = time.After(tc.rt.opts.Linger)
		}
		select {
		case d := <-g.pending:
			batch = append(batch, *d)
		case <-timer:
			return batch
		case <-g.stopped:
			return batch
		}
	}
	return batch
}

func (tc *tenantConsumer) requeueWaiting(g *generation) {
	label := tc.rt.metrics.tenant(tc.id)
	for {
		select {
		case d := <-g.pending:
			tc.settle(g, *d, func() error { return d.Nack(false, true) })
			tc.rt.metrics.requeued.WithLabelValues(label, requeueStopping).Inc()
			tc.rt.metrics.inflight.WithLabelValues(label).Dec()
		default:
			return
		}
	}
}

// process stores a batch: each stored delivery is acked after the commit; one that can never be stored is
// dead-lettered at once. Other failures are classified (database.Classify): while the database is unavailable
// (unreachable, refusing, shutting down, read-only, out of disk, timed out) the worker reports it to the
// service's database gate and waits for the gate to open, then tries the same batch again, neither counting an
// attempt nor spending the retry budget; a failure of the moment (a deadlock, a lock wait) is retried with
// backoff, also uncounted. Only a failure about the data itself spends the retry budget, with exponential
// backoff; then the delivery is republished to the tenant's queue with its attempts counted (HeaderAttempts),
// or dead-lettered with the last error when they reach the delivery limit. When the generation stops first,
// the deliveries go back to the queue uncounted.
func (tc *tenantConsumer) process(g *generation, batch []rabbitmq.Delivery) {
	rt := tc.rt
	label := rt.metrics.tenant(tc.id)
	defer rt.metrics.inflight.WithLabelValues(label).Sub(float64(len(batch)))

	remaining := batch
	ds := make([]amqp.Delivery, 0, len(batch))
	backoff := rt.opts.RetryInitial // before another try after a failure that counts
	pause := rt.opts.RetryInitial   // before another try after a transient failure
	var spent time.Duration         // of the retry budget, by failures that count
	for attempt := 1; ; attempt++ {
		// Nobody stores while the database is unusable; a stop meanwhile returns the deliveries uncounted, as
		// does a stop during a backoff.
		if !tc.awaitDatabase(g) || attempt > 1 && g.stopping.Load() {
			tc.requeueStopping(g, remaining)
			return
		}
		ds = ds[:0]
		for _, d := range remaining {
			ds = append(ds, d.Delivery)
		}
		began := time.Now()
		g.storing.Add(1)
		errs := rt.handler.Handle(g.storeCtx, tc.id, ds)
		g.storing.Add(-1)
		took := time.Since(began)
		var retry, dead []rabbitmq.Delivery
		var deadRows []deadRow
		var lastErr error
		class := database.OK // the batch's failure: Unavailable over Transient over Data
		var failed *broker.ItemsFailed
		stored := make([]amqp.Delivery, 0, len(remaining))
		for i, d := range remaining {
			switch err := errs[i]; {
			case err == nil:
				stored = append(stored, d.Delivery)
			case errors.As(err, &failed):
				// Messages of an envelope that can never be stored; the others are stored. Each failed one becomes
				// a dead letter of its own, and the envelope is acked with them.
				tc.log.Warn("messages of an envelope can never be stored; dead-lettering them",
					zap.Int("messages", len(failed.Items)), zap.Error(err))
				dead = append(dead, d)
				for _, it := range failed.Items {
					deadRows = append(deadRows, rowFor(tc.id, it.Delivery, ReasonUndecodable, it.Err.Error(), attempts(d.Delivery)+1))
				}
			case broker.IsPermanent(err):
				tc.log.Warn("delivery can never be stored; dead-lettering it",
					zap.String("message_id", d.MessageId), zap.Error(err))
				dead = append(dead, d)
				deadRows = append(deadRows, rowsFor(tc.id, d.Delivery, ReasonUndecodable, err.Error(), attempts(d.Delivery)+1)...)
			default:
				retry = append(retry, d)
				if c := database.Classify(err); lastErr == nil || worse(c, class) {
					class, lastErr = c, err
				}
			}
		}
		if len(stored) > 0 {
			rt.gate.Succeeded()
		}
		tc.ackStored(g, stored)
		if len(dead) > 0 {
			tc.deadLetter(g, dead, deadRows)
		}
		if len(retry) == 0 {
			return
		}
		remaining = retry
		if g.stopping.Load() {
			tc.requeueStopping(g, remaining)
			return
		}
		if attempt == 1 || attempt%10 == 0 {
			tc.log.Warn("store failed; retrying with backoff", zap.Int("deliveries", len(remaining)), zap.Int("attempt", attempt),
				zap.Stringer("failure", class), zap.Bool("counts", class.Counts()), zap.Error(lastErr))
		}
		rt.metrics.retried.WithLabelValues(label).Add(float64(len(remaining)))
		switch class {
		case database.Unavailable:
			// The gate's one probe finds out when the database is back; the next round waits for it.
			rt.gate.Fail(lastErr)
			continue
		case database.Transient:
			select {
			case <-time.After(pause):
			case <-g.stopped:
			}
			pause = min(pause*2, maxBackoff)
			continue
		}
		spent += took
		if spent+backoff > rt.opts.RetryBudget {
			if !rt.gate.Available() {
				continue // the database went away meanwhile: no attempt counts until it is back
			}
			tc.log.Warn("store keeps failing; putting the deliveries back with their attempts counted",
				zap.Int("deliveries", len(remaining)), zap.Int("attempts", attempt), zap.Error(lastErr))
			tc.exhausted(g, remaining, lastErr)
			return
		}
		select {
		case <-time.After(backoff):
		case <-g.stopped:
		}
		spent += backoff
		backoff = min(backoff*2, maxBackoff)
	}
}

// worse reports whether failure class a says more about the database than b: a batch with one delivery that
// failed because the database is unavailable is retried as a whole, uncounted.
func worse(a, b database.Class) bool {
	rank := func(c database.Class) int {
		switch c {
		case database.Unavailable:
			return 3
		case database.Transient:
			return 2
		case database.Data:
			return 1
		}
		return 0
	}
	return rank(a) > rank(b)
}

// awaitDatabase waits until the database gate is open (true) or the generation stops first (false).
func (tc *tenantConsumer) awaitDatabase(g *generation) bool {
	select {
	case <-tc.rt.gate.Ready():
		return true
	default:
	}
	select {
	case <-tc.rt.gate.Ready():
		return true
	case <-g.stopped:
		return false
	}
}

// requeueStopping returns ds to the queue uncounted, as the generation stops.
func (tc *tenantConsumer) requeueStopping(g *generation, ds []rabbitmq.Delivery) {
	for _, d := range ds {
		tc.settle(g, d, func() error { return d.Nack(false, true) })
		tc.rt.metrics.requeued.WithLabelValues(tc.rt.metrics.tenant(tc.id), requeueStopping).Inc()
	}
}

// exhausted settles deliveries whose retry budget ran out: those that failed AMQP_DELIVERY_LIMIT times are
// dead-lettered with lastErr; the others are republished to the tenant's queue with HeaderAttempts incremented
// (confirmed, same id, body and headers) and acked after the confirm. So only real failures count, whatever
// the broker's x-delivery-count counts. When the republish fails, they go back to the queue uncounted.
func (tc *tenantConsumer) exhausted(g *generation, ds []rabbitmq.Delivery, lastErr error) {
	rt := tc.rt
	label := rt.metrics.tenant(tc.id)
	var dead, again []rabbitmq.Delivery
	var deadRows []deadRow
	var msgs []broker.Message
	for _, d := range ds {
		n := attempts(d.Delivery) + 1
		if n >= rt.opts.DeliveryLimit {
			dead = append(dead, d)
			deadRows = append(deadRows, rowsFor(tc.id, d.Delivery, ReasonRetriesExhausted, lastErr.Error(), n)...)
			continue
		}
		headers := map[string]any{}
		for k, v := range d.Headers {
			if k != "x-delivery-count" && k != "x-death" {
				headers[k] = v
			}
		}
		headers[HeaderAttempts] = int64(n)
		if t, ok := createdAt(d.Delivery); ok {
			headers[headerCreatedAt] = t.UnixMicro()
		}
		id := d.MessageId
		if id == "" {
			id = uuid.Must(uuid.NewV7()).String() // from now on, its retries are one message
		}
		again = append(again, d)
		msgs = append(msgs, broker.Message{Exchange: rt.opts.Exchange, RoutingKey: tc.id.String(), MessageID: id,
			Headers: headers, Body: d.Body, Mandatory: true})
	}
	if len(dead) > 0 {
		tc.deadLetter(g, dead, deadRows)
	}
	if len(again) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := rt.publisher.PublishAll(ctx, msgs); err != nil {
		tc.log.Warn("could not republish deliveries for another try; returning them to the queue",
			zap.Int("deliveries", len(again)), zap.Error(err))
		for _, d := range again {
			tc.settle(g, d, func() error { return d.Nack(false, true) })
		}
		rt.metrics.requeued.WithLabelValues(label, requeueRetryBudget).Add(float64(len(again)))
		return
	}
	for _, d := range again {
		tc.settle(g, d, func() error { return d.Ack(false) })
	}
	rt.metrics.requeued.WithLabelValues(label, requeueRetryBudget).Add(float64(len(again)))
}

const maxBackoff = 5 * time.Second

// settle acks, nacks or rejects d with fn unless the generation's channel is closed or closing (its close
// returns d to the queue), and logs a failure: the channel closed (a broker restart), and the broker
// redelivers the message, which idempotent storage absorbs.
func (tc *tenantConsumer) settle(g *generation, d rabbitmq.Delivery, fn func() error) {
	g.chanMu.RLock()
	defer g.chanMu.RUnlock()
	if g.closed {
		return
	}
	if err := fn(); err != nil {
		tc.log.Warn("could not settle delivery; the broker will redeliver it",
			zap.String("message_id", d.MessageId), zap.Error(err))
	}
	g.acks.settled(d.Delivery)
}

// whileOpen runs fn unless the generation's channel is closed or closing, ordered before its close like every
// settlement (the acker's timer sends through it).
func (g *generation) whileOpen(fn func()) {
	g.chanMu.RLock()
	defer g.chanMu.RUnlock()
	if !g.closed {
		fn()
	}
}

// ackStored hands stored deliveries to the generation's acker, which acks them (coalesced) unless the channel is
// closed or closing: its close returns them, and idempotent storage absorbs the redelivery.
func (tc *tenantConsumer) ackStored(g *generation, ds []amqp.Delivery) {
	if len(ds) == 0 {
		return
	}
	g.chanMu.RLock()
	defer g.chanMu.RUnlock()
	if g.closed {
		return
	}
	g.acks.stored(ds)
}

// The causes of a generation's store context's cancellation.
var (
	errStopped      = errors.New("consumer generation stopped")
	errDrainTimeout = errors.New("consumer drain timeout: store cancelled")
)

// startWait bounds how long a start waits to learn whether the consumer consumes.
const startWait = 10 * time.Second
