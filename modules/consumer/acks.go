package consumer

import (
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// acker coalesces the acknowledgements of one consumer channel: instead of one basic.ack per stored delivery,
// it sends one multiple ack for the highest delivery tag below which every delivery is settled, whichever
// worker stored it. Stores finish out of order (several workers share the channel), so an ack whose lower tags
// are still being stored waits for them.
//
// Every delivery the channel hands over is registered, in tag order, before a worker can see it; a delivery
// that must not be acked by a multiple ack (held for the channel's close to return it) is registered as held
// and stops the coalescing; flush then acks what is left one by one. Deliveries of an earlier channel (go-rabbitmq
// reopened it after a connection loss) are ignored: their tags mean nothing on the new channel, and the broker
// redelivers them. All methods are safe for concurrent use; send is called under the acker's lock, so acks
// reach the channel in tag order.
//
// With a delay, a due ack waits up to delay for later deliveries to be stored too, so that one multiple ack
// covers them all (each ack is a command the quorum queue replicates), unless maxDue stored deliveries wait
// already (the prefetch window must not fill up with stored deliveries). The ack is sent by a timer, through
// guard, which runs it only while the channel is open.
type acker struct {
	send   func(ch amqp.Acknowledger, tag uint64, multiple bool)
	delay  time.Duration
	maxDue int
	guard  func(func())

	mu    sync.Mutex
	ch    amqp.Acknowledger // the channel whose tags are tracked
	low   uint64            // lowest tag not settled yet (0: nothing registered)
	state map[uint64]ackState
	due   uint64 // highest tag of the multiple ack waiting for the timer (0: none)
	dueN  int    // stored deliveries that ack covers
	timer *time.Timer
}

type ackState uint8

const (
	ackPending ackState = iota // handed to a worker, not settled
	ackHeld                    // left for the channel's close to return; never covered by a multiple ack
	ackStored                  // stored; its ack is due
	ackSettled                 // settled on its own already (a nack, a reject, a dead letter's ack)
)

func newAcker(send func(ch amqp.Acknowledger, tag uint64, multiple bool)) *acker {
	return &acker{send: send, state: map[uint64]ackState{}, guard: func(f func()) { f() }}
}

// withDelay makes the acker hold due acks up to delay, or until maxDue stored deliveries wait; guard runs the
// timer's sends (it must not hold the acker's lock).
func (a *acker) withDelay(delay time.Duration, maxDue int, guard func(func())) *acker {
	a.delay, a.maxDue, a.guard = delay, max(maxDue, 1), guard
	return a
}

// register records a delivery the channel handed over; held deliveries are never acked.
func (a *acker) register(d amqp.Delivery, held bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if d.Acknowledger != a.ch {
		a.ch, a.low = d.Acknowledger, d.DeliveryTag
		a.due, a.dueN = 0, 0
		clear(a.state)
	}
	st := ackPending
	if held {
		st = ackHeld
	}
	a.state[d.DeliveryTag] = st
}

// stored marks deliveries stored and sends the ack that became due, if any.
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
		if _, ok := a.state[d.DeliveryTag]; ok {
			a.state[d.DeliveryTag] = st
		}
	}
	var last uint64
	n := 0
	for {
		s, ok := a.state[a.low]
		if !ok || (s != ackStored && s != ackSettled) {
			break
		}
		if s == ackStored {
			last = a.low
			n++
		}
		delete(a.state, a.low)
		a.low++
	}
	if last == 0 {
		return
	}
	a.due, a.dueN = last, a.dueN+n
	switch {
	case a.delay <= 0 || a.dueN >= a.maxDue:
		a.sendDue()
	case a.timer == nil:
		a.timer = time.AfterFunc(a.delay, a.fire)
	}
}

// sendDue sends the due multiple ack; a.mu must be held.
func (a *acker) sendDue() {
	if a.due != 0 {
		a.send(a.ch, a.due, true)
	}
	a.due, a.dueN = 0, 0
}

// fire sends the due ack when the delay is over.
func (a *acker) fire() {
	a.guard(func() {
		a.mu.Lock()
		defer a.mu.Unlock()
		a.timer = nil
		a.sendDue()
	})
}

// flush sends the ack a delay holds, then acks, one by one, the stored deliveries whose ack still waits
// (behind a held or unsettled one).
func (a *acker) flush() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.timer != nil {
		a.timer.Stop()
		a.timer = nil
	}
	a.sendDue()
	for tag, s := range a.state {
		if s == ackStored {
			a.send(a.ch, tag, false)
			delete(a.state, tag)
		}
	}
}
