package consumer

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"go.uber.org/zap"

	"github.com/acme/msgsvc/platform/broker"
	"github.com/acme/msgsvc/platform/config"
	"github.com/acme/msgsvc/platform/events"
)

// reconcileParallelism bounds how many tenants one reconciliation run repairs at once.
const reconcileParallelism = 16

// reconcileListTimeout bounds the management API's listing at the start of a pass: a management API that hangs
// must not hold the repairs after it (without the listing, the pass inspects every queue). The listing of
// 10,000 queues took about 0.3 s here.
const reconcileListTimeout = 5 * time.Second

// Reconcile makes what runs on this replica match the database and the placement: every tenant this replica
// owns has its queues and a consumer of its configured size; consumers of tenants it no longer owns drain and
// stop (handover); consumers of tenants that no longer exist stop; queues of tenants that do not exist (for
// OrphanGrace, so that a creation in progress is left alone) are deleted. The queues inspected only because it
// is their turn (inspectNeeded) go last, paced over up to half of RECONCILE_INTERVAL (inspectPacer), so that a
// pass at thousands of tenants does not take the broker's CPU in one burst.
//
// Passes run one at a time (the loop's, and any other caller's wait): a pass keeps state for the next one
// (its number, orphan sightings, whether the management API answered).
func (r *Runtime) Reconcile(ctx context.Context) error {
	r.reconcileMu.Lock()
	defer r.reconcileMu.Unlock()
	r.metrics.reconciles.Inc()
	var took passTimes
	began := time.Now()
	defer func() { r.logSlowPass(began, &took) }()
	// First, whatever the database answers: a replica whose lease ran out (cut off from PostgreSQL) owns
	// nothing, and its consumers must stop before the others take its tenants over.
	r.stopDisowned(ctx)
	listedAt := time.Now() // the tenant list holds every change committed before this
	took.disowned = listedAt.Sub(began)
	tenants, err := r.dir.Tenants(ctx)
	if err != nil {
		return err
	}
	known := make(map[uuid.UUID]bool, len(tenants))
	var (
		errs  []error
		owned int
	)
	var mine []events.Tenant
	for _, t := range tenants {
		known[t.ID] = true
		if !r.place.Owns(t.ID) {
			// Another replica owns it now: this one keeps consuming until the new owner announced its consumer,
			// then drains and leaves, and the queue's single active consumer passes straight on.
			r.handOver(t.ID)
			continue
		}
		mine = append(mine, t)
	}
	owned = len(mine)
	// The management API's cheap listing says which queues exist (and feeds the orphan cleanup below); then one
	// passive declare per owned tenant's queue that needs its consumer count, over a few channels (inspectNeeded).
	r.pass++
	// Every inspectRotation-th pass, and never twice within unservedSettle: passes asked for at once (a cancel,
	// the live replicas changing) can run back to back, and the listing with statistics costs the broker about
	// 1.2 s of CPU at 10,000 queues. Only where findUnserved can find something (ghostsPossible).
	stats := r.pass%inspectRotation == 0 && time.Since(r.lastStats) >= unservedSettle && r.ghostsPossible(ctx)
	if stats {
		r.lastStats = time.Now()
	}
	took.tenants = time.Since(listedAt)
	var (
		listed  *queueListing
		listErr error
	)
	reused := !stats && r.listingReusable(len(mine))
	if reused {
		l := *r.lastListing
		l.reused = true
		listed = &l
	} else {
		lctx, cancel := context.WithTimeout(ctx, reconcileListTimeout)
		listed, listErr = r.listQueues(lctx, stats)
		cancel()
	}
	if listErr != nil && stats && ctx.Err() == nil {
		// The listing with statistics costs the broker 4-5 times the cheap one (10,000 classic queues on 3.10:
		// 1.1-1.3 s of its CPU and 2 s, against 0.2-0.4 s): when it did not answer in time, the cheap one still
		// spares this pass a passive declare per queue.
		r.log.Info("the management API's queue listing with statistics did not answer; this pass takes the "+
			"listing without them", zap.Error(listErr))
		lctx, cancel := context.WithTimeout(ctx, reconcileListTimeout)
		listed, listErr = r.listQueues(lctx, false)
		cancel()
	}
	took.listing = time.Since(listedAt) - took.tenants
	if listed != nil && !reused {
		r.noQuorum = !listed.quorum
		r.lastListing, r.listedPass = listed, r.pass
	}
	if listErr != nil {
		r.lastListing = nil
	}
	r.forgetDisowned(mine)
	unserved := r.findUnserved(mine, listed)
	// The queues to inspect at once (missing from the listing, no consumer running here, a recheck), and those
	// whose turn it is, inspected after the repairs and the orphan cleanup, paced (inspectPacer).
	var now, inTurn []int // indexes in mine
	for i, t := range mine {
		switch r.inspectNeeded(t.ID, listed, r.pass) {
		case inspectNow:
			now = append(now, i)
		case inspectInTurn:
			inTurn = append(inTurn, i)
		}
	}
	r.metrics.inspected.Add(float64(len(now) + len(inTurn)))
	took.owned, took.inspected, took.inTurn = len(mine), len(now)+len(inTurn), len(inTurn)
	inspected := time.Now()
	seen, errsOf, err := r.inspect(ctx, mine, now, nil)
	took.inspection = time.Since(inspected)
	if err != nil {
		return fmt.Errorf("inspect tenant queues: %w", err)
	}
	unserved = r.findStalled(mine, seen, errsOf, inspected, unserved)
	errs = append(errs, r.repair(ctx, mine, nil, listedAt, seen, errsOf, inspected, unserved)...)
	took.repairs = time.Since(inspected) - took.inspection
	r.metrics.owned.Set(float64(owned))

	r.forgetDeleted(time.Now())
	r.mu.Lock()
	var stale []uuid.UUID
	for id := range r.consumers {
		if !known[id] {
			stale = append(stale, id)
		}
	}
	r.mu.Unlock()
	for _, id := range stale {
		// The tenant list was read at the start of this run; a tenant created since then has a consumer but
		// is not in it. Stop only what the database confirms is gone.
		if _, exists, err := r.dir.Tenant(ctx, id); err != nil || exists {
			continue
		}
		r.log.Info("stopping the consumer of a tenant that no longer exists", zap.String("tenant_id", id.String()))
		r.metrics.repairs.WithLabelValues("stale_consumer").Inc()
		r.StopDeleted(ctx, id, "tenant gone")
	}
	if reused {
		// The orphans and the queues without single active consumer wait for the next pass's own listing.
	} else if err := r.removeOrphanQueues(ctx, known, listed, listErr); err != nil {
		errs = append(errs, fmt.Errorf("orphan queues: %w", err))
	}
	if len(inTurn) > 0 {
		paced := time.Now()
		seen, errsOf, err := r.inspect(ctx, mine, inTurn, r.inspectPacer(len(inTurn)))
		took.paced = time.Since(paced)
		if err != nil {
			return errors.Join(append(errs, fmt.Errorf("inspect tenant queues in turn: %w", err))...)
		}
		stalled := r.findStalled(mine, seen, errsOf, paced, nil)
		errs = append(errs, r.repair(ctx, mine, inTurn, listedAt, seen, errsOf, paced, stalled)...)
	}
	return errors.Join(errs...)
}

