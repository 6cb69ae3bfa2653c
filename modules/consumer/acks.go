package consumer

import (
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// ackBound is how long the ack of a stored delivery may wait behind a lower delivery that is not settled yet (a
// batch in its retry budget, a slow store, a delivery held for the channel's close) before the acker acks the
// stored deliveries one by one. Stores finish out of order by a few milliseconds all the time (several workers
// share a channel), and one multiple ack is one command the quorum queue replicates where single acks are one
// each; a hole that outlasts this bound is no such reordering, and the prefetch window must not fill up with
// deliveries that are stored but unacked.
const ackBound = 20 * time.Millisecond

// acker coalesces the acknowledgements of one consumer channel: instead of one basic.ack per stored delivery,
// it sends one multiple ack for the highest delivery tag below which every delivery is settled, whichever
// worker stored it. Stores finish out of order (several workers share the channel), so an ack whose lower tags
// are still being stored waits for them, but only for bound: a lower delivery that is still not settled then is
// a hole (a batch in its retry budget, a slow store, a delivery held for the channel's close), and the acker
// acks the deliveries stored above it one by one, at once, until the hole closes; then it coalesces again.
//
// A multiple ack that became due may also wait (delay, CONSUMER_ACK_DELAY) for the deliveries stored after it, so
// that one ack covers the stores of several: with quorum queues every ack is a command the queue writes to its
// log, and a busy tenant's consumer stores one envelope at a time. It waits at most delay, and goes at once when
// it covers maxDue deliveries; flush sends it, and a later channel forgets it (the close returned those deliveries).
//
// Its modes:
//   - coalescing: no stored delivery waits behind an unsettled one;
//   - holding: stored deliveries wait behind the lowest unsettled tag, and a timer runs out bound after the
//     first of them began to wait;
//   - bypassing: the timer ran out while the lowest unsettled tag (the hole) still held stored deliveries back;
//     they were acked one by one, and so is every delivery stored above the hole until it is settled.
//
// Every delivery the channel hands over is registered, in tag order, before a worker can see it; a delivery
// that must not be acked (held for the channel's close to return it) is registered as held. A multiple ack never
// covers a pending or held tag (a multiple ack covers every lower unacknowledged tag on the channel, so above a
// hole only single acks are safe), and every tag is acked once: a single ack marks it settled, and a later
// multiple ack, whose own tag is always one still unacknowledged, passes over it. flush acks what is left one by
// one. Deliveries of an earlier channel (one reopened after a connection loss) are ignored: their
// tags mean nothing on the new channel, and the broker redelivers them.
//
// All methods are safe for concurrent use; send is called under the acker's lock, so acks reach the channel in
// the order the acker decided them: multiple acks in increasing tag order, and no ack for a tag an earlier one
// covered. The timer's acks run through guard, which runs them only while the channel is open (the caller's
// close guard must be taken before the acker's lock, as every other caller of the acker does).
type acker struct {
	send  func(ch amqp.Acknowledger, tag uint64, multiple bool)
	guard func(func())
	bound time.Duration
	// delay is how long a multiple ack that became due may wait for the deliveries stored after it, so that one
	// ack covers them all (0: it goes at once); maxDue is how many deliveries a waiting ack may cover before it
	// goes at once, whatever the delay, so that the prefetch window never fills up with acks that wait.
	delay  time.Duration
	maxDue uint64
	// after runs f once d has passed and returns a function that cancels it (time.AfterFunc; tests inject
	// their own clock).
	after func(d time.Duration, f func()) (stop func() bool)

	mu      sync.Mutex
	ch      amqp.Acknowledger // the channel whose tags are tracked
	low     uint64            // lowest tag not settled yet (0: nothing registered)
	high    uint64            // highest tag registered
	state   map[uint64]ackState
	waiting int // stored deliveries whose ack waits (each above low)
	mode    ackMode
	hole    uint64      // in bypassing mode, the tag that held stored deliveries back for bound
	stop    func() bool // cancels the running timer (holding mode)
	epoch   uint64      // counts timers; one that fires after it was cancelled or replaced does nothing
	due     uint64      // the multiple ack that waits for delay (0: none)
	ackedTo uint64      // the highest tag a multiple ack covered, or the one before the channel's first
	dueStop func() bool // cancels the due ack's timer
	dueGen  uint64      // counts the due ack's timers, as epoch does the bound's
}

type ackState uint8

const (
	ackPending ackState = iota // handed to a worker, not settled
	ackHeld                    // left for the channel's close to return; never acked
	ackStored                  // stored; its ack is due
	ackSettled                 // settled on its own already (a nack, a reject, a dead letter's ack, a single ack above a hole)
)

type ackMode uint8

const (
	ackCoalescing ackMode = iota
	ackHolding
	ackBypassing
)

// newAcker returns an acker that sends its acks with send and its timer's acks through guard.
func newAcker(send func(ch amqp.Acknowledger, tag uint64, multiple bool), guard func(func())) *acker {
	return &acker{send: send, guard: guard, bound: ackBound, state: map[uint64]ackState{},
		after: func(d time.Duration, f func()) func() bool { return time.AfterFunc(d, f).Stop }}
}

// register records a delivery the channel handed over; held deliveries are never acked.
func (a *acker) register(d amqp.Delivery, held bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if d.Acknowledger != a.ch {
		a.ch, a.low, a.high = d.Acknowledger, d.DeliveryTag, d.DeliveryTag
		clear(a.state)
		a.waiting = 0
		a.disarm()
		a.mode = ackCoalescing
		a.dropDue() // the earlier channel's close returned those deliveries
		a.ackedTo = d.DeliveryTag - 1
	}
	st := ackPending
	if held {
		st = ackHeld
	}
	if a.state[d.DeliveryTag] == ackStored {
		a.waiting-- // not expected: a stored delivery is not registered again
	}
	a.state[d.DeliveryTag] = st
	a.high = max(a.high, d.DeliveryTag)
}

// progress returns the highest delivery tag registered, which counts the deliveries the channel handed over,
// and whether any delivery registered is not settled yet.
func (a *acker) progress() (high uint64, open bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.high, len(a.state) > 0
}

// stored marks deliveries stored and sends the acks that became due, if any.
func (a *acker) stored(ds []amqp.Delivery) {
	a.mark(ds, ackStored)
}

// settled marks deliveries that were settled on their own (nacked, rejected or acked individually).
func (a *acker) settled(ds ...amqp.Delivery) {
	a.mark(ds, ackSettled)
}

func (a *acker) mark(ds []amqp.Delivery, st ackState) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, d := range ds {
		if d.Acknowledger != a.ch {
			continue
		}
		old, ok := a.state[d.DeliveryTag]
		if !ok || old == ackSettled || old == st || (old == ackHeld && st == ackStored) {
			continue // never acked twice; a held delivery is left for the channel's close
		}
		if old == ackStored {
			a.waiting--
		}
		if st == ackStored {
			a.waiting++
		}
		a.state[d.DeliveryTag] = st
	}
	var last uint64
	for {
		s, ok := a.state[a.low]
		if !ok || (s != ackStored && s != ackSettled) {
			break
		}
		if s == ackStored {
			last = a.low
			a.waiting--
		}
		delete(a.state, a.low)
		a.low++
	}
	if last != 0 {
		a.ackTo(last)
	}
	a.step()
}

