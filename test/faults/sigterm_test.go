package faults

import (
	"context"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/acme/msgsvc/modules/consumer"
	"github.com/acme/msgsvc/test/testenv"
)

// TestSIGTERMWithBacklog stops the service with SIGTERM while its consumers work through a backlog: it exits
// with code 0 within SHUTDOWN_TIMEOUT, the batches in flight finish and are acked (what is stored is no longer
// in the queue, what is not stored still is), the queues keep the rest, and a restart drains it.
func TestSIGTERMWithBacklog(t *testing.T) {
	s := testenv.Get(t)
	cfg := s.Config(t)
	cfg.ConsumerDrainTimeout = 10 * time.Second
	cfg.ShutdownTimeout = 20 * time.Second
	// Small batches and one worker per tenant: the backlog lasts, and many deliveries wait in the prefetch.
	cfg.ConsumerBatchSize = 2
	cfg.PrefetchPerWorker = 16
	first := startProc(t, "term-1", cfg)
	tenants := []string{createTenant(t, first.URL, "term-a", 1), createTenant(t, first.URL, "term-b", 1)}

	// Published straight to the queues, one AMQP message each (the service's own publishes would travel as
	// envelopes of many messages), so that the queue's message count is a count of messages.
	const perTenant = 10_000
	acc := map[string]string{}
	for _, tn := range tenants {
		for _, id := range backlog(t, cfg.AMQPURL, cfg.AMQPExchange, tn, perTenant) {
			acc[id] = tn
		}
	}
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, cfg.DatabaseURL)
	require.NoError(t, err)
	defer conn.Close(ctx)
	storedOf := func(tenant string) int {
		return testenv.Count(t, conn, "SELECT count(*) FROM messages WHERE tenant_id = $1", uuid.MustParse(tenant))
	}
	testenv.Eventually(t, 30*time.Second, func() bool { return storedOf(tenants[0]) > 0 && storedOf(tenants[1]) > 0 },
		"consumers did not start storing")

	elapsed, err := first.Signal(syscall.SIGTERM, cfg.ShutdownTimeout+15*time.Second)
	require.NoError(t, err)
	require.Equal(t, 0, first.ExitCode(), "exit code after SIGTERM")
	require.Less(t, elapsed, cfg.ShutdownTimeout, "stopped within SHUTDOWN_TIMEOUT")
	require.Empty(t, first.LogLines("drain timeout"), "in-flight work did not finish within the drain timeout")
	require.NotEmpty(t, first.LogLines("all consumers stopped"))
	require.Empty(t, first.LogLines(`"level":"error"`), "errors logged during the stop")

	// Every message is in exactly one place: stored (and acked), or back in its queue.
	var stored, queued int
	for _, tn := range tenants {
		q := consumer.QueueName(uuid.MustParse(tn))
		testenv.Eventually(t, 10*time.Second, func() bool { _, _, c := testenv.QueueState(t, cfg.AMQPURL, q); return c == 0 },
			"queue %s still has consumers", q)
		_, ready, _ := testenv.QueueState(t, cfg.AMQPURL, q)
		n := storedOf(tn)
		require.Equal(t, perTenant, n+ready, "tenant %s: %d stored + %d in the queue", tn, n, ready)
		require.Positive(t, ready, "tenant %s: the queue keeps the backlog", tn)
		stored, queued = stored+n, queued+ready
	}

	second := startProc(t, "term-2", cfg)
	o := settle(t, cfg.DatabaseURL, cfg.AMQPURL, tenants, acc, 120*time.Second)
	require.Zero(t, o.deadLettered)
	dups := metric(t, second.URL, "msgsvc_messages_duplicates_total")
	require.Zero(t, dups, "the restarted process saw deliveries that were already stored: acked too late")
	t.Logf("SIGTERM with a backlog: exit code 0 after %s (SHUTDOWN_TIMEOUT %s); at stop %d stored and acked, %d kept in the queues",
		elapsed.Round(time.Millisecond), cfg.ShutdownTimeout, stored, queued)
	t.Logf("after the restart: %s; redeliveries absorbed %.0f", o, dups)
}