// inspect passively declares the queues of the tenants mine[i] for i in which, paced by pace (nil: at once), and
// returns their states and errors by index in mine (nil for a tenant not inspected).
func (r *Runtime) inspect(ctx context.Context, mine []events.Tenant, which []int, pace func(context.Context) error) (
	[]*broker.QueueState, []error, error) {
	names := make([]string, len(which))
	for k, i := range which {
		names[k] = QueueName(mine[i].ID)
	}
	states, inspectErrs, err := r.conn.InspectQueuesPaced(ctx, names, pace)
	if err != nil {
		return nil, nil, err
	}
	seen := make([]*broker.QueueState, len(mine))
	errsOf := make([]error, len(mine))
	for k, i := range which {
		seen[i], errsOf[i] = &states[k], inspectErrs[k]
	}
	return seen, errsOf, nil
}

// repair runs reconcileTenant for the tenants mine[i] for i in which (nil: every one), reconcileParallelism at a
// time, with their states seen at inspected (nil: not inspected) and verdicts, and returns their errors. The
// tenants inspected in turn, after the first repairs, are skipped when this replica no longer owns them.
func (r *Runtime) repair(ctx context.Context, mine []events.Tenant, which []int, listed time.Time, seen []*broker.QueueState,
	errsOf []error, inspected time.Time, verdicts map[uuid.UUID]verdict) []error {
	var (
		wg   sync.WaitGroup
		sem  = make(chan struct{}, reconcileParallelism)
		mu   sync.Mutex
		errs []error
	)
	inTurn := which != nil
	if !inTurn {
		which = make([]int, len(mine))
		for i := range which {
			which[i] = i
		}
	}
	one := func(i int) {
		defer func() { <-sem; wg.Done() }()
		t := mine[i]
		if inTurn && !r.place.Owns(t.ID) {
			return
		}
		err := errsOf[i]
		if err == nil {
			err = r.reconcileTenant(ctx, t, listed, seen[i], inspected, verdicts[t.ID])
		}
		if err != nil {
			if tc := r.consumer(t.ID, true); tc != nil && !tc.running() {
				r.recordStart(tc, err)
			}
			mu.Lock()
			errs = append(errs, err)
			mu.Unlock()
		}
	}
	for _, i := range which {
		wg.Add(1)
		sem <- struct{}{}
		go one(i)
	}
	wg.Wait()
	return errs
}

