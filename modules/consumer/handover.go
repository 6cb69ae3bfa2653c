package consumer

import (
	"context"
	"sync"
	"time"

	"github.com/google/uuid"
	"go.uber.org/zap"

	"github.com/acme/msgsvc/platform/events"
)

// Make-before-break handover. A tenant queue has a single active consumer: a second consumer registers and waits,
// and the broker makes it active the moment the active one cancels. So a replica that gives a tenant up (its view
// of the replica set changed, or it shuts down) keeps consuming until the replica taking the tenant over has
// announced that its consumer of the queue started ("replica R consumes tenants …", relayed to every replica as
// events.TenantsConsumed), or until a bound passed; only then does it drain and cancel. A replica whose lease ran
// out (fenced) does not wait: it stops at once, before the others may take its tenants over.

// announceDelay is how long the announcer collects consumer starts before it relays them in one event: in a
// rolling restart hundreds of tenants start within a second. It also leaves time for the consume itself: while
// the old owner's consumer is active, a start returns as soon as it sent its consume (RabbitMQ 3.10 counts only
// a quorum queue's active consumer, so the waiting one cannot be seen, and the start does not wait
// for its consume's consume-ok), and the old owner must not cancel before the broker registered it.
const announceDelay = 250 * time.Millisecond

// leaseHolder is implemented by a Placement that can tell whether this replica holds its ownership lease
// (cluster.Membership). A placement that cannot tell counts as not holding one: its consumers stop at once.
type leaseHolder interface {
	// Holds reports whether this replica holds its lease now.
	Holds() bool
}

// successors records the announcements of other replicas that they consume a tenant's queue. It is safe for
// concurrent use; waiters are woken on a broadcast channel, never by polling.
type successors struct {
	now func() time.Time

	mu       sync.Mutex
	seen     map[uuid.UUID]announcement // tenant → the last announcement of another replica that it consumes its queue
	lastFrom map[string]time.Time       // replica → when its last announcement arrived (the process's clock)
	changed  chan struct{}              // closed and replaced at every record
}

// announcement is another replica's consumer start as this replica heard of it.
type announcement struct {
	replica string
	at      time.Time // when it arrived here
}

func newSuccessors(now func() time.Time) *successors {
	return &successors{now: now, seen: map[uuid.UUID]announcement{}, lastFrom: map[string]time.Time{}, changed: make(chan struct{})}
}

// record notes that replica consumes the queues of tenants.
func (s *successors) record(replica string, tenants []uuid.UUID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	at := s.now()
	for _, id := range tenants {
		s.seen[id] = announcement{replica: replica, at: at}
	}
	s.lastFrom[replica] = time.Now()
	close(s.changed)
	s.changed = make(chan struct{})
}

// forget drops what was announced for tenant id: this replica consumes it now, so an announcement made before
// says nothing about the next handover.
func (s *successors) forget(id uuid.UUID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.seen, id)
}

// lookup returns the replica whose announcement that it consumes tenant id arrived at or after since ("" when
// none did), a channel closed at the next record, and when owner's last announcement of any tenant arrived.
func (s *successors) lookup(id uuid.UUID, since time.Time, owner string) (string, <-chan struct{}, time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.seen[id]
	if !ok || a.at.Before(since) {
		return "", s.changed, s.lastFrom[owner]
	}
	return a.replica, s.changed, s.lastFrom[owner]
}

// wait returns the replica whose announcement that it consumes tenant id arrived at or after since: at once when
// one did already, else as soon as one does; "" when ctx ended or stop closed first. An older announcement may
// be of a consumer that stopped since (a view of the replica set that was briefly wrong, a replica restarted).
func (s *successors) wait(ctx context.Context, id uuid.UUID, since time.Time, stop <-chan struct{}) string {
	return s.waitProgress(ctx, id, since, "", 0, stop)
}

// waitProgress is wait that also gives up once owner (the replica expected to take tenant id over) has announced
// nothing for quiet, counted from the later of the call and its last announcement of any tenant. A new owner that
// is starting its share of a rolling restart (hundreds or thousands of consumers, paced) keeps announcing as it
// goes, so the replica giving tenants up keeps consuming until it reaches theirs, however long that takes, while
// an owner that went quiet (stuck, gone) is given up on after quiet. quiet ≤ 0: only ctx and stop bound it.
func (s *successors) waitProgress(ctx context.Context, id uuid.UUID, since time.Time, owner string, quiet time.Duration, stop <-chan struct{}) string {
	began := time.Now()
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		replica, changed, last := s.lookup(id, since, owner)
		if replica != "" {
			return replica
		}
		var idle <-chan time.Time
		if quiet > 0 {
			left := time.Until(later(began, last).Add(quiet))
			if left <= 0 {
				return ""
			}
			if timer == nil {
				timer = time.NewTimer(left)
			} else {
				timer.Reset(left)
			}
			idle = timer.C
		}
		select {
		case <-changed:
		case <-idle:
		case <-ctx.Done():
			return ""
		case <-stop:
			return ""
		}
	}
}

// later returns the later of a and b.
func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// announcer relays tenants to the other replicas in batches: those whose consumer started on this replica
// (events.TenantsConsumed), or those it begins to hand over (events.TenantsHandedOver).
type announcer struct {
	publish func(ctx context.Context, tenants []uuid.UUID) error
	what    string // what the tenants are, for the log

	mu      sync.Mutex
	pending []uuid.UUID
	kick    chan struct{}
}

func newAnnouncer(what string, publish func(context.Context, []uuid.UUID) error) *announcer {
	return &announcer{publish: publish, what: what, kick: make(chan struct{}, 1)}
}

