package faults

import (
	"context"
	"net/http"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/acme/msgsvc/test/testenv"
)

// TestRetentionSweepKilledMidwayResumes kills the service with SIGKILL while its retention sweep deletes a
// tenant's expired messages in small batches; the restarted process, keeping no state of the sweep, continues
// and deletes the rest, and the messages within the retention stay.
func TestRetentionSweepKilledMidwayResumes(t *testing.T) {
	s := testenv.Get(t)
	cfg := s.Config(t)
	// No periodic sweep in the first process: the retention change below starts the one that is killed.
	first := startProc(t, "retention-1", cfg, "RETENTION_INTERVAL=1h", "RETENTION_BATCH=5")
	tenant := createTenant(t, first.URL, "retention-kill", 1)
	db := testenv.Connect(t, cfg.DatabaseURL)
	ctx := context.Background()
	const expired, kept = 40000, 50
	_, err := db.Exec(ctx, `INSERT INTO messages (id, tenant_id, payload, created_at)
SELECT gen_random_uuid(), $1, jsonb_build_object('i', i), now() - interval '2 hours' + i * interval '1 millisecond'
FROM generate_series(1, $2::int) AS i`, tenant, expired)
	require.NoError(t, err)
	_, err = db.Exec(ctx, `INSERT INTO messages (id, tenant_id, payload, created_at)
SELECT gen_random_uuid(), $1, jsonb_build_object('kept', i), now() FROM generate_series(1, $2::int) AS i`, tenant, kept)
	require.NoError(t, err)
	count := func() int {
		return testenv.Count(t, db, "SELECT count(*) FROM messages WHERE tenant_id = $1", tenant)
	}

	status, raw, err := call(http.DefaultClient, http.MethodPut, first.URL+"/api/v1/tenants/"+tenant+"/config/retention",
		[]byte(`{"max_age_seconds": 3600}`))
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, status, string(raw))
	testenv.Eventually(t, 20*time.Second, func() bool { return count() < expired+kept }, "the sweep did not start")
	_, err = first.Signal(syscall.SIGKILL, 10*time.Second)
	require.NoError(t, err)
	// A delete the killed process had sent may still commit: wait until its sessions are gone.
	testenv.Eventually(t, 10*time.Second, func() bool {
		return testenv.Count(t, db, `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'`) == 0
	}, "the killed process's sessions did not end")
	left := count()
	require.Greater(t, left, kept, "the sweep finished before the kill: nothing to resume")
	t.Logf("killed with %d of %d expired messages left", left-kept, expired)

	second := startProc(t, "retention-2", cfg, "RETENTION_INTERVAL=300ms", "RETENTION_BATCH=500")
	testenv.Eventually(t, 30*time.Second, func() bool { return count() == kept }, "the restarted process did not finish the sweep")
	// A batch of the killed process may still have committed after left was read, so the restarted one
	// deleted at most the rest.
	testenv.Eventually(t, 30*time.Second, func() bool {
		n := metric(t, second.URL, "msgsvc_retention_deleted_total", `table="messages"`)
		return n > 0 && n <= float64(left-kept)
	}, "the restarted process counts what it deleted")
}