// inspectRate is how many queues a second a pass inspects in turn at most, unless that would take more than half
// of RECONCILE_INTERVAL: at about 0.3 ms of the broker's CPU each (10,000 classic queues, RabbitMQ 3.10), the
// 2,500 turns of a pass at 10,000 tenants cost it 0.75 s of CPU, which at once took a quarter of a loaded box's
// CPU from everything else for a few seconds (tenant creations 25 % slower in the block a pass fell in).
const inspectRate = 200

// inspectEvery is the time between two of a pass's n inspections in turn: 1 / inspectRate, or less so that they
// end within half of interval.
func inspectEvery(n int, interval time.Duration) time.Duration {
	rate := max(inspectRate, 2*float64(n)/interval.Seconds())
	return time.Duration(float64(time.Second) / rate)
}

// inspectPacer returns the pace of a pass's n inspections in turn (broker.Conn.InspectQueuesPaced): inspectRate a
// second, or faster so as to end within half of RECONCILE_INTERVAL. They make way for a burst of tenant creations,
// for up to RECONCILE_INTERVAL over the pass (loop). A reconciliation asked for meanwhile (Kick: a consumer the
// broker cancelled, the live replicas changed) ends the pacing: the rest goes at once, and the pass asked for
// comes right after.
func (r *Runtime) inspectPacer(n int) func(context.Context) error {
	every := inspectEvery(n, r.opts.ReconcileInterval)
	var (
		mu      sync.Mutex
		next    = time.Now()
		hurry   bool
		yieldMu sync.Mutex // one lane yields; the others wait for it, and then for the pace
		yielded time.Duration
	)
	hurried := func() bool {
		mu.Lock()
		defer mu.Unlock()
		if !hurry && r.kicked() {
			hurry = true
		}
		return hurry
	}
	return func(ctx context.Context) error {
		yieldMu.Lock()
		if r.creations.Busy() && !hurried() {
			yielded += r.creations.Yield(ctx, r.opts.ReconcileInterval-yielded, hurried)
		}
		yieldMu.Unlock()
		if hurried() {
			return nil
		}
		mu.Lock()
		at := next
		next = later(next, time.Now()).Add(every)
		mu.Unlock()
		wait := time.Until(at)
		if wait <= 0 {
			return nil
		}
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case <-t.C:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// slowPass is how long a reconciliation pass may take before it logs where its time went.
const slowPass = 5 * time.Second

// passTimes is where a reconciliation pass spent its time, and on what.
type passTimes struct {
	disowned, tenants, listing, inspection, repairs, paced time.Duration
	owned, inspected, inTurn                               int
}

// logSlowPass logs where a pass that began at began spent its time, when it took slowPass or more without its
// paced inspections in turn (which a kick cuts short): a consumer the broker cancelled starts again only in the
// pass its cancel asks for.
func (r *Runtime) logSlowPass(began time.Time, took *passTimes) {
	total := time.Since(began)
	if total-took.paced < slowPass {
		return
	}
	r.log.Info("reconciliation pass was slow", zap.Duration("took", total),
		zap.Duration("disowned", took.disowned), zap.Duration("tenants", took.tenants),
		zap.Duration("listing", took.listing), zap.Duration("inspection", took.inspection),
		zap.Duration("repairs", took.repairs), zap.Duration("paced", took.paced), zap.Int("owned", took.owned),
		zap.Int("inspected", took.inspected), zap.Int("in_turn", took.inTurn))
}

// stopDisowned gives up the consumers of tenants this replica does not own: while it holds its lease, make-before-
// break (handOver, in the background); when it does not (fenced: the others may take its tenants over as soon as
// its lease ran out), it drains and stops them all at once, cutting short handovers under way.
func (r *Runtime) stopDisowned(ctx context.Context) {
	r.mu.Lock()
	leaving := r.leaving
	r.mu.Unlock()
	if leaving {
		return // Shutdown hands every tenant over
	}
	if r.holdsLease() {
		r.mu.Lock()
		ids := make([]uuid.UUID, 0, len(r.consumers))
		for id := range r.consumers {
			ids = append(ids, id)
		}
		r.mu.Unlock()
		for _, id := range ids {
			if !r.place.Owns(id) {
				r.handOver(id)
			}
		}
		return
	}
	r.mu.Lock()
	ids := make([]uuid.UUID, 0, len(r.consumers))
	for id := range r.consumers {
		ids = append(ids, id)
	}
	r.mu.Unlock()
	var wg sync.WaitGroup
	for _, id := range ids {
		if r.place.Owns(id) {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.log.Info("this replica does not hold its lease; draining the consumer of a tenant it does not own at once",
				zap.String("tenant_id", id.String()),
				zap.String("owner", r.place.Owner(id)))
			r.metrics.handovers.Inc()
			r.Stop(ctx, id, "handover")
		}()
	}
	wg.Wait()
}

// verdict is a generation judged to receive nothing while its queue holds messages for it (findUnserved,
// findStalled), and the repair's kind as msgsvc_reconcile_repairs_total counts it.
type verdict struct {
	g    *generation
	kind string
}

// reconcileTenant repairs one owned tenant, t as the pass's tenant list read it at time listed; st is its queue's
// state as inspected at time inspected, nil when it was not inspected this pass (the listing showed its queue and
// its consumer runs here); unserved is the generation findUnserved or findStalled judged unserved, the zero
// verdict for none.
func (r *Runtime) reconcileTenant(ctx context.Context, t events.Tenant, listed time.Time, st *broker.QueueState, inspected time.Time, unserved verdict) error {
	if r.isClosed() {
		return nil
	}
	if st != nil && !st.Exists {
		// The tenant list was read at the start of this run; a tenant deleted since then has no queue either.
		// Re-creating its queues would leak them (nothing deletes them again without the management API).
		if gone, err := r.gone(ctx, t.ID); err != nil || gone {
			return err
		}
		r.log.Warn("tenant queue missing; declaring it", zap.String("tenant_id", t.ID.String()))
		r.metrics.repairs.WithLabelValues("queue").Inc()
		if err := r.DeclareTopology(ctx, t.ID); err != nil {
			return err
		}
		// A deletion may have run between the check and the declare, and deleted the queues before they were
		// declared again: ask once more, and take back what this run made.
		if gone, err := r.gone(ctx, t.ID); err != nil || gone {
			if err == nil {
				err = r.DeleteTopology(ctx, t.ID)
			}
			return err
		}
		// A consumer on the deleted queue was cancelled by the broker; replace it.
		if tc := r.consumer(t.ID, false); tc != nil {
			tc.stop(ctx, "queue recreated")
		}
	}
	tc := r.consumer(t.ID, false)
	switch {
	case tc == nil || !tc.running():
		started, err := r.ensure(ctx, t.ID, t.Concurrency, "reconcile", listed)
		if started && tc != nil {
			r.metrics.repairs.WithLabelValues("consumer").Inc()
		}
		return err
	case r.Workers(t.ID) != t.Concurrency:
		// A generation started since the list was read had a count at least as new (a concurrency change's
		// event, applied while this pass ran): it is left alone, or this pass would undo the change until the next.
		started, err := r.ensure(ctx, t.ID, t.Concurrency, "reconcile resize", listed)
		if started {
			r.metrics.repairs.WithLabelValues("concurrency").Inc()
		}
		return err
	case st != nil && st.Consumers == 0 && tc.stopStartedBefore(ctx, inspected, "consumer cancelled"):
		// The broker counts no consumer though this one runs: the broker cancelled it (its channel closed on its
		// own, or the cancel was missed); start it again. Only a generation that
		// ran at the inspection is stopped: one started since is left alone.
		r.log.Warn("tenant queue has no consumer though its consumer runs; starting it again", zap.String("tenant_id", t.ID.String()))
		r.metrics.repairs.WithLabelValues("consumer_cancelled").Inc()
		return r.Ensure(ctx, t.ID, t.Concurrency, "reconcile")
	case unserved.g != nil && tc.stopGeneration(ctx, unserved.g, "consumer unserved"):
		// Only the generation judged: one started since (a resize, a lost connection's replacement) is left alone.
		what := "unacknowledged by" // consumer_unserved: the statistics listing's messages unacknowledged
		if unserved.kind == "consumer_stalled" {
			what = "ready for" // the passive declare's messages ready
		}
		r.log.Warn("tenant queue held messages "+what+" a consumer that received nothing; its channel is "+
			"closed and the consumer starts again on a new one", zap.String("tenant_id", t.ID.String()),
			zap.String("repair", unserved.kind))
		r.metrics.repairs.WithLabelValues(unserved.kind).Inc()
		return r.Ensure(ctx, t.ID, t.Concurrency, "reconcile")
	}
	return nil
}

// unservedMark is what findUnserved saw of a tenant whose queue the statistics listing showed with messages
// unacknowledged: the tenant's live generation, and the highest delivery tag it had registered then.
type unservedMark struct {
	g    *generation
	high uint64
	at   time.Time // when the listing was taken
}

// unservedSettle is how old a generation must be, and how far apart the two listings, for findUnserved to judge
// it: the broker's statistics lag (by its collect_statistics_interval, 5 s by default), and a listing taken soon
// after a restart still shows the messages the previous generation held.
const unservedSettle = 10 * time.Second

// judgeUnserved decides on a tenant whose queue a statistics listing shows with messages unacknowledged: cur is
// what the listing's pass sees (the live generation, its highest delivery tag, the time), open whether that
// generation holds deliveries not settled, and prev the mark of an earlier sighting if seen. Unserved when the
// same generation received nothing since a sighting at least unservedSettle ago and holds nothing now; otherwise
// the mark to keep: the earlier one while it is too soon to judge, else cur.
func judgeUnserved(prev unservedMark, seen bool, cur unservedMark, open bool) (mark unservedMark, unserved bool) {
	if !seen || prev.g != cur.g || prev.high != cur.high {
		return cur, false
	}
	if cur.at.Sub(prev.at) < unservedSettle {
		return prev, false // too soon to judge: keep the first sighting
	}
	if open {
		return cur, false
	}
	return prev, true
}

// findUnserved returns the owned tenants whose consumer holds deliveries it never received, with the generation
// judged. On RabbitMQ 3.10, a
// quorum queue deleted and declared again under the same name (by an operator, a script) gets back the consumer
// of every channel that consumed from the old one (the channel's Raft client registers it with the new queue),
// without a basic.cancel or any other sign to the client, which no longer serves that consumer: the broker sends
// it up to its prefetch of messages, which stay unacknowledged and are never stored, while the passive declare
// counts one consumer as usual. The sign is in the broker's statistics: every inspectRotation-th pass (never two
// within unservedSettle) lists the queues with them (listQueues), and a tenant is unserved when two such listings in a row showed messages
// unacknowledged on its queue while its generation, the same at both, received no delivery between them and
// holds none unsettled at the second. The repair closes the channel (the broker returns the messages to the
// queue) and starts the consumer on a new one. A consumer that receives and stores is not taken for one:
// between the listings it either received deliveries or still holds the unacknowledged ones; only a store that
// outlasts the interval between the listings (2 minutes with the defaults) and ends just before the second
// can look like one, and the repair costs it a restart (the stored rows are kept and redeliveries skipped). The
// listings are unservedSettle apart at least, and a generation younger than that is not judged. Without a
// management API nothing is found.
func (r *Runtime) findUnserved(mine []events.Tenant, listed *queueListing) map[uuid.UUID]verdict {
	if listed == nil || listed.unacked == nil {
		return nil
	}
	var found map[uuid.UUID]verdict
	now := time.Now()
	marks := make(map[uuid.UUID]unservedMark)
	for _, t := range mine {
		if listed.unacked[QueueName(t.ID)] == 0 {
			continue
		}
		prev, seen := r.unserved[t.ID]
		if g, mark, keep := r.sight(t.ID, prev, seen, now); g != nil {
			if found == nil {
				found = make(map[uuid.UUID]verdict)
			}
			found[t.ID] = verdict{g: g, kind: "consumer_unserved"}
		} else if keep {
			marks[t.ID] = mark
		}
	}
	r.unserved = marks
	return found
}

// findStalled adds to found (findUnserved's verdicts, which it leaves as they are) the owned tenants whose
// consumer receives nothing from a queue that holds messages ready for it, by the passive declares of this pass
// (seen, nil for a tenant not inspected; at the time inspected), and returns it.
// Made for a CI run of TestClusterNodeKilledMidStream (RabbitMQ 3.10, no management API): after the node
// leading a quorum queue was killed, 2,340 accepted messages stayed unstored for the minutes the test waited
// while the broker counted a consumer on the queue (whether they waited ready was not recorded). It also finds
// the quorum ghost findUnserved finds, when more messages wait than its prefetch. It needs no management API, and
// judges as findUnserved does: two inspections at least unservedSettle apart showed messages ready and one
// consumer, while the same generation received no delivery between them and holds none unsettled. A consumer
// that has room for deliveries gets the ready messages at once, so a working one either received some or holds
// them. Only a queue with one consumer is judged: with two (a handover under way), the other one may be the
// single active consumer and this one rightly waits. An inspection that shows nothing ready, or another
// consumer count, forgets the tenant's mark; a tenant not inspected this pass keeps it (inspectNeeded's turns).
func (r *Runtime) findStalled(mine []events.Tenant, seen []*broker.QueueState, errs []error, inspected time.Time,
	found map[uuid.UUID]verdict) map[uuid.UUID]verdict {
	for i, t := range mine {
		st := seen[i]
		if st == nil || errs[i] != nil {
			continue // not inspected this pass: the mark waits for its turn
		}
		if !st.Exists || st.Messages == 0 || st.Consumers != 1 {
			delete(r.stalled, t.ID)
			continue
		}
		prev, ok := r.stalled[t.ID]
		g, mark, keep := r.sight(t.ID, prev, ok, inspected)
		switch {
		case g != nil:
			if _, ok := found[t.ID]; !ok {
				if found == nil {
					found = make(map[uuid.UUID]verdict)
				}
				found[t.ID] = verdict{g: g, kind: "consumer_stalled"}
			}
			delete(r.stalled, t.ID)
		case keep:
			r.stalled[t.ID] = mark
		default:
			delete(r.stalled, t.ID)
		}
	}
	return found
}

// sight judges tenant id's live generation at a sighting, at time now, of messages its queue holds for it
// (judgeUnserved; prev is the tenant's mark from an earlier sighting when seen): it returns the generation
// when judged unserved, and otherwise the mark to keep (keep false when no generation old enough runs).
func (r *Runtime) sight(id uuid.UUID, prev unservedMark, seen bool, now time.Time) (unserved *generation, mark unservedMark, keep bool) {
	tc := r.consumer(id, false)
	if tc == nil {
		return nil, unservedMark{}, false
	}
	g := tc.live()
	if g == nil || now.Sub(g.started) < unservedSettle {
		return nil, unservedMark{}, false
	}
	high, open := g.acks.progress()
	mark, judged := judgeUnserved(prev, seen, unservedMark{g: g, high: high, at: now}, open)
	if judged {
		return g, mark, false
	}
	return nil, mark, true
}

// gone reports whether the database confirms that tenant id no longer exists; when it does, the tenant's
// consumer on this replica stops.
func (r *Runtime) gone(ctx context.Context, id uuid.UUID) (bool, error) {
	_, exists, err := r.dir.Tenant(ctx, id)
	if err != nil {
		return false, err
	}
	if !exists {
		r.log.Info("tenant deleted during reconciliation; leaving it alone", zap.String("tenant_id", id.String()))
		r.StopDeleted(ctx, id, "tenant gone")
	}
	return !exists, nil
}

func (r *Runtime) isClosed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.closed
}

// removeOrphanQueues deletes tenant queues whose tenant does not exist, using the management API's listing of
// the queues (names, or err when it could not be read).
func (r *Runtime) removeOrphanQueues(ctx context.Context, known map[uuid.UUID]bool, listed *queueListing, err error) error {
	if r.opts.ManagementURL == "" {
		return nil
	}
	if err != nil {
		if !r.mgmtDown {
			r.log.Warn("RabbitMQ management API unreachable: orphan-queue cleanup is off until it answers",
				zap.String("management_url", redact(r.opts.ManagementURL)), zap.Error(err))
		}
		r.mgmtDown = true
		r.metrics.orphanCleanup.Set(0)
		return nil
	}
	names, noSAC := listed.names, listed.noSAC
	if r.mgmtDown {
		r.log.Info("RabbitMQ management API answers again: orphan-queue cleanup is on")
	}
	r.mgmtDown = false
	r.metrics.orphanCleanup.Set(1)
	r.reportWithoutSingleActiveConsumer(noSAC)
	now := time.Now()
	seen := map[string]time.Time{}
	for _, name := range names {
		id, ok := parseQueueName(name)
		if !ok || known[id] {
			continue
		}
		// A creation declares its queues before its row commits, so a young "orphan" may be a tenant being
		// made: delete only what stayed without a tenant for the grace period, and that the database confirms.
		first, ok := r.orphans[name]
		if !ok {
			first = now
		}
		seen[name] = first
		if now.Sub(first) < r.opts.OrphanGrace {
			continue
		}
		if _, exists, err := r.dir.Tenant(ctx, id); err != nil || exists {
			continue
		}
		r.log.Warn("deleting orphan queue of a tenant that does not exist", zap.String("queue", name), zap.String("tenant_id", id.String()))
		if err := r.conn.DeleteQueues(ctx, name); err != nil {
			return err
		}
		r.metrics.repairs.WithLabelValues("orphan_queue").Inc()
		delete(seen, name)
	}
	r.orphans = seen
	return nil
}

// reportWithoutSingleActiveConsumer logs, once per queue and process, tenant queues declared before
// x-single-active-consumer was added: RabbitMQ cannot add the argument to an existing queue, so they keep
// working without the broker's guarantee that one consumer receives at a time (the placement alone keeps it,
// except for up to a heartbeat interval during a handover).
func (r *Runtime) reportWithoutSingleActiveConsumer(names []string) {
	r.metrics.withoutSAC.Set(float64(len(names)))
	noSAC := make(map[string]bool, len(names))
	for _, name := range names {
		noSAC[name] = true
	}
	r.mu.Lock()
	r.noSAC = noSAC
	r.mu.Unlock()
	for _, name := range names {
		if r.warnedNoSAC[name] {
			continue
		}
		r.warnedNoSAC[name] = true
		r.log.Warn("tenant queue has no single active consumer (declared by an older version); it keeps working, "+
			"but two replicas may consume it at once during a handover; delete it when empty to have it declared again",
			zap.String("queue", name))
	}
}

// queueListing is what the management API's listing of the connection's virtual host says: the queues' names,
// those of them that are tenant queues declared without x-single-active-consumer, the names as a set, and, in a
// listing with statistics, the messages unacknowledged on each queue (nil otherwise).
type queueListing struct {
	names   []string
	noSAC   []string
	exists  map[string]bool
	unacked map[string]int
	quorum  bool // a tenant queue is a quorum queue
	reused  bool // an earlier pass's listing, taken again (listingReusable)
}

// reuseListingFrom (a constant but for tests) is how many owned tenants make a pass take the last pass's listing
// again instead of its own, up to inspectRotation-1 passes in a row (listingReusable). The records-only listing
// of 10,000 classic queues costs the broker 0.2-0.4 s of CPU at once, which a loaded box's other work loses (the
// 10,000-tenant bench's creations, 10-15 % slower in the block a pass lands in).
var reuseListingFrom = 1000

// listingReusable reports whether a pass over owned tenants may take the last listing again: only from
// reuseListingFrom owned tenants, for the inspectRotation-1 passes after a listing of its own, and only where a
// queue deleted behind the service's back cancels its consumers (the cancel watch restarts them at once, so the
// listing is not what finds them): classic queues, or any on RabbitMQ 4.x (ghostsPossible). A taken-again listing
// does not show the queues declared since; a tenant whose consumer runs is not inspected for that (a running
// consumer is on its queue), and one whose consumer does not run is inspected as always.
func (r *Runtime) listingReusable(owned int) bool {
	return owned >= reuseListingFrom && r.lastListing != nil && r.pass-r.listedPass < inspectRotation &&
		(!r.quorumPossible() || r.brokerMajor >= 4)
}

// quorumPossible reports whether a tenant queue may be a quorum queue: the last listing showed one, or new ones
// are declared so (AMQP_QUEUE_TYPE).
func (r *Runtime) quorumPossible() bool {
	return !r.noQuorum || r.opts.QueueType == "quorum"
}

// listQueues lists the queues in the connection's virtual host through the management API, with the queues'
// statistics when stats is set and otherwise the cheap listing without them; nil and no error when no
// management API is configured.
func (r *Runtime) listQueues(ctx context.Context, stats bool) (*queueListing, error) {
	if r.opts.ManagementURL == "" {
		return nil, nil
	}
	mgmt, err := broker.NewManagement(r.opts.ManagementURL, nil)
	if err != nil {
		return nil, err
	}
	list := mgmt.QueueRecords
	if stats {
		list = mgmt.Queues
	}
	qs, err := list(ctx, config.VHost(r.opts.AMQPURL))
	if err != nil {
		return nil, err
	}
	l := &queueListing{names: make([]string, len(qs)), exists: make(map[string]bool, len(qs))}
	if stats {
		l.unacked = make(map[string]int)
	}
	for i, q := range qs {
		l.names[i] = q.Name
		l.exists[q.Name] = true
		if stats && q.MessagesUnacknowledged > 0 {
			l.unacked[q.Name] = q.MessagesUnacknowledged
		}
		if id, ok := parseQueueName(q.Name); ok && q.Name == QueueName(id) {
			if !q.SingleActiveConsumer() {
				l.noSAC = append(l.noSAC, q.Name)
			}
			l.quorum = l.quorum || q.Arguments["x-queue-type"] == "quorum"
		}
	}
	return l, nil
}

// ghostsPossible reports whether the listing with statistics can find a consumer served by the broker and not by
// this service (findUnserved): only RabbitMQ 3.x hands a quorum queue deleted and declared again under its name
// the consumers of the old one without a cancel. RabbitMQ 4.0 cancels them, and a classic queue's deletion
// always did, so with classic queues or on 4.0 (the two choices past 5,000 tenants on a node) a pass spares the
// broker that listing (1.1-1.3 s of its CPU at 10,000 classic queues on 3.10, every fourth pass). When it
// cannot tell (no listing yet, the overview does not answer, a version it cannot read) it takes the listing.
func (r *Runtime) ghostsPossible(ctx context.Context) bool {
	if !r.quorumPossible() || r.opts.ManagementURL == "" {
		return false
	}
	mgmt, err := broker.NewManagement(r.opts.ManagementURL, nil)
	if err != nil {
		return true
	}
	ctx, cancel := context.WithTimeout(ctx, reconcileListTimeout)
	defer cancel()
	o, err := mgmt.Overview(ctx)
	if err != nil {
		return true
	}
	major, _, _ := strings.Cut(o.RabbitMQVersion, ".")
	v, err := strconv.Atoi(major)
	if err != nil {
		return true
	}
	r.brokerMajor = v
	return v < 4
}

// recheckPasses is how many passes after a consumer started again on a new connection inspect its queue
// whatever its turn (see inspectNeeded): twice the longest loss seen (87 s) with the default interval.
const recheckPasses = 2 * inspectRotation

// inspectRotation is how many reconciliation passes it takes to inspect every owned queue that the listing
// shows and whose consumer runs here: each pass inspects a quarter of them (by the tenant id's last byte, random in UUIDv4 and v7 alike).
const inspectRotation = 4

// inspectNeeded reports whether and when reconciliation pass number pass must inspect the queue of owned tenant
// id (a passive declare: whether it exists and how many consumers the broker counts on it). At once when there
// is no listing (no management API, or it did not answer), when the listing does not show the queue (deleted
// behind the service's back, or not declared yet), when the tenant's consumer does not run here, and for a
// recheck (below); otherwise in turn (paced, after the pass's repairs) every
// inspectRotation-th pass. The broker cancels a consumer whose queue is deleted, or whose classic queue's node
// went down, and the runtime closes its channel and asks for a pass at once (stopCancelled); should that report
// be missed, a queue
// deleted is missing from the listing at once, and a queue deleted and declared again between two passes, or
// back with its node, is caught by its turn, within inspectRotation × RECONCILE_INTERVAL (2 minutes with the
// defaults). Measured at 10,000 tenants (classic
// queues, RabbitMQ 3.10): reconciliation inspecting every queue every 30 s took 10 % of a core of RabbitMQ
// and 2.4 % of the service, while everything else idle took 20 % and 3.7 %.
//
// A consumer started again after its connection dropped is inspected at each of the next recheckPasses
// passes, whatever its turn (recheck): a node lost during a failover can leave a consume that succeeded
// without a consumer on the queue, or drop it soon after. Seen on RabbitMQ 3.10, the busy tenant of
// TestClusterNodeKilledMidStream started again when the node it was connected to, which led its quorum queue,
// was killed: 18 and 21 s later (two runs of a loop of 10), 32 s later (a CI run), and 83 and 87 s later (two
// runs of 3 on a loaded machine) the broker counted no consumer on the queue, though the client's channel
// stayed open, and only an inspection found it. With the defaults that is within one pass (30 s) of the loss
// instead of inspectRotation of them (2 minutes), for the first 4 minutes after such a restart; a connection
// drop of thousands of consumers costs eight passes a passive declare each.
func (r *Runtime) inspectNeeded(id uuid.UUID, listed *queueListing, pass uint64) inspection {
	recheck := r.takeRecheck(id)
	if listed == nil || (!listed.exists[QueueName(id)] && !listed.reused) {
		return inspectNow
	}
	if tc := r.consumer(id, false); tc == nil || !tc.running() {
		return inspectNow
	}
	switch {
	case recheck:
		return inspectNow
	case uint64(id[15])%inspectRotation == pass%inspectRotation:
		return inspectInTurn
	}
	return inspectNot
}

// inspection is whether and when a pass inspects a queue (inspectNeeded).
type inspection int

const (
	inspectNot    inspection = iota
	inspectNow               // before the repairs
	inspectInTurn            // its turn: after the repairs, paced (inspectPacer)
)

// forgetDisowned drops findStalled's marks and the rechecks of tenants this replica no longer owns (deleted,
// handed over): both are kept across passes, and only owned tenants' entries are ever taken out otherwise.
func (r *Runtime) forgetDisowned(mine []events.Tenant) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.stalled) == 0 && len(r.recheck) == 0 {
		return
	}
	owned := make(map[uuid.UUID]bool, len(mine))
	for _, t := range mine {
		owned[t.ID] = true
	}
	for id := range r.stalled {
		if !owned[id] {
			delete(r.stalled, id)
		}
	}
	for id := range r.recheck {
		if !owned[id] {
			delete(r.recheck, id)
		}
	}
}

// takeRecheck reports whether tenant id's consumer is still to be inspected at every pass after it started
// again on a new connection, and counts this pass.
func (r *Runtime) takeRecheck(id uuid.UUID) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	n, ok := r.recheck[id]
	if !ok {
		return false
	}
	if n <= 1 {
		delete(r.recheck, id)
	} else {
		r.recheck[id] = n - 1
	}
	return true
}

// redact removes the credentials from a URL for logging.
func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable)"
	}
	u.User = nil
	return u.String()
}
