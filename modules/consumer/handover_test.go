package consumer

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/acme/msgsvc/platform/events"
)

// A waiter for a tenant's successor is released by that tenant's announcement only, at once when it came
// earlier, never by one older than the handover or made stale by this replica's own start, and gives up when
// its context ends.
func TestSuccessorWaitIsReleasedByTheTenantsAnnouncement(t *testing.T) {
	clock := time.Date(2026, 12, 5, 17, 0, 0, 0, time.UTC)
	var clockMu sync.Mutex
	s := newSuccessors(func() time.Time { clockMu.Lock(); defer clockMu.Unlock(); return clock })
	advance := func(d time.Duration) { clockMu.Lock(); clock = clock.Add(d); clockMu.Unlock() }
	var zero time.Time
	mine, other, stale := uuid.New(), uuid.New(), uuid.New()
	got := make(chan string, 1)
	go func() { got <- s.wait(context.Background(), mine, zero, nil) }()

	s.record("replica-b", []uuid.UUID{other})
	// The waiter woke for that record and went back to waiting: the next record for its tenant releases it.
	s.record("replica-b", []uuid.UUID{mine})
	require.Equal(t, "replica-b", <-got)

	// Already announced: at once.
	require.Equal(t, "replica-b", s.wait(context.Background(), other, zero, nil))

	// An announcement older than the handover's lookback is not the new owner's: it waits for a fresh one.
	s.record("replica-c", []uuid.UUID{stale})
	advance(time.Minute)
	since := clock.Add(-time.Second)
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	require.Empty(t, s.wait(cancelled, stale, since, nil), "a stale announcement ended the wait")
	go func() { got <- s.wait(context.Background(), stale, since, nil) }()
	s.record("replica-b", []uuid.UUID{other})
	s.record("replica-d", []uuid.UUID{stale})
	require.Equal(t, "replica-d", <-got)

	// This replica consumed the tenant since: the announcement says nothing about the next handover.
	s.forget(other)
	ctx, cancel2 := context.WithCancel(context.Background())
	go func() { got <- s.wait(ctx, other, zero, nil) }()
	cancel2()
	require.Empty(t, <-got)

	stop := make(chan struct{})
	go func() { got <- s.wait(context.Background(), other, zero, stop) }()
	close(stop)
	require.Empty(t, <-got)
}

// The announcer relays the consumer starts of a rolling restart in few events, each with many tenants.
func TestAnnouncerBatchesStarts(t *testing.T) {
	published := make(chan []uuid.UUID, 100)
	a := newAnnouncer("started consumers", func(_ context.Context, ids []uuid.UUID) error { published <- ids; return nil })
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { a.loop(stop, zap.NewNop()); close(done) }()
	defer func() { close(stop); <-done }()
	const n = 500
	want := map[uuid.UUID]bool{}
	for range n {
		id := uuid.New()
		want[id] = true
		a.add(id)
	}
	events := 0
	for len(want) > 0 {
		for _, id := range <-published {
			delete(want, id)
		}
		events++
	}
	require.Less(t, events, n/10, "each start announced on its own")
}

// handoverPlacement owns tenants as told, and holds its lease as told.
type handoverPlacement struct {
	alone
	mu    sync.Mutex
	owned map[uuid.UUID]bool
	held  atomic.Bool
}

func (p *handoverPlacement) Owns(id uuid.UUID) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.owned[id]
}

func (p *handoverPlacement) set(id uuid.UUID, owned bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.owned[id] = owned
}

func (p *handoverPlacement) Holds() bool { return p.held.Load() }

func handoverRuntime(t *testing.T, wait time.Duration) (*Runtime, *handoverPlacement) {
	p := &handoverPlacement{alone: "replica-a", owned: map[uuid.UUID]bool{}}
	p.held.Store(true)
	r := &Runtime{place: p, opts: Options{ReplicaID: "replica-a", HandoverWait: wait, HandoverLookback: time.Second, DrainTimeout: time.Second},
		log: zap.NewNop(), metrics: NewMetrics(prometheus.NewRegistry(), false), consumers: map[uuid.UUID]*tenantConsumer{},
		succ: newSuccessors(time.Now), noSAC: map[string]bool{}, recheck: map[uuid.UUID]int{}}
	r.loopCtx, r.stopLoop = context.WithCancel(context.Background())
	t.Cleanup(r.stopLoop)
	return r, p
}

func consumed(replica string, ids ...uuid.UUID) events.TenantsConsumed {
	return events.TenantsConsumed{Replica: replica, Tenants: ids}
}