// add queues tenant id's announcement; the loop relays it within announceDelay.
func (a *announcer) add(id uuid.UUID) {
	a.mu.Lock()
	a.pending = append(a.pending, id)
	a.mu.Unlock()
	select {
	case a.kick <- struct{}{}:
	default:
	}
}

// loop relays the queued announcements until stop closes.
func (a *announcer) loop(stop <-chan struct{}, log *zap.Logger) {
	for {
		select {
		case <-stop:
			return
		case <-a.kick:
		}
		select {
		case <-stop:
			return
		case <-time.After(announceDelay):
		}
		a.mu.Lock()
		batch := a.pending
		a.pending = nil
		a.mu.Unlock()
		if len(batch) == 0 {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := a.publish(ctx, batch); err != nil {
			// The replicas giving these tenants up drain when their wait ends instead; the new owners start the
			// consumers at their next reconciliation.
			log.Warn("could not relay to the other replicas", zap.String("tenants_are", a.what), zap.Int("tenants", len(batch)), zap.Error(err))
		}
		cancel()
	}
}

// Consumed records that another replica announced it consumes the queues of e.Tenants (make-before-break: this
// replica, giving one of them up, drains its consumer once it has seen this).
func (r *Runtime) Consumed(e events.TenantsConsumed) {
	if e.Replica == r.opts.ReplicaID {
		return
	}
	r.succ.record(e.Replica, e.Tenants)
}

// HandedOver kicks a reconciliation when another replica began to hand over a tenant this replica owns and runs
// no consumer of: it may never have heard of the tenant (a creation is relayed only to the replicas its replica
// sees, and this one may have joined a moment before), and would otherwise start it at its next pass only
// (RECONCILE_INTERVAL), while the replica giving it up drains after HandoverWait.
func (r *Runtime) HandedOver(e events.TenantsHandedOver) {
	if e.Replica == r.opts.ReplicaID {
		return
	}
	for _, id := range e.Tenants {
		if r.place.Owns(id) && r.consumer(id, false) == nil {
			r.log.Info("another replica hands over a tenant this replica runs no consumer of; reconciling now",
				zap.String("tenant_id", id.String()), zap.String("from", e.Replica), zap.Int("handed_over", len(e.Tenants)))
			r.Kick()
			return
		}
	}
}

// announce queues the announcement that this replica consumes tenant id's queue.
func (r *Runtime) announce(id uuid.UUID) {
	r.succ.forget(id)
	if r.ann != nil {
		r.ann.add(id)
	}
}

// holdsLease reports whether this replica holds its ownership lease; false when the placement cannot tell.
func (r *Runtime) holdsLease() bool {
	h, ok := r.place.(leaseHolder)
	return ok && h.Holds()
}

// handoverCap bounds, in HandoverWaits, how long a replica giving a tenant up keeps consuming while the new owner
// is still announcing other tenants' starts.
const handoverCap = 10

// handOver gives up tenant id's consumer make-before-break, in the background: it keeps consuming until another
// replica announced it consumes the queue, or the new owner announced nothing for HandoverWait (it goes on
// announcing while it starts its share of many tenants; handoverCap × HandoverWait at most), then drains and stops, unless the tenant is
// this replica's again by then. A handover already under way is left alone; a Stop meanwhile (a fenced replica,
// a deletion) stops the consumer at once, and the handover then finds nothing to stop.
func (r *Runtime) handOver(id uuid.UUID) {
	tc := r.consumer(id, false)
	if tc == nil || !tc.handing.CompareAndSwap(false, true) {
		return
	}
	r.mu.Lock()
	noSAC, leaving := r.noSAC[QueueName(id)], r.leaving
	r.mu.Unlock()
	if leaving {
		tc.handing.Store(false)
		return // Shutdown hands every tenant over
	}
	if r.gift != nil {
		r.gift.add(id) // the new owner may not know the tenant yet
	}
	go func() {
		defer tc.handing.Store(false)
		successor := ""
		if !noSAC {
			// A queue without single active consumer would be consumed by both replicas while this one waited.
			// The new owner may have seen the change, started and announced before this replica saw it (up to a
			// heartbeat interval, and however long this replica's reconciliation was busy).
			since := time.Now().Add(-r.opts.HandoverLookback)
			ctx, cancel := context.WithTimeout(context.Background(), handoverCap*r.opts.HandoverWait)
			successor = r.succ.waitProgress(ctx, id, since, r.place.Owner(id), r.opts.HandoverWait, r.loopCtx.Done())
			cancel()
		}
		select {
		case <-r.loopCtx.Done():
			return // shutting down: Shutdown hands every tenant over
		default:
		}
		if r.place.Owns(id) {
			return // this replica's again
		}
		if successor == "" {
			r.metrics.handoversUnannounced.Inc()
		}
		r.log.Info("tenant moved to another replica; draining its consumer", zap.String("tenant_id", id.String()),
			zap.String("owner", r.place.Owner(id)), zap.String("announced_by", successor))
		r.metrics.handovers.Inc()
		ctx, cancel := context.WithTimeout(context.Background(), r.opts.DrainTimeout+startWait)
		defer cancel()
		r.stopIf(ctx, tc, "handover")
	}()
}

// stopIf stops tc when it is still the tenant's consumer (Stop, a deletion or a newer start may have replaced it).
func (r *Runtime) stopIf(ctx context.Context, tc *tenantConsumer, reason string) {
	r.mu.Lock()
	same := r.consumers[tc.id] == tc
	r.mu.Unlock()
	if same {
		r.Stop(ctx, tc.id, reason)
	}
}
