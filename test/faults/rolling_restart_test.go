package faults

import (
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"

	"github.com/acme/msgsvc/modules/consumer"
	"github.com/acme/msgsvc/platform/config"
	"github.com/acme/msgsvc/test/testenv"
)

// TestRollingRestartKeepsQueuesConsumed restarts both of two replicas sharing 1,000 tenants, one after the
// other (each stops, which hands its tenants to the other, then starts again, which takes its share back),
// while every tenant queue's consumer count is watched. Handover is make-before-break (the replica giving a
// tenant up keeps consuming until the new owner announced its consumer, registered behind it on the single
// active consumer queue), so that queues are seldom seen without a consumer: it asserts that fewer than one
// tenant in ten ever was (when the old owner drained at once, 700 to 1,600 stretches were seen in four runs),
// and reports the number of stretches and the longest.
func TestRollingRestartKeepsQueuesConsumed(t *testing.T) {
	s := testenv.Get(t)
	cfg := s.Config(t)
	cfg.ReplicaHeartbeatInterval = 500 * time.Millisecond
	// Long enough that a heartbeat slowed by a loaded machine does not lapse the lease (a replica without its lease
	// stops its consumers at once); the replicas leave by deleting their row, so the TTL does not slow the test.
	cfg.ReplicaTTL = 12 * time.Second
	cfgA, cfgB := testenv.AnotherReplica(cfg, "a"), testenv.AnotherReplica(cfg, "b")
	a := testenv.Start(t, cfgA)
	b := testenv.Start(t, cfgB)

	const n = 1000
	queues := make([]string, n)
	var wg sync.WaitGroup
	next := make(chan int)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				queues[i] = consumer.QueueName(uuid.MustParse(a.CreateTenant(fmt.Sprintf("rolling-%d", i), 1)))
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()

	w := watchConsumers(t, cfg.AMQPURL, queues)
	testenv.Eventually(t, 120*time.Second, w.allConsumed, "every tenant queue has a consumer")
	w.reset()

	restart := func(app, other *testenv.App, c config.Config) *testenv.App {
		require.NoError(t, app.Stop())
		// The other replica holds every tenant now.
		testenv.Eventually(t, 120*time.Second, func() bool { return running(t, other) == n }, "the other replica consumes every tenant")
		next := testenv.Start(t, c)
		// The restarted replica takes its share back.
		testenv.Eventually(t, 120*time.Second, func() bool {
			mine := running(t, next)
			return mine > 0 && mine+running(t, other) == n
		}, "the restarted replica consumes its share")
		return next
	}
	start := time.Now()
	a = restart(a, b, cfgA)
	b = restart(b, a, cfgB)
	testenv.Eventually(t, 30*time.Second, w.allConsumed, "every tenant queue has a consumer")
	w.stop()
	longest, queue, gaps := w.result()
	passes, slowest := w.passStats()
	t.Logf("rolling restart of 2 replicas with %d tenants took %s: %d times a tenant queue was seen without a consumer; "+
		"the longest, %s (queue %s), to a resolution of one pass over the queues (%d passes, the slowest %s)",
		n, time.Since(start).Round(time.Millisecond), gaps, longest.Round(time.Millisecond), queue, passes, slowest.Round(time.Millisecond))
	require.Less(t, gaps, n/10, "tenant queues were seen without a consumer during the rolling restart: handover is not make-before-break")
}

// running returns the replica's msgsvc_consumers_running.
func running(t *testing.T, app *testenv.App) int {
	t.Helper()
	resp, err := http.Get(app.URL + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	m := regexp.MustCompile(`(?m)^msgsvc_consumers_running (\S+)$`).FindSubmatch(body)
	require.NotNil(t, m)
	v, err := strconv.ParseFloat(string(m[1]), 64)
	require.NoError(t, err)
	return int(v)
}

// consumerWatch polls the consumer count of every queue (passive declares over a few channels of its own
// connection) and records, per queue, how long it was seen without a consumer.
type consumerWatch struct {
	t      *testing.T
	queues []string
	done   chan struct{}
	ended  chan struct{}

	mu        sync.Mutex
	zeroSince []time.Time // when the current stretch without a consumer was first seen (zero: has one)
	everSeen  []bool      // a consumer was seen on it
	longest   time.Duration
	longestQ  string
	gaps      int
	passTook  time.Duration
	passes    int           // passes since the last reset
	slowest   time.Duration // the longest pass since the last reset
}

func watchConsumers(t *testing.T, amqpURL string, queues []string) *consumerWatch {
	conn, err := amqp.Dial(amqpURL)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	w := &consumerWatch{t: t, queues: queues, done: make(chan struct{}), ended: make(chan struct{}),
		zeroSince: make([]time.Time, len(queues)), everSeen: make([]bool, len(queues))}
	const lanes = 4
	chans := make([]*amqp.Channel, lanes)
	for i := range chans {
		chans[i], err = conn.Channel()
		require.NoError(t, err)
	}
	go func() {
		defer close(w.ended)
		counts := make([]int, len(queues))
		for {
			select {
			case <-w.done:
				return
			default:
			}
			began := time.Now()
			var lw sync.WaitGroup
			for l := range lanes {
				lw.Add(1)
				go func() {
					defer lw.Done()
					for i := l; i < len(queues); i += lanes {
						q, err := chans[l].QueueDeclarePassive(queues[i], true, false, false, false, nil)
						if err != nil {
							counts[i] = -1
							continue
						}
						counts[i] = q.Consumers
					}
				}()
			}
			lw.Wait()
			now := time.Now()
			w.mu.Lock()
			for i, c := range counts {
				switch {
				case c < 0:
				case c > 0:
					if !w.zeroSince[i].IsZero() && w.everSeen[i] {
						w.gaps++
						if d := now.Sub(w.zeroSince[i]); d > w.longest {
							w.longest, w.longestQ = d, queues[i]
						}
					}
					w.zeroSince[i] = time.Time{}
					w.everSeen[i] = true
				case w.zeroSince[i].IsZero():
					w.zeroSince[i] = now
				}
			}
			w.passTook = now.Sub(began)
			w.passes++
			w.slowest = max(w.slowest, w.passTook)
			w.mu.Unlock()
		}
	}()
	return w
}

// allConsumed reports whether the last pass saw a consumer on every queue.
func (w *consumerWatch) allConsumed() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	for i := range w.queues {
		if !w.everSeen[i] || !w.zeroSince[i].IsZero() {
			return false
		}
	}
	return true
}

// reset forgets the stretches seen so far.
func (w *consumerWatch) reset() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.longest, w.longestQ, w.gaps, w.passes, w.slowest = 0, "", 0, 0, 0
}

func (w *consumerWatch) stop() {
	close(w.done)
	<-w.ended
}

// result returns the longest stretch a queue was seen without a consumer, that queue, and how many stretches.
func (w *consumerWatch) result() (time.Duration, string, int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.longest, w.longestQ, w.gaps
}

// passStats returns how many passes ran since the last reset, and the longest.
func (w *consumerWatch) passStats() (int, time.Duration) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.passes, w.slowest
}
