package e2e

import (
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/acme/msgsvc/test/testenv"
)

// TestReplicasConvergeAfterLostEvents changes a tenant's rate limit and deletes another tenant in the database
// without any event reaching the replicas (as when the events were relayed during a broker restart and lost).
// Every replica re-reads the tenants within VIEW_REFRESH_INTERVAL: both enforce the new limit, and both refuse
// the deleted tenant.
func TestReplicasConvergeAfterLostEvents(t *testing.T) {
	s := testenv.Get(t)
	cfg := s.Config(t)
	cfg.ViewRefreshInterval = 500 * time.Millisecond
	a := testenv.Start(t, cfg)
	cfgB := testenv.AnotherReplica(cfg, "b")
	b := testenv.Start(t, cfgB)
	limited := a.CreateTenant("converge-limited", 1)
	deleted := a.CreateTenant("converge-deleted", 1)
	for _, app := range []*testenv.App{a, b} {
		for range 30 {
			app.Publish(limited, map[string]int{"n": 1})
		}
		app.Publish(deleted, map[string]int{"n": 1})
	}

	db := a.DB()
	testenv.Count(t, db, "WITH u AS (UPDATE tenants SET rate_limit = 1 WHERE id = $1 RETURNING 1) SELECT count(*) FROM u", limited)
	testenv.Count(t, db, "WITH d AS (DELETE FROM tenants WHERE id = $1 RETURNING 1) SELECT count(*) FROM d", deleted)
	time.Sleep(2 * time.Second) // four refresh intervals

	for name, app := range map[string]*testenv.App{"A": a, "B": b} {
		limitedAnswers := map[int]int{}
		for range 30 {
			r := app.Do(http.MethodPost, "/api/v1/messages", map[string]any{"tenant_id": limited, "payload": map[string]int{"n": 1}})
			limitedAnswers[r.Status]++
		}
		require.GreaterOrEqual(t, limitedAnswers[http.StatusTooManyRequests], 25,
			"replica %s does not enforce the rate limit set without an event: %v", name, limitedAnswers)
		r := app.Do(http.MethodPost, "/api/v1/messages", map[string]any{"tenant_id": deleted, "payload": map[string]int{"n": 1}})
		require.Equal(t, http.StatusNotFound, r.Status, "replica %s still takes messages for a tenant deleted without an event: %s", name, r.Body)
	}
}
