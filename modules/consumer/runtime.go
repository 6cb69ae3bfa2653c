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
	"go.uber.org/fx"
	"go.uber.org/zap"

	"github.com/acme/msgsvc/platform/broker"
	"github.com/acme/msgsvc/platform/database"
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
	BatchSize         int           // deliveries a worker stores in one insert at most
	Linger            time.Duration // how long a worker of a busy tenant waits to fill its batch (0: never)
	AckDelay          time.Duration // how long a multiple ack may wait for later stores (0: never)
	RetryInitial      time.Duration
	RetryBudget       time.Duration
	DrainTimeout      time.Duration
	// HandoverWait is how long a replica giving a tenant up (its view of the replica set changed, or it shuts
	// down) keeps consuming while it waits for the new owner to announce its consumer (make-before-break).
	HandoverWait time.Duration
	// HandoverLookback is how old an announcement of the new owner may be when a handover begins: the new owner
	// may see a change of the replica set, and start, before this replica's reconciliation gets to it.
	HandoverLookback  time.Duration
	ReconcileInterval time.Duration
	OrphanGrace       time.Duration // how long a tenant queue stays without a tenant before it is deleted
	ManagementURL     string        // RabbitMQ management API, to find orphan queues; optional
	AMQPURL           string        // names the virtual host whose queues the management API lists
}

// Placement tells which tenants this replica owns; cluster.Membership implements it.
type Placement interface {
	// Owns reports whether this replica runs tenant id's worker pool.
	Owns(id uuid.UUID) bool
	// Owner returns the replica that owns tenant id.
	Owner(id uuid.UUID) string
	// OnChange registers fn, called when ownership may have changed.
	OnChange(fn func())
	// Leave gives up every tenant: the other replicas take them over.
	Leave(ctx context.Context) error
}

// alone is the placement of a single replica: it owns every tenant.
type alone string

func (a alone) Owns(uuid.UUID) bool         { return true }
func (a alone) Owner(uuid.UUID) string      { return string(a) }
func (a alone) OnChange(func())             {}
func (a alone) Leave(context.Context) error { return nil }

// Runtime runs the consumers of the tenants this replica owns. Tenants are placed on the live replicas
// (Placement); a tenant's queue has a single active consumer, so that while ownership moves (the old owner
// drains, the new one has registered its consumer) the broker delivers to one of them only.
type Runtime struct {
	conn      *broker.Conn
	pool      *broker.ConsumerPool
	place     Placement
	publisher *broker.Publisher
	handler   Handler
	dir       events.TenantDirectory
	opts      Options
	log       *zap.Logger
	metrics   *Metrics
	dead      *DeadLetters
	gate      *database.Gate // whether the database can be used; nil: always

	starts *pacer // bounds the consumes running at once

	succ *successors // which other replicas announced they consume a tenant's queue
	ann  *announcer  // relays this replica's consumer starts; nil without a bus
	gift *announcer  // relays the tenants this replica begins to hand over; nil without a bus

	mu        sync.Mutex
	consumers map[uuid.UUID]*tenantConsumer
	deleted   map[uuid.UUID]time.Time // tenants heard deleted (StopDeleted) → when; no consumer starts for them again
	closed    bool
	started   bool
	leaving   bool // Shutdown began: it hands every tenant over itself

	orphans     map[string]time.Time       // queue name → when reconciliation first saw it without a tenant
	mgmtDown    bool                       // the management API did not answer at the last reconciliation
	pass        uint64                     // reconciliation passes so far (inspectNeeded's rotation)
	reconcileMu sync.Mutex                 // held by a reconciliation pass: orphans, mgmtDown, warnedNoSAC and pass are its
	warnedNoSAC map[string]bool            // tenant queues without single active consumer already logged
	unserved    map[uuid.UUID]unservedMark // findUnserved's marks from the last statistics listing; reconcileMu
	stalled     map[uuid.UUID]unservedMark // findStalled's marks from the last inspection of each queue; reconcileMu
	lastStats   time.Time                  // when a pass last asked for the listing with statistics; reconcileMu
	noQuorum    bool                       // the last listing showed no quorum tenant queue; reconcileMu
	brokerMajor int                        // RabbitMQ's major version as the management API last told it (0: unknown); reconcileMu
	lastListing *queueListing              // the last pass's own listing (nil: none, or it failed); reconcileMu
	listedPass  uint64                     // the pass that took lastListing; reconcileMu
	noSAC       map[string]bool            // tenant queues without single active consumer at the last listing; guarded by mu
	recheck     map[uuid.UUID]int          // tenants started again after a lost connection → passes left that inspect them; guarded by mu
	kick        chan struct{}              // asks the reconciliation loop for a run now (ownership changed)
	hurryMu     sync.Mutex
	hurry       chan struct{}      // the loop's pass under way: Kick closes it (broker.WithHurry); nil when none or closed; hurryMu
	creations   periodic.Burst     // tenant creations, in the whole cluster: passes make way for their bursts
	loopCtx     context.Context    // ends when the reconciliation loop is told to stop (Shutdown): the loop's passes run in it
	stopLoop    context.CancelFunc // ends loopCtx
	loopDone    chan struct{}
	firstRun    chan struct{} // closed after the first reconciliation run
	firstOnce   sync.Once
}

