package consumer

import (
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// channelStub stands for a consumer channel: it records the acks the acker sends.
type channelStub struct {
	amqp.Acknowledger
	name string
}

type sent struct {
	ch       string
	tag      uint64
	multiple bool
}

// fakeClock is the acker's timer under the test's control: fire runs the timers that are due.
type fakeClock struct {
	mu     sync.Mutex
	timers []*fakeTimer
}

type fakeTimer struct {
	d    time.Duration
	f    func()
	done bool // fired or stopped
}

func (c *fakeClock) after(d time.Duration, f func()) func() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{d: d, f: f}
	c.timers = append(c.timers, t)
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		was := !t.done
		t.done = true
		return was
	}
}

// armed returns the durations of the timers that neither fired nor were stopped.
func (c *fakeClock) armed() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	var ds []time.Duration
	for _, t := range c.timers {
		if !t.done {
			ds = append(ds, t.d)
		}
	}
	return ds
}

// fire runs every armed timer, as if their time had come.
func (c *fakeClock) fire() {
	c.mu.Lock()
	var due []*fakeTimer
	for _, t := range c.timers {
		if !t.done {
			t.done = true
			due = append(due, t)
		}
	}
	c.mu.Unlock()
	for _, t := range due {
		t.f()
	}
}

// fireStale runs every timer ever armed, stopped ones too: a stopped time.AfterFunc may already be running.
func (c *fakeClock) fireStale() {
	c.mu.Lock()
	all := append([]*fakeTimer(nil), c.timers...)
	c.mu.Unlock()
	for _, t := range all {
		t.f()
	}
}

type ackerBundle struct {
	a     *acker
	out   *[]sent
	clock *fakeClock
	open  *bool // the guard runs the timer's work only while open
}

func newTestAcker() (*acker, *[]sent) {
	b := setupAcker()
	return b.a, b.out
}

func setupAcker() ackerBundle {
	var out []sent
	open := true
	clock := &fakeClock{}
	a := newAcker(func(ch amqp.Acknowledger, tag uint64, multiple bool) {
		out = append(out, sent{ch.(*channelStub).name, tag, multiple})
	}, func(f func()) {
		if open {
			f()
		}
	})
	a.after = clock.after
	return ackerBundle{a: a, out: &out, clock: clock, open: &open}
}

func deliveries(ch *channelStub, tags ...uint64) []amqp.Delivery {
	ds := make([]amqp.Delivery, len(tags))
	for i, t := range tags {
		ds[i] = amqp.Delivery{Acknowledger: ch, DeliveryTag: t}
	}
	return ds
}

func registerAll(a *acker, ch *channelStub, tags ...uint64) {
	for _, d := range deliveries(ch, tags...) {
		a.register(d, false)
	}
}

func TestAckerCoalescesOutOfOrderStores(t *testing.T) {
	a, out := newTestAcker()
	ch := &channelStub{name: "c1"}
	registerAll(a, ch, 1, 2, 3, 4, 5, 6, 7)
	a.stored(deliveries(ch, 3, 4)) // a later batch finishes first: its ack waits
	require.Empty(t, *out)
	a.stored(deliveries(ch, 1, 2))
	require.Equal(t, []sent{{"c1", 4, true}}, *out, "one multiple ack settles 1..4")
	a.settled(deliveries(ch, 5)...) // a nack sent on its own
	require.Len(t, *out, 1, "nothing stored became due")
	a.stored(deliveries(ch, 6))
	require.Equal(t, sent{"c1", 6, true}, (*out)[1], "the multiple ack passes over the settled delivery")
}

