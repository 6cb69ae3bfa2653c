package faults

import (
	"context"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"
	"go.uber.org/fx"

	"github.com/acme/msgsvc/modules/consumer"
	"github.com/acme/msgsvc/test/testenv"
)

// countingHandler counts the store calls of the real handler and those that failed.
type countingHandler struct {
	inner  consumer.Handler
	calls  atomic.Int64
	failed atomic.Int64
}

func (h *countingHandler) Handle(ctx context.Context, tenant uuid.UUID, ds []amqp.Delivery) []error {
	errs := h.inner.Handle(ctx, tenant, ds)
	h.calls.Add(1)
	for _, err := range errs {
		if err != nil {
			h.failed.Add(1)
			break
		}
	}
	return errs
}

// maxAttempts is how many store attempts one worker makes at most while the database is down for outage:
// the retry backoff starts at initial and doubles up to 5 s.
func maxAttempts(initial, outage time.Duration) int {
	n, elapsed, backoff := 1, time.Duration(0), initial
	for elapsed < outage {
		elapsed += backoff
		backoff = min(backoff*2, 5*time.Second)
		n++
	}
	return n
}

// TestPostgresStoppedDuringConsumption stops PostgreSQL for 10 s while clients publish into three tenants.
// Publishing goes on (it needs no database); consumers retry with backoff (a bounded number of attempts,
// no hot loop), nothing is dead-lettered for an outage shorter than the retry budget, and every message
// answered 202 is stored exactly once after the database is back.
func TestPostgresStoppedDuringConsumption(t *testing.T) {
	s := testenv.Get(t)
	cfg := s.Config(t)
	h := &countingHandler{}
	a := testenv.Start(t, cfg, fx.Decorate(func(inner consumer.Handler) consumer.Handler { h.inner = inner; return h }))
	tenants := []string{a.CreateTenant("pg-a", 2), a.CreateTenant("pg-b", 2), a.CreateTenant("pg-c", 2)}
	const workers = 6

	pgUp := true
	t.Cleanup(func() {
		if !pgUp {
			s.RunScript(t, "pg-start")
		}
	})
	st := startStream(t, a.URL, tenants, 4, 20*time.Millisecond)
	time.Sleep(3 * time.Second)

	retryLog := "store failed; retrying with backoff"
	failedBefore, logsBefore := h.failed.Load(), a.Logs.FilterMessage(retryLog).Len()
	retriedBefore := metric(t, a.URL, "msgsvc_messages_retried_total")
	stopping := time.Now()
	s.RunScript(t, "pg-stop")
	pgUp = false
	stopped := time.Now()
	testenv.Eventually(t, 10*time.Second, func() bool { return testenv.Status(a.URL+"/readyz") == http.StatusServiceUnavailable },
		"/readyz did not turn 503 with the database stopped")
	time.Sleep(time.Until(stopped.Add(10 * time.Second)))
	starting := time.Now()
	s.RunScript(t, "pg-start")
	pgUp = true
	started := time.Now()
	testenv.Eventually(t, 30*time.Second, func() bool { return testenv.Status(a.URL+"/readyz") == http.StatusOK },
		"/readyz did not return to 200 after the database restarted")
	time.Sleep(3 * time.Second)
	st.halt()

	answers := st.snapshot()
	acc := accepted(t, answers)
	require.Len(t, acc, len(answers), "publishing needs no database: every publish is accepted (%s)", statuses(answers))
	o := settle(t, cfg.DatabaseURL, cfg.AMQPURL, tenants, acc, 90*time.Second)

	outage := started.Sub(stopping)
	failed := h.failed.Load() - failedBefore
	logLines := a.Logs.FilterMessage(retryLog).Len() - logsBefore
	retried := metric(t, a.URL, "msgsvc_messages_retried_total") - retriedBefore
	// Each worker retries its one batch: a bounded number of attempts, whatever the backlog.
	bound := workers * (maxAttempts(cfg.StoreRetryInitial, outage+5*time.Second) + 2)
	require.Positive(t, failed, "no store attempt failed: the outage was not seen")
	require.LessOrEqual(t, failed, int64(bound), "store attempts failed during a %s outage: a hot loop?", outage)
	require.Positive(t, logLines)
	require.LessOrEqual(t, logLines, workers*3, "retry log lines")
	require.Zero(t, o.deadLettered, "dead-lettered for an outage shorter than STORE_RETRY_BUDGET (%s)", cfg.StoreRetryBudget)
	require.Zero(t, metric(t, a.URL, "msgsvc_messages_dead_lettered_total"))
	require.Zero(t, metric(t, a.URL, "msgsvc_messages_requeued_total", `reason="retry_budget"`), "retry budget spent")

	t.Logf("PostgreSQL stopped %s (pg-stop %s, down %s, pg-start %s): %s; answers %s",
		outage.Round(time.Millisecond), stopped.Sub(stopping).Round(time.Millisecond),
		starting.Sub(stopped).Round(time.Millisecond), started.Sub(starting).Round(time.Millisecond), o, statuses(answers))
	t.Logf("store calls %d, failed during the outage %d (bound %d for %d workers), %q log lines %d, msgsvc_messages_retried_total +%.0f",
		h.calls.Load(), failed, bound, workers, retryLog, logLines, retried)
}