// RuntimeParams are the Runtime's dependencies, as fx fills them.
type RuntimeParams struct {
	fx.In

	Conn      *broker.Conn
	Pool      *broker.ConsumerPool
	Publisher *broker.Publisher
	Handler   Handler
	Directory events.TenantDirectory
	// Placement tells which tenants this replica owns; without one (nil) it owns every tenant.
	Placement   Placement    `optional:"true"`
	DeadLetters *DeadLetters // where the consumers dead-letter
	Options     Options
	Metrics     *Metrics
	Log         *zap.Logger
	// Bus relays this replica's consumer starts to the other replicas (events.TenantsConsumed), for
	// make-before-break handovers. Without one (nil) nothing is announced.
	Bus *events.Bus `optional:"true"`

	// Gate closes while the database is unusable; workers wait for it. Without one (nil) they never wait.
	Gate *database.Gate `optional:"true"`
}

// NewRuntime returns a runtime; Start brings the consumers of the tenants it owns up.
func NewRuntime(p RuntimeParams) *Runtime {
	place, opts := p.Placement, p.Options
	if place == nil {
		place = alone(opts.ReplicaID)
	}
	r := &Runtime{conn: p.Conn, pool: p.Pool, place: place, publisher: p.Publisher, handler: p.Handler, dir: p.Directory,
		opts: opts, metrics: p.Metrics, dead: p.DeadLetters, gate: p.Gate, log: p.Log.Named("consumer"),
		consumers: map[uuid.UUID]*tenantConsumer{}, deleted: map[uuid.UUID]time.Time{}, orphans: map[string]time.Time{},
		warnedNoSAC: map[string]bool{}, kick: make(chan struct{}, 1), loopDone: make(chan struct{}), firstRun: make(chan struct{}),
		starts: newPacer(startParallelism, p.Metrics), succ: newSuccessors(time.Now), noSAC: map[string]bool{}, recheck: map[uuid.UUID]int{},
		stalled: map[uuid.UUID]unservedMark{}}
	r.loopCtx, r.stopLoop = context.WithCancel(context.Background())
	if p.Bus != nil {
		r.ann = newAnnouncer("started consumers", func(ctx context.Context, tenants []uuid.UUID) error {
			return events.Publish(ctx, p.Bus, events.TenantsConsumed{Replica: opts.ReplicaID, Tenants: tenants})
		})
		r.gift = newAnnouncer("handed over", func(ctx context.Context, tenants []uuid.UUID) error {
			return events.Publish(ctx, p.Bus, events.TenantsHandedOver{Replica: opts.ReplicaID, Tenants: tenants})
		})
	}
	place.OnChange(r.Kick)
	return r
}

// startParallelism bounds how many consumes (channel, qos and basic.consume, until the broker counts the
// consumer) run at once on this replica: after a pooled connection dropped, its ~1,800 consumers start again
// this many at a time rather than all together.
const startParallelism = reconcileParallelism