// A slow batch (tags 1 and 2, in its retry budget) must not keep the deliveries stored after it unacked: once
// they waited the bound, they are acked one by one, so is every delivery stored above the hole at once, and
// coalescing resumes when the hole closes.
func TestAckerAcksAboveAHoleWithinTheBound(t *testing.T) {
	b := setupAcker()
	a, out := b.a, b.out
	ch := &channelStub{name: "c1"}
	registerAll(a, ch, 1, 2, 3, 4, 5, 6, 7, 8)
	a.stored(deliveries(ch, 3, 4))
	require.Empty(t, *out, "a reordering of a few milliseconds is still coalesced")
	require.Equal(t, []time.Duration{ackBound}, b.clock.armed(), "the wait is bounded")
	a.stored(deliveries(ch, 5))
	require.Len(t, b.clock.armed(), 1, "the first waiting ack's timer bounds the later ones too")

	b.clock.fire()
	require.Equal(t, []sent{{"c1", 3, false}, {"c1", 4, false}, {"c1", 5, false}}, *out,
		"after the bound, the stored deliveries above the hole are acked one by one, in tag order")
	a.stored(deliveries(ch, 7))
	require.Equal(t, sent{"c1", 7, false}, (*out)[3], "while the hole lasts, a stored delivery is acked at once")
	require.Empty(t, b.clock.armed())

	a.stored(deliveries(ch, 1, 2)) // the slow batch is stored at last
	require.Equal(t, sent{"c1", 2, true}, (*out)[4], "the hole's own ack covers only what is still unacked")
	a.stored(deliveries(ch, 6))
	require.Equal(t, sent{"c1", 6, true}, (*out)[5], "the hole closed: coalescing again")
	a.stored(deliveries(ch, 8))
	require.Equal(t, sent{"c1", 8, true}, (*out)[6], "8 passes over 7, acked already")
	require.Len(t, *out, 7)
}

func TestAckerCancelsTheTimerWhenTheHoleClosesInTime(t *testing.T) {
	b := setupAcker()
	a, out := b.a, b.out
	ch := &channelStub{name: "c1"}
	registerAll(a, ch, 1, 2, 3, 4)
	a.stored(deliveries(ch, 3, 4))
	a.stored(deliveries(ch, 1, 2))
	require.Equal(t, []sent{{"c1", 4, true}}, *out)
	require.Empty(t, b.clock.armed(), "nothing waits: no timer")
	b.clock.fireStale() // a stopped timer that was already running
	require.Len(t, *out, 1, "a cancelled timer sends nothing")
}

// A hole that closes onto another hole keeps the first waiting ack's bound: a run of slow batches cannot keep a
// stored delivery waiting longer.
func TestAckerKeepsTheBoundAcrossSuccessiveHoles(t *testing.T) {
	b := setupAcker()
	a, out := b.a, b.out
	ch := &channelStub{name: "c1"}
	registerAll(a, ch, 1, 2, 3)
	a.stored(deliveries(ch, 3))
	a.stored(deliveries(ch, 1)) // the first hole closes; 2 is the next one
	require.Equal(t, []sent{{"c1", 1, true}}, *out)
	require.Len(t, b.clock.armed(), 1, "3 still waits under its first timer")
	b.clock.fire()
	require.Equal(t, sent{"c1", 3, false}, (*out)[1])
}

func TestAckerNeverAcksHeldDeliveries(t *testing.T) {
	a, out := newTestAcker()
	ch := &channelStub{name: "c1"}
	a.register(deliveries(ch, 1)[0], false)
	a.register(deliveries(ch, 2)[0], true) // left for the channel's close to return
	a.register(deliveries(ch, 3)[0], false)
	a.stored(deliveries(ch, 1))
	a.stored(deliveries(ch, 3))
	require.Equal(t, []sent{{"c1", 1, true}}, *out, "3 waits behind the held 2")
	a.flush()
	require.Equal(t, []sent{{"c1", 1, true}, {"c1", 3, false}}, *out, "flush acks 3 alone, never 2")
}

