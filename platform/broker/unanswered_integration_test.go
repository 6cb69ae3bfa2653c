package broker_test

import (
	"context"
	"errors"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/acme/msgsvc/platform/broker"
	"github.com/acme/msgsvc/test/testenv"
)

// TestACallerGivingUpEarlyRefusesNoOtherCallAboutTheQueue: a consumer's start stops probing its queue as soon as
// it returns, often with a passive declare still on its way. That says nothing of the broker, and a deletion of
// the same queue a moment later (the tenant deleted while its consumer started) must still delete it. The queue's
// process is suspended so that the probe is still unanswered when its caller gives up; the delete that follows
// waits for the broker like any call and deletes the queue once it answers. A call that waited a second or more
// before its caller gave up still refuses the next ones at once (a queue that does not answer holds one channel).
func TestACallerGivingUpEarlyRefusesNoOtherCallAboutTheQueue(t *testing.T) {
	s := testenv.Get(t)
	amqpURL, conn := classicQueues(t, s, "probed", "stuck")

	resume := s.SuspendQueue(t, amqpURL, "probed")
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	_, err := conn.InspectQueue(ctx, "probed")
	cancel()
	require.ErrorIs(t, err, broker.ErrUnanswered, "the probe of a suspended queue was answered")
	deleted := make(chan error, 1)
	go func() { deleted <- conn.DeleteQueues(context.Background(), "probed") }()
	time.Sleep(300 * time.Millisecond)
	resume()
	require.NoError(t, <-deleted, "the delete after a probe given up on early")
	st, err := conn.InspectQueue(context.Background(), "probed")
	require.NoError(t, err)
	require.False(t, st.Exists, "the queue is still there")

	resumeStuck := s.SuspendQueue(t, amqpURL, "stuck")
	ctx, cancel = context.WithTimeout(context.Background(), 1200*time.Millisecond)
	_, err = conn.InspectQueue(ctx, "stuck")
	cancel()
	require.ErrorIs(t, err, broker.ErrUnanswered)
	start := time.Now()
	err = conn.DeleteQueues(context.Background(), "stuck")
	require.True(t, errors.Is(err, broker.ErrUnanswered),
		"a delete while a call unanswered for a second still runs: %v", err)
	require.Less(t, time.Since(start), time.Second, "the delete was not refused at once")
	require.Equal(t, 1, conn.Unanswered())
	resumeStuck()
	require.Eventually(t, func() bool { return conn.Unanswered() == 0 }, 5*time.Second, 20*time.Millisecond)
	require.NoError(t, conn.DeleteQueues(context.Background(), "stuck"))
}

// TestAHurriedCallGivesUpOnceItWaitedASecond: under broker.WithHurry, a call about a queue that does not answer
// gives up once its hurry channel is closed and it has waited a second, where it would wait AnswerTimeout (10 s),
// and counts as unanswered as after that timeout. A call the broker answers is not affected. Reconciliation
// passes run so, and a pass asked for meanwhile no longer waits behind a stuck queue.
func TestAHurriedCallGivesUpOnceItWaitedASecond(t *testing.T) {
	s := testenv.Get(t)
	amqpURL, conn := classicQueues(t, s, "healthy", "stuck", "frozen")
	hurried := make(chan struct{})
	close(hurried)

	st, err := conn.InspectQueue(broker.WithHurry(context.Background(), hurried), "healthy")
	require.NoError(t, err, "a call the broker answers, hurried")
	require.True(t, st.Exists)

	// Hurried before the call: it gives up once it has waited a second.
	defer s.SuspendQueue(t, amqpURL, "stuck")()
	start := time.Now()
	_, err = conn.InspectQueue(broker.WithHurry(context.Background(), hurried), "stuck")
	took := time.Since(start)
	require.ErrorIs(t, err, broker.ErrUnanswered)
	require.GreaterOrEqual(t, took, time.Second, "a hurried call gave up before it waited a second")
	require.Less(t, took, 5*time.Second, "a hurried call waited for AnswerTimeout")
	require.Equal(t, 1, conn.Unanswered(), "the queue counts as unanswered")

	// Hurried while it waits, past the second: it gives up at once.
	defer s.SuspendQueue(t, amqpURL, "frozen")()
	hurry := make(chan struct{})
	gaveUp := make(chan error, 1)
	go func() {
		_, err := conn.InspectQueue(broker.WithHurry(context.Background(), hurry), "frozen")
		gaveUp <- err
	}()
	time.Sleep(2 * time.Second)
	select {
	case err := <-gaveUp:
		t.Fatalf("the call ended before it was hurried: %v", err)
	default:
	}
	start = time.Now()
	close(hurry)
	select {
	case err := <-gaveUp:
		require.ErrorIs(t, err, broker.ErrUnanswered)
	case <-time.After(5 * time.Second):
		t.Fatal("a call hurried after two seconds of waiting did not give up")
	}
	t.Logf("hurried after 2 s of waiting, it gave up in %s", time.Since(start).Round(time.Millisecond))
	require.Equal(t, 2, conn.Unanswered())
}

