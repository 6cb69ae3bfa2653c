package faults

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/acme/msgsvc/platform/cluster"
	"github.com/acme/msgsvc/test/testenv"
)

// TestOneTenantsSlowResizeHoldsNoOtherTenantsEvents resizes, through replica A, a tenant whose consumer runs on
// replica B while B's worker is stuck storing a message (its partition locked against writes): B applies the
// resize by draining that consumer, which lasts up to CONSUMER_DRAIN_TIMEOUT. Meanwhile a tenant created through
// A and owned by B must get its consumer on B, from the creation's event, before the slow resize is done. When B
// applied the other replicas' events one after the other, the new tenant waited for the drain (or B's next
// reconciliation, RECONCILE_INTERVAL: 30 s by default).
func TestOneTenantsSlowResizeHoldsNoOtherTenantsEvents(t *testing.T) {
	s := testenv.Get(t)
	cfg := s.Config(t)
	cfg.ReconcileInterval = time.Minute // the events, not a reconciliation, start the new tenant's consumer
	cfg.ConsumerDrainTimeout = 8 * time.Second
	cfg.ReplicaTTL = 30 * time.Second // at least the drain timeout and three heartbeats
	a := testenv.Start(t, cfg)
	cfgB := testenv.AnotherReplica(cfg, "b")
	b := testenv.Start(t, cfgB)
	live := []string{cfg.ReplicaID, cfgB.ReplicaID}
	testenv.Eventually(t, 30*time.Second, func() bool {
		return metric(t, a.URL, "msgsvc_replicas_live") == 2 && metric(t, b.URL, "msgsvc_replicas_live") == 2
	}, "the replicas do not see each other")
	ownedByB := func(name string) string {
		for {
			id := a.CreateTenant(name, 1)
			if cluster.Owner(live, uuid.MustParse(id)) == cfgB.ReplicaID {
				return id
			}
		}
	}
	workersOnB := func(tenant string) float64 {
		return metric(t, b.URL, "msgsvc_consumer_workers", `tenant="`+tenant+`"`)
	}

	slow := ownedByB("slow")
	testenv.Eventually(t, 30*time.Second, func() bool { return workersOnB(slow) == 1 }, "B does not consume the slow tenant")
	unlock := lockPartition(t, cfg.DatabaseURL, slow)
	stuck := a.Publish(slow, map[string]any{"stuck": true})
	testenv.Eventually(t, 30*time.Second, func() bool {
		return metric(t, b.URL, "msgsvc_consumer_inflight", `tenant="`+slow+`"`) == 1
	}, "B's worker does not hold the slow tenant's message")

	r := a.Do(http.MethodPut, "/api/v1/tenants/"+slow+"/config/concurrency", map[string]any{"workers": 2})
	require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
	resized := time.Now()
	other := ownedByB("other")
	var slowWorkers float64
	testenv.Eventually(t, 30*time.Second, func() bool {
		slowWorkers = workersOnB(slow)
		return workersOnB(other) == 1
	}, "B did not start the new tenant's consumer")
	t.Logf("B consumed the new tenant %s after the slow tenant's resize event (the slow tenant's workers then: %v)",
		time.Since(resized).Round(time.Millisecond), slowWorkers)
	require.NotEqual(t, 2.0, slowWorkers,
		"the new tenant's consumer started only once the slow tenant's resize was done: B applied the events one after the other")

	unlock()
	testenv.Eventually(t, 30*time.Second, func() bool { return workersOnB(slow) == 2 }, "B did not resize the slow tenant")
	a.Publish(other, map[string]any{"other": true})
	db := testenv.Connect(t, cfg.DatabaseURL)
	ctx := context.Background()
	testenv.Eventually(t, 30*time.Second, func() bool {
		var n int
		require.NoError(t, db.QueryRow(ctx, "SELECT count(*) FROM messages WHERE id = $1", stuck).Scan(&n))
		var m int
		require.NoError(t, db.QueryRow(ctx, "SELECT count(*) FROM messages WHERE tenant_id = $1", other).Scan(&m))
		return n == 1 && m == 1
	}, "the slow tenant's message or the new tenant's was not stored once")
}