func TestAckerAcksAboveAHeldDeliveryWithinTheBound(t *testing.T) {
	b := setupAcker()
	a, out := b.a, b.out
	ch := &channelStub{name: "c1"}
	a.register(deliveries(ch, 1)[0], true)
	registerAll(a, ch, 2, 3)
	a.stored(deliveries(ch, 2, 3))
	require.Empty(t, *out)
	b.clock.fire()
	require.Equal(t, []sent{{"c1", 2, false}, {"c1", 3, false}}, *out, "never a multiple ack over the held 1")
	a.stored(deliveries(ch, 1)) // not expected; a held delivery still is never acked
	a.flush()
	require.Len(t, *out, 2)
}

func TestAckerFlushesInTagOrder(t *testing.T) {
	b := setupAcker()
	a, out := b.a, b.out
	ch := &channelStub{name: "c1"}
	registerAll(a, ch, 1, 2, 3, 4, 5, 6)
	a.stored(deliveries(ch, 6, 3))
	a.stored(deliveries(ch, 5))
	a.flush()
	require.Equal(t, []sent{{"c1", 3, false}, {"c1", 5, false}, {"c1", 6, false}}, *out)
	require.Empty(t, b.clock.armed(), "flush stops the timer")
	b.clock.fireStale()
	require.Len(t, *out, 3, "nothing is acked twice")
}

// The timer's acks go through the guard, which the tenant consumer holds closed once the channel closes: a frame
// after the close would be a connection error for every consumer on the connection.
func TestAckerTimerSendsNothingOnceTheChannelIsClosed(t *testing.T) {
	b := setupAcker()
	a, out := b.a, b.out
	ch := &channelStub{name: "c1"}
	registerAll(a, ch, 1, 2)
	a.stored(deliveries(ch, 2))
	*b.open = false
	b.clock.fire()
	require.Empty(t, *out)
}

func TestAckerForgetsAnEarlierChannel(t *testing.T) {
	b := setupAcker()
	a, out := b.a, b.out
	old, cur := &channelStub{name: "old"}, &channelStub{name: "new"}
	registerAll(a, old, 1, 2, 3)
	a.stored(deliveries(old, 3)) // waits behind 1 and 2, timer armed
	// go-rabbitmq reopened the channel: tags start again.
	a.register(deliveries(cur, 1)[0], false)
	require.Empty(t, b.clock.armed(), "the old channel's timer is stopped")
	b.clock.fireStale()
	a.stored(deliveries(old, 1, 2))
	require.Empty(t, *out, "deliveries of a closed channel cannot be acked")
	a.stored(deliveries(cur, 1))
	require.Equal(t, []sent{{"new", 1, true}}, *out)
}

// With a delay, a multiple ack that became due waits for the deliveries stored after it, and one ack covers
// them all when the timer fires.
func TestAckerDelayedAckCoversLaterStores(t *testing.T) {
	b := setupAcker()
	a, out := b.a, b.out
	a.delay, a.maxDue = 20*time.Millisecond, 100
	ch := &channelStub{name: "c1"}
	registerAll(a, ch, 1, 2, 3, 4, 5)
	a.stored(deliveries(ch, 1))
	require.Empty(t, *out, "the due ack waits")
	require.Equal(t, []time.Duration{20 * time.Millisecond}, b.clock.armed())
	a.stored(deliveries(ch, 2, 3))
	require.Len(t, b.clock.armed(), 1, "one timer for the due ack, whatever is stored after it")
	b.clock.fire()
	require.Equal(t, []sent{{"c1", 3, true}}, *out, "one multiple ack for the three stores")
	b.clock.fireStale()
	require.Len(t, *out, 1, "a timer that fired sends nothing more")

	a.stored(deliveries(ch, 4))
	require.Equal(t, []time.Duration{20 * time.Millisecond}, b.clock.armed(), "the next due ack waits again")
	a.flush()
	require.Equal(t, sent{"c1", 4, true}, (*out)[1], "the channel's close does not wait for the delay")
	require.Empty(t, b.clock.armed())
	b.clock.fireStale()
	require.Len(t, *out, 2, "nothing is acked twice")
}