// pacer is a semaphore that counts how many hold it, for the metrics.
type pacer struct {
	slots   chan struct{}
	metrics *Metrics
}

func newPacer(n int, m *Metrics) *pacer { return &pacer{slots: make(chan struct{}, n), metrics: m} }

// acquire takes a slot, or returns ctx's error when it ends first.
func (p *pacer) acquire(ctx context.Context) error {
	select {
	case p.slots <- struct{}{}:
	case <-ctx.Done():
		return context.Cause(ctx)
	}
	n := len(p.slots)
	p.metrics.startsInFlight.Set(float64(n))
	p.metrics.startConcurrency.Observe(float64(n))
	return nil
}

func (p *pacer) release() {
	<-p.slots
	p.metrics.startsInFlight.Set(float64(len(p.slots)))
}

// stopCancelled closes generation g of the tenant's consumer after the broker cancelled it (its queue was deleted,
// or the node holding it went away), and asks for a reconciliation pass now, which starts the consumer again. The
// pass, not this, starts it, because it declares a
// missing queue before it consumes: a consume that reaches a quorum queue being declared (by an operator, or a
// pass) before the queue runs makes RabbitMQ close the whole connection (541 INTERNAL_ERROR), and with it every
// consumer it carries. Passes run one at a time, so this one follows any declare a pass makes.
func (r *Runtime) stopCancelled(tc *tenantConsumer, g *generation) {
	if g.stopping.Load() {
		return // the generation stops anyway (a deletion, a handover, a resize, the shutdown)
	}
	tc.log.Warn("the broker cancelled the tenant's consumer (its queue was deleted or became unavailable); " +
		"closing its channel, and reconciliation starts it again now")
	ctx, cancel := context.WithTimeout(context.Background(), r.opts.DrainTimeout)
	defer cancel()
	tc.stopGeneration(ctx, g, "consumer cancelled")
	r.Kick()
}

// replaceLost starts the tenant's consumer again after its connection dropped (paced by start, like every
// start), retrying with backoff while the tenant is still this replica's and nothing else replaced it.
func (r *Runtime) replaceLost(tc *tenantConsumer, g *generation) {
	r.metrics.restartsLost.Inc()
	backoff := r.opts.RetryInitial
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			select {
			case <-r.loopCtx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, maxBackoff)
		}
		ctx, cancel := context.WithTimeout(context.Background(), r.opts.DrainTimeout+startWait)
		tc.mu.Lock()
		// Asked under tc.mu: Stop takes the tenant out of the map before it stops the consumer under tc.mu, so a
		// stop that ran meanwhile, or waits for this lock, is seen here and not undone by a start.
		if r.consumer(tc.id, false) != tc {
			tc.mu.Unlock()
			cancel()
			return // stopped meanwhile
		}
		if cur := tc.gen.Load(); cur != nil && cur != g {
			tc.mu.Unlock()
			cancel()
			return // already replaced (reconciliation, a resize)
		}
		workers := g.workers
		if tc.gen.Load() == g {
			tc.stopGen(ctx, "connection lost")
		}
		var err error
		started := false
		if r.place.Owns(tc.id) && !r.isClosed() {
			err = tc.start(ctx, workers, "connection lost")
			started = err == nil
		}
		tc.mu.Unlock()
		cancel()
		r.recordStart(tc, err)
		if started {
			r.mu.Lock()
			r.recheck[tc.id] = recheckPasses
			r.mu.Unlock()
		}
		if err == nil {
			return
		}
	}
}

// Kick asks for a reconciliation run now, as when the set of live replicas changed. The loop's pass under way,
// if any, gives up its waits on queues the broker does not answer about (broker.WithHurry), so that the pass
// asked for does not wait up to broker.AnswerTimeout behind one of them.
func (r *Runtime) Kick() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
	r.hurryMu.Lock()
	if r.hurry != nil {
		close(r.hurry)
		r.hurry = nil
	}
	r.hurryMu.Unlock()
}

// hurried sets the hurry channel of the loop's next pass (nil: none under way) and returns it.
func (r *Runtime) hurried(next chan struct{}) <-chan struct{} {
	r.hurryMu.Lock()
	defer r.hurryMu.Unlock()
	r.hurry = next
	return next
}