// TestAQueueThatDoesNotAnswerMarksNoOtherQueueItsCallNamed: a tenant's declare names the shared dead-letter queue
// (its binding for the tenant) before the tenant's own queue. When the broker answers about the shared queue but
// not about the tenant's (its process busy or frozen), only the tenant's queue is marked unanswered: the next
// tenant's declare, which names the shared queue too, is served at once. Marking every queue of the call refused
// every creation for as long as one queue did not answer.
func TestAQueueThatDoesNotAnswerMarksNoOtherQueueItsCallNamed(t *testing.T) {
	s := testenv.Get(t)
	amqpURL := s.NewVHost(t)
	ch := testenv.AMQP(t, amqpURL)
	require.NoError(t, ch.ExchangeDeclare("dead.x", "direct", true, false, false, false, nil))
	classic := amqp.Table{"x-queue-type": "classic"}
	for _, q := range []string{"dead", "stuck"} {
		_, err := ch.QueueDeclare(q, true, false, false, false, classic)
		require.NoError(t, err)
	}
	conn, err := broker.Dial(broker.Options{URLs: []string{amqpURL}, ReconnectInterval: 100 * time.Millisecond,
		ConnectionName: t.Name()}, zap.NewNop())
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	shared := func(key string) broker.Queue {
		return broker.Queue{Name: "dead", Args: classic, Exchange: "dead.x", Key: key}
	}

	resume := s.SuspendQueue(t, amqpURL, "stuck")
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	err = conn.DeclareQueues(ctx, shared("stuck"), broker.Queue{Name: "stuck", Args: classic})
	cancel()
	require.ErrorIs(t, err, broker.ErrUnanswered, "the declare of a suspended queue was answered")
	require.Equal(t, 1, conn.Unanswered(), "queues marked unanswered")

	start := time.Now()
	require.NoError(t, conn.DeclareQueues(context.Background(), shared("next"), broker.Queue{Name: "next", Args: classic}),
		"the next declare naming the shared queue")
	require.Less(t, time.Since(start), 5*time.Second)
	err = conn.DeclareQueues(context.Background(), broker.Queue{Name: "stuck", Args: classic})
	require.ErrorIs(t, err, broker.ErrUnanswered, "a declare of the queue that does not answer is refused at once")

	resume()
	require.Eventually(t, func() bool { return conn.Unanswered() == 0 }, 5*time.Second, 20*time.Millisecond)
	require.NoError(t, conn.DeclareQueues(context.Background(), shared("stuck"), broker.Queue{Name: "stuck", Args: classic}))
}

// TestABindOnlyQueueNeverWaitsOnItsProcessAndIsDeclaredWhenMissing: a queue to bind only (the shared dead-letter
// queue, which every creation binds) is bound without a call to its process, so a queue whose process does not
// answer is bound at once; a queue to bind only that is missing (deleted by hand) is declared, then bound, and
// the queues after it in the call are declared too.
func TestABindOnlyQueueNeverWaitsOnItsProcessAndIsDeclaredWhenMissing(t *testing.T) {
	s := testenv.Get(t)
	amqpURL := s.NewVHost(t)
	ch := testenv.AMQP(t, amqpURL)
	require.NoError(t, ch.ExchangeDeclare("shared.x", "direct", true, false, false, false, nil))
	classic := amqp.Table{"x-queue-type": "classic"}
	_, err := ch.QueueDeclare("shared", true, false, false, false, classic)
	require.NoError(t, err)
	conn, err := broker.Dial(broker.Options{URLs: []string{amqpURL}, ReconnectInterval: 100 * time.Millisecond,
		ConnectionName: t.Name()}, zap.NewNop())
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	bind := func(name, key string) broker.Queue {
		return broker.Queue{Name: name, Args: classic, Exchange: "shared.x", Key: key, BindOnly: true}
	}

	resume := s.SuspendQueue(t, amqpURL, "shared")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	err = conn.DeclareQueues(ctx, bind("shared", "a"), broker.Queue{Name: "a", Args: classic})
	cancel()
	require.NoError(t, err, "binding a queue whose process does not answer")
	resume()

	require.NoError(t, conn.DeclareQueues(context.Background(), bind("gone", "b"), broker.Queue{Name: "b", Args: classic}),
		"binding a missing queue")
	for _, q := range []string{"gone", "b"} {
		st, err := conn.InspectQueue(context.Background(), q)
		require.NoError(t, err)
		require.True(t, st.Exists, "queue %s was not declared", q)
	}
	// The binding routes: a message published with the key reaches the queue declared on the way.
	require.NoError(t, ch.PublishWithContext(context.Background(), "shared.x", "b", false, false, amqp.Publishing{Body: []byte("x")}))
	require.Eventually(t, func() bool {
		st, err := conn.InspectQueue(context.Background(), "gone")
		return err == nil && st.Messages == 1
	}, 5*time.Second, 20*time.Millisecond, "the binding of the declared queue does not route")
}

// classicQueues declares classic queues named names in a virtual host of their own, and returns its URL and a
// Conn dialled to it (closed when the test ends).
func classicQueues(t *testing.T, s *testenv.Servers, names ...string) (string, *broker.Conn) {
	t.Helper()
	amqpURL := s.NewVHost(t)
	ch := testenv.AMQP(t, amqpURL)
	for _, q := range names {
		_, err := ch.QueueDeclare(q, true, false, false, false, amqp.Table{"x-queue-type": "classic"})
		require.NoError(t, err)
	}
	conn, err := broker.Dial(broker.Options{URLs: []string{amqpURL}, ReconnectInterval: 100 * time.Millisecond,
		ConnectionName: t.Name()}, zap.NewNop())
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	return amqpURL, conn
}
