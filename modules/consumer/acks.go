package consumer

import (
	"sync"

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
type acker struct {
	send func(ch amqp.Acknowledger, tag uint64, multiple bool)

	mu    sync.Mutex
	ch    amqp.Acknowledger // the channel whose tags are tracked
	low   uint64            // lowest tag not settled yet (0: nothing registered)
	state map[uint64]ackState
}

type ackState uint8

const (
	ackPending ackState = iota // handed to a worker, not settled
	ackHeld                    // left for the channel's close to return; never covered by a multiple ack
	ackStored                  // stored; its ack is due
	ackSettled                 // settled on its own already (a nack, a reject, a dead letter's ack)
)

func newAcker(send func(ch amqp.Acknowledger, tag uint64, multiple bool)) *acker {
	return &acker{send: send, state: map[uint64]ackState{}}
}

// register records a delivery the channel handed over; held deliveries are never acked.
func (a *acker) register(d amqp.Delivery, held bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if d.Acknowledger != a.ch {
		a.ch, a.low = d.Acknowledger, d.DeliveryTag
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
	for {
		s, ok := a.state[a.low]
		if !ok || (s != ackStored && s != ackSettled) {
			break
		}
		if s == ackStored {
			last = a.low
		}
		delete(a.state, a.low)
		a.low++
	}
	if last != 0 {
		a.send(a.ch, last, true)
	}
}

// flush acks, one by one, the stored deliveries whose ack still waits (behind a held or unsettled one).
func (a *acker) flush() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for tag, s := range a.state {
		if s == ackStored {
			a.send(a.ch, tag, false)
			delete(a.state, tag)
		}
	}
}