// kicked reports whether a reconciliation was asked for (Kick) and has not started yet.
func (r *Runtime) kicked() bool { return len(r.kick) > 0 }

// Owns reports whether this replica runs tenant id's worker pool.
func (r *Runtime) Owns(id uuid.UUID) bool { return r.place.Owns(id) }

// DeadLetterExchange is the exchange tenants' rejected and exhausted deliveries go to.
func (r *Runtime) DeadLetterExchange() string { return DeadLetterExchange(r.opts.Exchange) }

// queues returns a tenant's queue and the binding of the shared dead-letter queue for it.
func (r *Runtime) queues(id uuid.UUID) []broker.Queue {
	args := amqp.Table{
		"x-queue-type":              r.opts.QueueType,
		"x-dead-letter-exchange":    r.DeadLetterExchange(),
		"x-dead-letter-routing-key": id.String(),
		// One consumer at a time receives: a new owner's consumer waits until the old owner's drained and left.
		"x-single-active-consumer": true,
	}
	if r.opts.QueueType == "quorum" {
		args["x-delivery-limit"] = brokerDeliveryLimit(r.opts.DeliveryLimit)
	}
	return []broker.Queue{
		r.opts.deadBinding(id),
		{Name: QueueName(id), Args: args, Exchange: r.opts.Exchange, Key: id.String()},
	}
}

// DeclareTopology declares a tenant's queue (bound to the exchange with the tenant id as routing key) and
// binds the shared dead-letter queue for it. It is idempotent.
func (r *Runtime) DeclareTopology(ctx context.Context, id uuid.UUID) error {
	if err := r.conn.DeclareQueues(ctx, r.queues(id)...); err != nil {
		return fmt.Errorf("declare queues of tenant %s: %w", id, err)
	}
	return nil
}

// DeleteTopology deletes a tenant's queue (and the dead-letter queue of older versions) with whatever they hold.
// A delete the broker refuses is tried again after deleteRetries, so that a deletion, a failed creation's
// cleanup and a pass's take-back leave no queue to the orphan cleanup (minutes later, never without the
// management API) for a failure that was over in a moment.
func (r *Runtime) DeleteTopology(ctx context.Context, id uuid.UUID) error {
	err := r.deleteTopologyOnce(ctx, id)
	for _, pause := range deleteRetries {
		if err == nil || errors.Is(err, broker.ErrUnanswered) {
			break
		}
		r.log.Warn("could not delete a tenant's queues; trying again", zap.String("tenant_id", id.String()),
			zap.Duration("in", pause), zap.Error(err))
		select {
		case <-ctx.Done():
			return err
		case <-time.After(pause):
		}
		err = r.deleteTopologyOnce(ctx, id)
	}
	return err
}

// deleteRetries are the pauses before DeleteTopology's second and third attempts: a failure that is not the
// queue's own (a connection dropped mid-call, a channel the broker closed) is over by then. A queue that does not
// answer is not asked again (ErrUnanswered: every call about it fails until it answers).
var deleteRetries = []time.Duration{250 * time.Millisecond, time.Second}

func (r *Runtime) deleteTopologyOnce(ctx context.Context, id uuid.UUID) error {
	if err := r.conn.DeleteQueues(ctx, QueueName(id), DeadLetterQueueName(id)); err != nil {
		return fmt.Errorf("delete queues of tenant %s: %w", id, err)
	}
	if r.dead != nil {
		return r.dead.unbind(ctx, id)
	}
	return nil
}

