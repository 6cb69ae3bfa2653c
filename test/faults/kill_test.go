package faults

import (
	"net/http"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/acme/msgsvc/test/testenv"
)

// TestServiceKilledMidStream kills the service process with SIGKILL while clients publish into three
// tenants, then starts it again: deliveries it had stored but not acked come back and are absorbed by
// idempotent storage, those it had not stored are stored by the new process, and every message answered 202
// is stored exactly once.
func TestServiceKilledMidStream(t *testing.T) {
	s := testenv.Get(t)
	cfg := s.Config(t)
	first := startProc(t, "kill-1", cfg)
	tenants := []string{createTenant(t, first.URL, "kill-a", 2), createTenant(t, first.URL, "kill-b", 3),
		createTenant(t, first.URL, "kill-c", 1)}

	st := startStream(t, first.URL, tenants, 4, 20*time.Millisecond)
	time.Sleep(3 * time.Second) // a few hundred messages on their way: stored, unacked, queued, in prefetch
	require.Positive(t, metric(t, first.URL, "msgsvc_messages_stored_total"), "the first process stores")
	killed := time.Now()
	_, err := first.Signal(syscall.SIGKILL, 10*time.Second)
	require.NoError(t, err)
	require.Equal(t, -1, first.ExitCode(), "killed by a signal")

	second := startProc(t, "kill-2", cfg)
	st.setURL(second.URL)
	back := time.Now()
	testenv.Eventually(t, 30*time.Second, func() bool { return st.count(http.StatusAccepted, back) > 0 },
		"publishing did not resume on the restarted process")
	time.Sleep(3 * time.Second)
	st.halt()

	answers := st.snapshot()
	for _, an := range answers {
		require.Contains(t, []int{0, http.StatusAccepted}, an.status, "unexpected answer: %s", statuses(answers))
	}
	waitConsumers(t, cfg.AMQPURL, tenants, 30*time.Second)
	o := settle(t, cfg.DatabaseURL, cfg.AMQPURL, tenants, accepted(t, answers), 90*time.Second)
	require.Zero(t, o.deadLettered)
	t.Logf("SIGKILL mid-stream: %s; answers %s (none: no answer while the process was down or killed mid-request)", o, statuses(answers))
	t.Logf("down %s (kill to ready); redeliveries absorbed by the restarted process: %.0f",
		back.Sub(killed).Round(time.Millisecond), metric(t, second.URL, "msgsvc_messages_duplicates_total"))
}