// A replica that gives a tenant up while it holds its lease keeps the tenant's consumer until the new owner
// announced its own, then stops it; without an announcement, until the bound; and keeps it when the tenant is
// its own again by then.
func TestHandoverWaitsForTheSuccessorsAnnouncement(t *testing.T) {
	r, _ := handoverRuntime(t, time.Hour)
	id, other := uuid.New(), uuid.New()
	tc := r.consumer(id, true)
	r.handOver(id)
	r.handOver(id) // a second reconciliation while it waits: one handover only
	r.Consumed(consumed("replica-b", other))
	r.Consumed(consumed("replica-a", id)) // its own announcement, relayed back: ignored
	require.True(t, tc.handing.Load())
	require.Same(t, tc, r.consumer(id, false), "the consumer stopped before its successor announced its own")
	r.Consumed(consumed("replica-b", id))
	require.Eventually(t, func() bool { return r.consumer(id, false) == nil }, 10*time.Second, time.Millisecond)
	require.Zero(t, counted(r.metrics.handoversUnannounced))

	// No announcement: the bound ends the wait.
	r, _ = handoverRuntime(t, time.Millisecond)
	tc = r.consumer(id, true)
	r.handOver(id)
	require.Eventually(t, func() bool { return r.consumer(id, false) == nil }, 10*time.Second, time.Millisecond)
	require.Equal(t, 1.0, counted(r.metrics.handoversUnannounced))

	// The tenant is this replica's again when the wait ends: its consumer stays.
	r, p := handoverRuntime(t, time.Hour)
	tc = r.consumer(id, true)
	r.handOver(id)
	p.set(id, true)
	r.Consumed(consumed("replica-b", id))
	require.Eventually(t, func() bool { return !tc.handing.Load() }, 10*time.Second, time.Millisecond)
	require.Same(t, tc, r.consumer(id, false))
}

// A fenced replica (its lease ran out) stops the consumers of tenants it does not own at once, handovers still
// waiting included: the other replicas may take them over now.
func TestFencedReplicaStopsAtOnce(t *testing.T) {
	r, p := handoverRuntime(t, time.Hour)
	waiting, idle := uuid.New(), uuid.New()
	r.consumer(waiting, true)
	r.consumer(idle, true)
	r.stopDisowned(context.Background())
	require.NotNil(t, r.consumer(waiting, false), "a replica holding its lease stopped a consumer before its successor announced")

	p.held.Store(false)
	// A replica shutting down owns nothing either, but its Shutdown hands its tenants over make-before-break.
	r.leaving = true
	r.stopDisowned(context.Background())
	require.NotNil(t, r.consumer(waiting, false), "a reconciliation during a shutdown stopped a consumer at once")
	r.leaving = false
	r.stopDisowned(context.Background())
	require.Nil(t, r.consumer(waiting, false))
	require.Nil(t, r.consumer(idle, false))
}

func counted(c prometheus.Counter) float64 {
	var m dto.Metric
	_ = c.Write(&m)
	return m.GetCounter().GetValue()
}

// A waiter whose new owner keeps announcing other tenants' starts (a rolling restart's thousands, paced) waits
// past quiet until its own tenant's announcement; an owner that announces nothing, or another replica's
// announcements, do not keep it waiting past quiet.
func TestSuccessorWaitLastsWhileTheOwnerMakesProgress(t *testing.T) {
	s := newSuccessors(time.Now)
	var zero time.Time
	const quiet = time.Second
	mine := uuid.New()
	announce := func(replica string, until <-chan struct{}) <-chan int {
		n := make(chan int, 1)
		go func() {
			i := 0
			defer func() { n <- i }()
			for ; ; i++ {
				select {
				case <-until:
					return
				case <-time.After(50 * time.Millisecond):
					s.record(replica, []uuid.UUID{uuid.New()})
				}
			}
		}()
		return n
	}

	got := make(chan string, 1)
	began := time.Now()
	go func() { got <- s.waitProgress(context.Background(), mine, zero, "replica-b", quiet, nil) }()
	stopB := make(chan struct{})
	n := announce("replica-b", stopB)
	// Announce the waiter's tenant once the owner has gone on for three times quiet.
	time.Sleep(3 * quiet)
	select {
	case r := <-got:
		t.Fatalf("the wait ended (%q) while the owner was still announcing", r)
	default:
	}
	s.record("replica-b", []uuid.UUID{mine})
	require.Equal(t, "replica-b", <-got)
	close(stopB)
	require.Greater(t, <-n, 10)
	require.Greater(t, time.Since(began), 3*quiet)

	// Only another replica announces: the wait for replica-b ends after quiet, while replica-c goes on.
	other := uuid.New()
	stopC := make(chan struct{})
	n = announce("replica-c", stopC)
	require.Empty(t, s.waitProgress(context.Background(), other, time.Now(), "replica-b", quiet, nil))
	close(stopC)
	require.Less(t, <-n, 200, "the wait lasted as long as another replica's announcements")
}