// AwaitNoConsumers waits until the tenant's queue has no consumer (every replica's consumer of it stopped), or
// the drain timeout and a margin for the event to travel passed, or the queue is gone, or the broker does not
// answer about the queue (an earlier wait gave up on it: asking again would only fail until the deadline).
func (r *Runtime) AwaitNoConsumers(ctx context.Context, id uuid.UUID) {
	ctx, cancel := context.WithTimeout(ctx, r.opts.DrainTimeout+2*time.Second)
	defer cancel()
	for {
		st, err := r.conn.InspectQueue(ctx, QueueName(id))
		if err == nil && (!st.Exists || st.Consumers == 0) {
			return
		}
		if errors.Is(err, broker.ErrUnanswered) {
			r.log.Warn("the broker does not answer about a deleted tenant's queue; not waiting for its consumers to stop",
				zap.String("tenant_id", id.String()), zap.Error(err))
			return
		}
		select {
		case <-ctx.Done():
			r.log.Warn("a consumer of a deleted tenant's queue is still running on another replica; deleting the queue anyway",
				zap.String("tenant_id", id.String()), zap.Int("consumers", st.Consumers), zap.Error(err))
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (r *Runtime) consumer(id uuid.UUID, create bool) *tenantConsumer {
	r.mu.Lock()
	defer r.mu.Unlock()
	tc := r.consumers[id]
	if _, gone := r.deleted[id]; tc == nil && create && !r.closed && !gone {
		tc = &tenantConsumer{rt: r, id: id, log: tenantLog{base: r.log, id: id}}
		r.consumers[id] = tc
	}
	return tc
}

// Ensure makes the tenant's consumer run with workers workers, starting or resizing it as needed.
func (r *Runtime) Ensure(ctx context.Context, id uuid.UUID, workers int, reason string) error {
	_, err := r.ensure(ctx, id, workers, reason, time.Time{})
	return err
}

// ensure is Ensure, and reports whether it started a consumer that now runs: reconciliation counts a repair
// only then, not when another start (an event's, a lost connection's replacement) made it run meanwhile or the
// start failed.
func (r *Runtime) ensure(ctx context.Context, id uuid.UUID, workers int, reason string, listed time.Time) (started bool, err error) {
	tc := r.consumer(id, true)
	if tc == nil {
		if r.wasDeleted(id) {
			return false, nil // a reconciliation pass's tenant list, read before the deletion
		}
		return false, fmt.Errorf("consumer runtime is stopped")
	}
	started, err = tc.ensure(ctx, workers, reason, listed)
	r.recordStart(tc, err)
	if err != nil {
		return false, fmt.Errorf("start consumer of tenant %s: %w", id, err)
	}
	return started, nil
}

// recordStart keeps the outcome of a consumer's start for its status, the log and the metrics.
func (r *Runtime) recordStart(tc *tenantConsumer, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	was := tc.lastErr != ""
	if err == nil {
		tc.lastErr = ""
		if was {
			r.metrics.failing.Dec()
		}
		return
	}
	r.metrics.startFailures.Inc()
	tc.lastErr = err.Error()
	if !was {
		r.metrics.failing.Inc()
	}
	tc.log.Warn("tenant consumer failed to start; reconciliation retries it", zap.Error(err))
}

// Stop drains and stops the tenant's consumer and forgets it.
func (r *Runtime) Stop(ctx context.Context, id uuid.UUID, reason string) {
	r.stop(ctx, id, reason, false)
}

// StopDeleted is Stop for a tenant that was deleted, and no consumer starts for it on this replica from then on.
// A reconciliation pass that read the tenant list before the deletion would otherwise start a new one on the
// queue while the deletion waits for the queue's consumers to leave: the deletion waited for it (up to the drain
// timeout), or deleted the queue under it.
func (r *Runtime) StopDeleted(ctx context.Context, id uuid.UUID, reason string) {
	r.stop(ctx, id, reason, true)
}

// deletedMemory is how long StopDeleted keeps a deleted tenant from starting again: far longer than a
// reconciliation pass, whose tenant list is the only stale one (tenant ids are never reused).
const deletedMemory = 10 * time.Minute

func (r *Runtime) wasDeleted(id uuid.UUID) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.deleted[id]
	return ok
}

// forgetDeleted drops the deleted tenants older than deletedMemory; a reconciliation pass calls it.
func (r *Runtime) forgetDeleted(now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for id, at := range r.deleted {
		if now.Sub(at) > deletedMemory {
			delete(r.deleted, id)
		}
	}
}

func (r *Runtime) stop(ctx context.Context, id uuid.UUID, reason string, deleted bool) {
	r.mu.Lock()
	if deleted {
		r.deleted[id] = time.Now()
	}
	tc := r.consumers[id]
	delete(r.consumers, id)
	if tc != nil && tc.lastErr != "" {
		tc.lastErr = ""
		r.metrics.failing.Dec()
	}
	r.mu.Unlock()
	if tc != nil {
		tc.stop(ctx, reason)
		r.metrics.forget(id)
	}
}

// running counts the consumers that run.
func (r *Runtime) running() int {
	r.mu.Lock()
	all := make([]*tenantConsumer, 0, len(r.consumers))
	for _, tc := range r.consumers {
		all = append(all, tc)
	}
	r.mu.Unlock()
	n := 0
	for _, tc := range all {
		if tc.running() {
			n++
		}
	}
	return n
}

// Workers returns the worker count of the tenant's running consumer, 0 when none runs.
func (r *Runtime) Workers(id uuid.UUID) int {
	tc := r.consumer(id, false)
	if tc == nil {
		return 0
	}
	if g := tc.gen.Load(); g != nil && g.alive() {
		return g.workers
	}
	return 0
}

// Start declares the exchanges and starts reconciliation, whose first run brings the topology and consumer of
// every tenant this replica owns up in the background, paced (reconcileParallelism at a time), so that the
// replica answers /readyz at once however many tenants it has. It fails only when the broker does not answer;
// a tenant that cannot start is retried, logged, counted and shown in its status.
func (r *Runtime) Start(ctx context.Context) error {
	if err := r.conn.DeclareExchange(ctx, r.opts.Exchange, amqp.ExchangeDirect); err != nil {
		return fmt.Errorf("consumer: declare exchange: %w", err)
	}
	if err := r.conn.DeclareExchange(ctx, r.DeadLetterExchange(), amqp.ExchangeDirect); err != nil {
		return fmt.Errorf("consumer: declare dead-letter exchange: %w", err)
	}
	r.mu.Lock()
	r.started = true
	r.mu.Unlock()
	r.Kick()
	go r.loop()
	if r.ann != nil {
		go r.ann.loop(r.loopCtx.Done(), r.log)
		go r.gift.loop(r.loopCtx.Done(), r.log)
	}
	return nil
}

// Started returns a channel closed after the first reconciliation run since Start finished: by then every tenant
// this replica owns has its consumer, or a recorded failure.
func (r *Runtime) Started() <-chan struct{} { return r.firstRun }

// loop reconciles every ReconcileInterval, and at once when kicked. A pass in its turn, and its inspections in
// turn (inspectPacer), make way for a burst of tenant creations anywhere in the cluster (periodic.Burst), for up to
// one interval each: at 10,000 tenants on two cores, the start of a pass (the tenant list, the management API's
// listing, the first repairs) took some 0.7 s of the box's CPU, and the creations of the block of 1,000 it fell
// in went at 0.77 × the rate of the first block. A pass a kick asks for (a consumer cancelled, the replicas
// changed, a start) starts at once, and a kick ends a wait under way; only the inspections in turn of a pass (the
// safety net) still make way. A pass in its turn comes at most two intervals after the last.
func (r *Runtime) loop() {
	defer close(r.loopDone)
	t := time.NewTicker(r.opts.ReconcileInterval)
	defer t.Stop()
	for {
		select {
		case <-r.loopCtx.Done():
			return
		case <-t.C:
			// A pass in its turn makes way for a burst of tenant creations, for up to one interval; a kick
			// meanwhile ends the wait.
			if r.creations.Yield(r.loopCtx, r.opts.ReconcileInterval, r.kicked); r.loopCtx.Err() != nil {
				return
			}
		case <-r.kick:
		}
		// The pass about to start serves a kick that came meanwhile: it lists everything after it.
		select {
		case <-r.kick:
		default:
		}
		// A pass ends when the loop is stopped: a shutdown does not wait for its calls to the broker (up to
		// broker.AnswerTimeout for a queue that does not answer). A kick meanwhile cuts those waits short.
		ctx, cancel := context.WithTimeout(broker.WithHurry(r.loopCtx, r.hurried(make(chan struct{}))),
			max(r.opts.ReconcileInterval, 5*time.Minute))
		began := time.Now()
		err := r.Reconcile(ctx)
		cancel()
		r.hurried(nil)
		// The next turn is an interval after this pass, however long it waited.
		t.Reset(r.opts.ReconcileInterval)
		if err != nil && r.loopCtx.Err() == nil { // a shutdown ends a pass (its paced inspections, often) without harm
			r.log.Warn("reconciliation incomplete; the next run retries", zap.Error(err))
		}
		r.firstOnce.Do(func() {
			r.log.Info("start-up reconciliation done", zap.Duration("took", time.Since(began)),
				zap.Int("consumers", r.running()))
			close(r.firstRun)
		})
	}
}

// Shutdown leaves the placement (the other replicas take this one's tenants; their consumers wait until this
// one's stop), stops reconciliation and drains every consumer; queues and their messages stay. Each consumer
// keeps consuming until the replica taking its tenant over announced its own consumer (make-before-break), or
// that replica announced nothing for HandoverWait, and never so long that the drain would not fit in ctx's deadline.
func (r *Runtime) Shutdown(ctx context.Context) error {
	// The others take this replica's tenants once it left: an announcement from before is of another handover.
	leaving := time.Now()
	// Leaving changes the placement, which kicks a reconciliation: it must not take this replica, which owns
	// nothing from now on, for a fenced one and stop every consumer at once.
	r.mu.Lock()
	r.leaving = true
	r.mu.Unlock()
	if err := r.place.Leave(ctx); err != nil {
		r.log.Warn("could not leave the replica set", zap.Error(err))
	}
	r.mu.Lock()
	stopLoop := r.started && !r.closed
	r.closed = true
	all := make([]*tenantConsumer, 0, len(r.consumers))
	for _, tc := range r.consumers {
		all = append(all, tc)
	}
	r.consumers = map[uuid.UUID]*tenantConsumer{}
	r.mu.Unlock()
	if stopLoop {
		r.stopLoop()
		select {
		case <-r.loopDone:
		case <-ctx.Done():
		}
	}
	// Each consumer waits while the new owner keeps announcing consumer starts (HandoverWait after its last), up
	// to handoverCap × HandoverWait, and never past what the drain and the stop hooks after this one need.
	wait := handoverCap * r.opts.HandoverWait
	if deadline, ok := ctx.Deadline(); ok {
		wait = min(wait, time.Until(deadline)-r.opts.DrainTimeout-shutdownReserve)
	}
	waitCtx, cancel := context.WithTimeout(ctx, max(wait, 0))
	defer cancel()
	var (
		wg          sync.WaitGroup
		unannounced atomic.Int64
	)
	for _, tc := range all {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// No other replica is live (no owner, or this one): nobody is going to announce.
			if owner := r.place.Owner(tc.id); owner != "" && owner != r.opts.ReplicaID && r.succ.waitProgress(waitCtx, tc.id, leaving, owner, r.opts.HandoverWait, nil) == "" {
				unannounced.Add(1)
				r.metrics.handoversUnannounced.Inc()
			}
			tc.stop(ctx, "shutdown")
		}()
	}
	// A consumer's stop ends with its channel's close, which RabbitMQ answers only once every queue the channel
	// used did, or after its 15 s channel operation timeout: a queue that does not answer must not take the
	// shutdown past its deadline. The connections close after this hook, and with them such channels.
	stopped := make(chan struct{})
	go func() {
		wg.Wait()
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-ctx.Done():
		r.log.Warn("consumers still stopping at the shutdown deadline (a queue RabbitMQ does not answer about); "+
			"their connections close now", zap.Int("consumers", len(all)))
		return ctx.Err()
	}
	r.log.Info("all consumers stopped", zap.Int("consumers", len(all)),
		zap.Int64("without_successor_announced", unannounced.Load()))
	return nil
}

// shutdownReserve is the part of the shutdown timeout left, beyond the drain timeout, to the stop hooks that run
// after the consumers' (dead letters, broker, database).
const shutdownReserve = 2 * time.Second