// ackTo acks every delivery up to tag with one multiple ack: at once, or after delay together with the
// deliveries stored meanwhile, unless it covers maxDue deliveries; a.mu must be held.
func (a *acker) ackTo(tag uint64) {
	if a.delay <= 0 || tag-a.ackedTo >= a.maxDue {
		a.sendDue(tag)
		return
	}
	a.due = tag
	if a.dueStop != nil {
		return // the running timer sends the highest due tag
	}
	a.dueGen++
	gen := a.dueGen
	a.dueStop = a.after(a.delay, func() {
		a.guard(func() {
			a.mu.Lock()
			defer a.mu.Unlock()
			if gen == a.dueGen {
				a.sendDue(a.due)
			}
		})
	})
}

// sendDue sends the multiple ack up to tag now (0: none) and forgets the one that waited, which it covers; a.mu
// must be held.
func (a *acker) sendDue(tag uint64) {
	a.dropDue()
	if tag != 0 {
		a.send(a.ch, tag, true)
		a.ackedTo = tag
	}
}

// dropDue forgets the multiple ack that waits, unsent, and stops its timer; a.mu must be held.
func (a *acker) dropDue() {
	a.due = 0
	a.dueGen++
	if a.dueStop != nil {
		a.dueStop()
		a.dueStop = nil
	}
}

// step moves the acker to the mode its state calls for; a.mu must be held.
func (a *acker) step() {
	if a.mode == ackBypassing && a.low != a.hole {
		a.mode = ackCoalescing // the hole closed
	}
	switch a.mode {
	case ackCoalescing:
		if a.waiting > 0 {
			a.mode = ackHolding
			a.arm()
		}
	case ackHolding:
		if a.waiting == 0 {
			a.disarm()
			a.mode = ackCoalescing
		}
	case ackBypassing:
		a.ackWaiting()
	}
}

// arm starts the timer of holding mode; a.mu must be held.
func (a *acker) arm() {
	a.epoch++
	epoch := a.epoch
	a.stop = a.after(a.bound, func() { a.guard(func() { a.expire(epoch) }) })
}

// disarm cancels the timer, if one runs; a.mu must be held.
func (a *acker) disarm() {
	a.epoch++
	if a.stop != nil {
		a.stop()
		a.stop = nil
	}
}

// expire is the timer's work: the stored deliveries that waited bound are acked one by one, and so is every
// delivery stored above the lowest unsettled tag until it is settled.
func (a *acker) expire(epoch uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if epoch != a.epoch || a.mode != ackHolding {
		return // cancelled: the hole closed, the channel changed or the acker was flushed
	}
	a.stop = nil
	a.mode, a.hole = ackBypassing, a.low
	a.ackWaiting()
}

// ackWaiting acks the stored deliveries whose ack waits one by one, in tag order; a.mu must be held.
func (a *acker) ackWaiting() {
	for tag := a.low; a.waiting > 0 && tag <= a.high; tag++ {
		if a.state[tag] == ackStored {
			a.send(a.ch, tag, false)
			a.state[tag] = ackSettled
			a.waiting--
		}
	}
}

// flush sends the multiple ack that waits for delay, and acks, one by one, the stored deliveries whose ack still
// waits (behind a held or unsettled one); the channel is about to close.
func (a *acker) flush() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.sendDue(a.due)
	a.disarm()
	a.ackWaiting()
	a.mode = ackCoalescing
}
