package broker_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/acme/msgsvc/platform/broker"
	"github.com/acme/msgsvc/test/testenv"
)

// floodStuckQueue publishes to the queue "stuck" through p, four messages per publish from 16 goroutines, until
// n messages were handed over or a publish failed with ErrUnconfirmed; it returns the messages handed over (all
// but those refused with ErrNotSent) and whether the bound refused one.
func floodStuckQueue(t *testing.T, p *broker.Publisher, n int) (sent int, refused bool) {
	t.Helper()
	var (
		handed  atomic.Int64
		refuse  atomic.Bool
		wg      sync.WaitGroup
		unknown atomic.Value
	)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for handed.Load() < int64(n) && !refuse.Load() {
				ms := make([]broker.Message, 4)
				for i := range ms {
					ms[i] = broker.Message{RoutingKey: "stuck", MessageID: "m", Body: []byte(`{}`)}
				}
				err := p.PublishAll(context.Background(), ms)
				switch {
				case errors.Is(err, broker.ErrUnconfirmed):
					if !errors.Is(err, broker.ErrNotSent) {
						unknown.Store("refused by the bound without saying nothing was sent: " + err.Error())
					}
					refuse.Store(true)
				case err == nil:
					unknown.Store("a publish to a suspended queue was confirmed")
				default:
					handed.Add(int64(len(ms)))
				}
			}
		}()
	}
	wg.Wait()
	if u := unknown.Load(); u != nil {
		t.Fatal(u)
	}
	return int(handed.Load()), refuse.Load()
}

// TestAQueueThatDoesNotAnswerNeverBlocksThePublishingConnection suspends one classic queue's process and floods
// it through a publisher with one channel, then publishes to another queue on the same publisher. RabbitMQ
// lets a channel send 400 messages to a queue that has not taken them, then blocks the channel, and its
// connection 400 messages later: without a bound the other queue's publishes are no longer confirmed. With
// MaxUnconfirmed the flood is refused at once past the bound (nothing sent), and the other queue's publishes
// are confirmed; they are again with the bound lifted once the queue answered and confirmed its backlog.
func TestAQueueThatDoesNotAnswerNeverBlocksThePublishingConnection(t *testing.T) {
	s := testenv.Get(t)
	amqpURL := s.NewVHost(t)
	ch := testenv.AMQP(t, amqpURL)
	for _, q := range []string{"stuck", "other"} {
		_, err := ch.QueueDeclare(q, true, false, false, false, amqp.Table{"x-queue-type": "classic"})
		require.NoError(t, err)
	}
	publisher := func(bound int) *broker.Publisher {
		p, err := broker.NewPublisher(broker.PublisherOptions{URLs: []string{amqpURL}, Name: t.Name(), Channels: 1,
			Timeout: 300 * time.Millisecond, MaxUnconfirmed: bound}, zap.NewNop())
		require.NoError(t, err)
		t.Cleanup(p.Close)
		return p
	}
	toOther := func(p *broker.Publisher) error {
		return p.Publish(context.Background(), broker.Message{RoutingKey: "other", MessageID: "o", Body: []byte(`{}`)})
	}
	resume := s.SuspendQueue(t, amqpURL, "stuck")

	bounded := publisher(256)
	sent, refused := floodStuckQueue(t, bounded, 2000)
	require.True(t, refused, "%d messages were sent to the queue that does not answer, and none was refused", sent)
	require.LessOrEqual(t, sent, 256)
	for range 20 {
		require.NoError(t, toOther(bounded), "a publish to another queue after %d unconfirmed to the stuck one", sent)
	}

	unbounded := publisher(0)
	sentUnbounded, _ := floodStuckQueue(t, unbounded, 1200)
	require.Error(t, toOther(unbounded), "RabbitMQ still confirmed publishes on a connection that sent %d messages to a "+
		"queue that does not answer: the bound would not be needed", sentUnbounded)
	t.Logf("with the bound: %d sent to the stuck queue, then refused, and the other queue's publishes confirmed; "+
		"without: %d sent, and the other queue's publish not confirmed", sent, sentUnbounded)

	resume()
	require.Eventually(t, func() bool {
		return toOther(bounded) == nil && bounded.Publish(context.Background(),
			broker.Message{RoutingKey: "stuck", MessageID: "s", Body: []byte(`{}`)}) == nil
	}, 30*time.Second, 100*time.Millisecond,
		"the bounded publisher did not publish to the queue once it answered again")
}
