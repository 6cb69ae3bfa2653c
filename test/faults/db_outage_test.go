package faults

import (
	"context"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/acme/msgsvc/test/testenv"
)

// refuseConnections makes dbURL's database refuse connections and ends its sessions, the way an operator takes
// a database away (ALTER DATABASE … ALLOW_CONNECTIONS false, pg_terminate_backend), through adminURL (a
// connection to another database); the returned func lets connections in again.
func refuseConnections(t *testing.T, adminURL, dbURL string) (restore func()) {
	t.Helper()
	ctx := context.Background()
	u, err := url.Parse(dbURL)
	require.NoError(t, err)
	name := strings.TrimPrefix(u.Path, "/")
	admin, err := pgx.Connect(ctx, adminURL)
	require.NoError(t, err)
	t.Cleanup(func() { _ = admin.Close(ctx) })
	exec := func(sql string, args ...any) {
		t.Helper()
		_, err := admin.Exec(ctx, sql, args...)
		require.NoError(t, err, sql)
	}
	exec("ALTER DATABASE " + pgx.Identifier{name}.Sanitize() + " ALLOW_CONNECTIONS false")
	exec("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", name)
	restored := false
	restore = func() {
		if !restored {
			restored = true
			exec("ALTER DATABASE " + pgx.Identifier{name}.Sanitize() + " ALLOW_CONNECTIONS true")
		}
	}
	t.Cleanup(restore)
	return restore
}

// TestDatabaseOutageIsNeverAPoisonMessage takes the service's database away (connections refused, sessions
// ended) for 12 s, six times the retry budget × delivery limit (1 s × 2), while clients publish into two
// tenants. A failure of the database never counts against a message: the consumers wait for the database
// gate (msgsvc_database_available 0) instead of spending retries, nothing is dead-lettered, and every message
// answered 202 is stored exactly once when the database is back. Before the classification, every failed
// store counted and the waiting messages became dead letters (retries_exhausted).
func TestDatabaseOutageIsNeverAPoisonMessage(t *testing.T) {
	s := testenv.Get(t)
	cfg := s.Config(t)
	cfg.AMQPDeliveryLimit = 2
	cfg.StoreRetryBudget = time.Second
	a := testenv.Start(t, cfg)
	tenants := []string{a.CreateTenant("outage-a", 2), a.CreateTenant("outage-b", 1)}

	st := startStream(t, a.URL, tenants, 3, 20*time.Millisecond)
	time.Sleep(2 * time.Second)
	restore := refuseConnections(t, s.DatabaseURL, cfg.DatabaseURL)
	outageBegan := time.Now()
	testenv.Eventually(t, 10*time.Second, func() bool { return metric(t, a.URL, "msgsvc_database_available") == 0 },
		"the database gate did not close while the database refused connections")
	time.Sleep(time.Until(outageBegan.Add(12 * time.Second)))
	restore()
	restored := time.Now()
	outage := restored.Sub(outageBegan)
	testenv.Eventually(t, 15*time.Second, func() bool { return metric(t, a.URL, "msgsvc_database_available") == 1 },
		"the database gate did not open once the database took connections again")
	reopened := time.Since(restored)
	time.Sleep(2 * time.Second)
	st.halt()

	answers := st.snapshot()
	acc := accepted(t, answers)
	require.Len(t, acc, len(answers), "publishing needs no database: every publish is accepted (%s)", statuses(answers))
	o := settle(t, cfg.DatabaseURL, cfg.AMQPURL, tenants, acc, 60*time.Second)
	require.Zero(t, o.deadLettered, "dead-lettered during a %s database outage: %s", outage.Round(time.Millisecond), o)
	require.Zero(t, metric(t, a.URL, "msgsvc_messages_dead_lettered_total"))
	require.Zero(t, metric(t, a.URL, "msgsvc_messages_requeued_total", `reason="retry_budget"`), "retry budget spent on an outage")
	require.Positive(t, metric(t, a.URL, "msgsvc_database_unavailable_errors_total"))
	t.Logf("database refused connections for %s (retry budget %s × delivery limit %d): %s; answers %s; "+
		"failures classified as unavailable %.0f; gate open again %s after the database (as polled)",
		outage.Round(time.Millisecond), cfg.StoreRetryBudget, cfg.AMQPDeliveryLimit, o, statuses(answers),
		metric(t, a.URL, "msgsvc_database_unavailable_errors_total"), reopened.Round(time.Millisecond))
	for _, e := range a.Logs.FilterMessage("store failed; retrying with backoff").All() {
		t.Logf("store failure: %v", e.ContextMap())
	}
}