// A due ack that covers maxDue deliveries goes at once: acks that wait never fill the prefetch window.
func TestAckerDelayedAckGoesAtOnceWhenItCoversMaxDue(t *testing.T) {
	b := setupAcker()
	a, out := b.a, b.out
	a.delay, a.maxDue = 20*time.Millisecond, 4
	ch := &channelStub{name: "c1"}
	registerAll(a, ch, 11, 12, 13, 14, 15, 16, 17, 18, 19)
	a.stored(deliveries(ch, 11, 12, 13))
	require.Empty(t, *out, "3 of the 4 that the ack may cover")
	a.stored(deliveries(ch, 14))
	require.Equal(t, []sent{{"c1", 14, true}}, *out, "the fourth sends it")
	require.Empty(t, b.clock.armed(), "its timer is stopped")
	b.clock.fireStale()
	require.Len(t, *out, 1)
	a.stored(deliveries(ch, 15, 16, 17, 18, 19))
	require.Equal(t, sent{"c1", 19, true}, (*out)[1], "counted from the last ack sent")
}

// The due ack's timer goes through the guard like the bound's: nothing is sent once the channel closes, and a
// later channel forgets the due ack of the earlier one (its close returned those deliveries).
func TestAckerDelayedAckOfAClosedChannel(t *testing.T) {
	b := setupAcker()
	a, out := b.a, b.out
	a.delay, a.maxDue = 20*time.Millisecond, 100
	old, cur := &channelStub{name: "old"}, &channelStub{name: "new"}
	registerAll(a, old, 1, 2)
	a.stored(deliveries(old, 1))
	*b.open = false
	b.clock.fire()
	require.Empty(t, *out, "the guard holds the timer's ack once the channel is closed")
	*b.open = true

	a.stored(deliveries(old, 2))
	a.register(deliveries(cur, 1)[0], false)
	require.Empty(t, b.clock.armed(), "the earlier channel's due ack is forgotten")
	b.clock.fireStale()
	require.Empty(t, *out)
	a.stored(deliveries(cur, 1))
	b.clock.fire()
	require.Equal(t, []sent{{"new", 1, true}}, *out)
}

// brokerModel is one channel's unacknowledged deliveries as RabbitMQ keeps them, with what the test did to each:
// it fails the test on what RabbitMQ would refuse (an unknown delivery tag closes the channel) and on acks of
// deliveries that were not stored.
type brokerModel struct {
	t     *testing.T
	state map[uint64]ackState // outstanding on the channel → what the worker did with it
}

func (m *brokerModel) ack(tag uint64, multiple bool) {
	st, ok := m.state[tag]
	require.True(m.t, ok, "ack of unknown delivery tag %d (PRECONDITION_FAILED)", tag)
	if !multiple {
		require.Equal(m.t, ackStored, st, "single ack of tag %d, which is not stored", tag)
		delete(m.state, tag)
		return
	}
	for t, s := range m.state {
		if t <= tag {
			require.Equal(m.t, ackStored, s, "multiple ack of %d covers tag %d, which is not stored", tag, t)
			delete(m.state, t)
		}
	}
}

