package consumer

import (
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"
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

func newTestAcker() (*acker, *[]sent) {
	var out []sent
	return newAcker(func(ch amqp.Acknowledger, tag uint64, multiple bool) {
		out = append(out, sent{ch.(*channelStub).name, tag, multiple})
	}), &out
}

func deliveries(ch *channelStub, tags ...uint64) []amqp.Delivery {
	ds := make([]amqp.Delivery, len(tags))
	for i, t := range tags {
		ds[i] = amqp.Delivery{Acknowledger: ch, DeliveryTag: t}
	}
	return ds
}

func TestAckerCoalescesOutOfOrderStores(t *testing.T) {
	a, out := newTestAcker()
	ch := &channelStub{name: "c1"}
	for _, d := range deliveries(ch, 1, 2, 3, 4, 5, 6, 7) {
		a.register(d, false)
	}
	a.stored(deliveries(ch, 3, 4)) // a later batch finishes first: its ack waits
	require.Empty(t, *out)
	a.stored(deliveries(ch, 1, 2))
	require.Equal(t, []sent{{"c1", 4, true}}, *out, "one multiple ack settles 1..4")
	a.settled(deliveries(ch, 5)...) // a nack sent on its own
	require.Len(t, *out, 1, "nothing stored became due")
	a.stored(deliveries(ch, 6))
	require.Equal(t, sent{"c1", 6, true}, (*out)[1], "the multiple ack passes over the settled delivery")
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

func TestAckerForgetsAnEarlierChannel(t *testing.T) {
	a, out := newTestAcker()
	old, cur := &channelStub{name: "old"}, &channelStub{name: "new"}
	a.register(deliveries(old, 1)[0], false)
	a.register(deliveries(old, 2)[0], false)
	// go-rabbitmq reopened the channel: tags start again.
	a.register(deliveries(cur, 1)[0], false)
	a.stored(deliveries(old, 1, 2))
	require.Empty(t, *out, "deliveries of a closed channel cannot be acked")
	a.stored(deliveries(cur, 1))
	require.Equal(t, []sent{{"new", 1, true}}, *out)
}
