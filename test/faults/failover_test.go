package faults

import (
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/acme/msgsvc/test/testenv"
)

// TestReplicaKilledHandsItsTenantsOver runs two replicas that share eight tenants (or a few more, until each owns
// one) while clients publish into all of them through the replica that survives, kills the other with SIGKILL,
// and checks that the survivor consumes every tenant within 30 s (the membership TTL plus a reconciliation) and
// that every message answered 202 is stored exactly once.
func TestReplicaKilledHandsItsTenantsOver(t *testing.T) {
	s := testenv.Get(t)
	cfg := s.Config(t)
	// REPLICA_TTL must cover the drain and three heartbeat intervals.
	membership := []string{"REPLICA_HEARTBEAT_INTERVAL=1s", "REPLICA_TTL=5s", "CONSUMER_DRAIN_TIMEOUT=2s"}
	a := startProc(t, "share-a", cfg, membership...)
	b := startProc(t, "share-b", cfg, membership...)
	testenv.Eventually(t, 15*time.Second, func() bool {
		return metric(t, a.URL, "msgsvc_replicas_live") == 2 && metric(t, b.URL, "msgsvc_replicas_live") == 2
	}, "the replicas do not see each other")
	// Eight tenants, and more while one replica owns none of them (all eight land on one replica once in 128).
	var tenants []string
	for len(tenants) < 16 {
		tenants = append(tenants, createTenant(t, a.URL, fmt.Sprintf("share-%d", len(tenants)), 1+len(tenants)%2))
		if len(tenants) < 8 {
			continue
		}
		testenv.Eventually(t, 15*time.Second, func() bool {
			ra, rb := metric(t, a.URL, "msgsvc_consumers_running"), metric(t, b.URL, "msgsvc_consumers_running")
			return ra+rb == float64(len(tenants))
		}, "each of the %d tenants runs on one replica", len(tenants))
		if metric(t, a.URL, "msgsvc_consumers_running") > 0 && metric(t, b.URL, "msgsvc_consumers_running") > 0 {
			break
		}
	}
	require.Positive(t, metric(t, b.URL, "msgsvc_consumers_running"), "B owns none of %d tenants", len(tenants))
	require.Positive(t, metric(t, a.URL, "msgsvc_consumers_running"), "A owns none of %d tenants", len(tenants))
	ownedByB := metric(t, b.URL, "msgsvc_consumers_running")

	st := startStream(t, a.URL, tenants, 4, 10*time.Millisecond)
	testenv.Eventually(t, 15*time.Second, func() bool { return metric(t, b.URL, "msgsvc_messages_stored_total") > 0 },
		"replica B does not store its share")
	time.Sleep(time.Second) // B has deliveries in flight when it dies
	killed := time.Now()
	_, err := b.Signal(syscall.SIGKILL, 10*time.Second)
	require.NoError(t, err)
	testenv.Eventually(t, 30*time.Second, func() bool {
		return metric(t, a.URL, "msgsvc_consumers_running") == float64(len(tenants))
	}, "replica A did not take B's tenants over within 30 s")
	tookOver := time.Since(killed)
	time.Sleep(2 * time.Second)
	st.halt()

	waitConsumers(t, cfg.AMQPURL, tenants, 10*time.Second)
	o := settle(t, cfg.DatabaseURL, cfg.AMQPURL, tenants, accepted(t, st.snapshot()), 60*time.Second)
	require.Zero(t, o.deadLettered)
	t.Logf("SIGKILL of a replica owning %.0f of %d tenants: taken over in %s; %s; redeliveries absorbed: %.0f",
		ownedByB, len(tenants), tookOver.Round(100*time.Millisecond), o, metric(t, a.URL, "msgsvc_messages_duplicates_total"))
}