// Random interleavings of deliveries, stores, settlements, held deliveries, timers and flushes on a model of the
// broker, with and without a delay: no ack is ever refused or covers a pending or held delivery, the multiple
// acks rise, and nothing stored stays unacked once the timers fired or the acker was flushed.
func TestAckerRandomInterleavingsAgainstABrokerModel(t *testing.T) {
	for seed := range uint64(300) {
		rng := rand.New(rand.NewPCG(seed, seed))
		m := &brokerModel{t: t, state: map[uint64]ackState{}}
		ch := &channelStub{name: "c"}
		clock := &fakeClock{}
		var lastMultiple uint64
		a := newAcker(func(_ amqp.Acknowledger, tag uint64, multiple bool) {
			if multiple {
				require.Greater(t, tag, lastMultiple, "seed %d: multiple acks rise", seed)
				lastMultiple = tag
			}
			m.ack(tag, multiple)
		}, func(f func()) { f() })
		a.after = clock.after
		if seed%2 == 1 {
			a.delay, a.maxDue = time.Millisecond, 1+seed%7
		}
		next := uint64(1)
		var inFlight []uint64 // registered, not settled by the worker yet
		take := func() uint64 {
			i := rng.IntN(len(inFlight))
			tag := inFlight[i]
			inFlight = append(inFlight[:i], inFlight[i+1:]...)
			return tag
		}
		for range 200 {
			switch op := rng.IntN(10); {
			case op < 4:
				held := rng.IntN(15) == 0
				a.register(deliveries(ch, next)[0], held)
				if held {
					m.state[next] = ackHeld
				} else {
					m.state[next] = ackPending
					inFlight = append(inFlight, next)
				}
				next++
			case op < 7 && len(inFlight) > 0:
				var batch []uint64
				for n := 1 + rng.IntN(3); n > 0 && len(inFlight) > 0; n-- {
					batch = append(batch, take())
				}
				for _, tag := range batch {
					m.state[tag] = ackStored
				}
				a.stored(deliveries(ch, batch...))
			case op < 8 && len(inFlight) > 0:
				tag := take()
				delete(m.state, tag) // nacked, rejected or acked on its own
				a.settled(deliveries(ch, tag)...)
			case op < 9:
				clock.fire()
				for tag, s := range m.state {
					require.NotEqual(t, ackStored, s, "seed %d: stored tag %d unacked after the bound", seed, tag)
				}
			default:
				if rng.IntN(10) == 0 {
					a.flush()
					for tag, s := range m.state {
						require.NotEqual(t, ackStored, s, "seed %d: stored tag %d unacked after flush", seed, tag)
					}
				}
			}
		}
	}
}

// The acker with its real timers, its work spread over concurrent workers: one delivery is never settled, and
// every other delivery is still acked, each alone or coalesced, and none twice; with and without a delay.
func TestAckerUnderConcurrentWorkersWithARealTimer(t *testing.T) {
	for _, delay := range []time.Duration{0, time.Millisecond} {
		t.Run(delay.String(), func(t *testing.T) { ackUnderConcurrentWorkers(t, delay) })
	}
}

func ackUnderConcurrentWorkers(t *testing.T, delay time.Duration) {
	const n = 400
	var mu sync.Mutex
	acked := map[uint64]bool{}
	all := make(chan struct{})
	ch := &channelStub{name: "c1"}
	var a *acker
	a = newAcker(func(_ amqp.Acknowledger, tag uint64, multiple bool) {
		mu.Lock()
		defer mu.Unlock()
		from := tag
		if multiple {
			from = 1
		}
		for t2 := from; t2 <= tag; t2++ {
			if t2 == 1 || (multiple && acked[t2]) {
				assert.False(t, t2 == 1, "tag 1 is never stored, never acked")
				continue
			}
			assert.False(t, acked[t2], "tag %d acked twice", t2)
			acked[t2] = true
		}
		if len(acked) == n-1 {
			close(all)
		}
	}, func(f func()) { f() })
	a.bound = time.Millisecond
	a.delay, a.maxDue = delay, 16
	registerAll(a, ch, 1)
	work := make(chan uint64, n)
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for tag := range work {
				a.stored(deliveries(ch, tag))
			}
		}()
	}
	for tag := uint64(2); tag <= n; tag++ {
		a.register(deliveries(ch, tag)[0], false)
		work <- tag
	}
	close(work)
	wg.Wait()
	select {
	case <-all:
	case <-time.After(10 * time.Second):
		t.Fatal("stored deliveries above the never-settled tag 1 were not all acked")
	}
}
