package e2e

import (
	"context"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/acme/msgsvc/modules/messaging"
	"github.com/acme/msgsvc/test/testenv"
)

var retried = regexp.MustCompile(`(?m)^msgsvc_messages_retried_total\{tenant="([^"]+)"\} \d+`)

var perInsert = regexp.MustCompile(`(?m)^msgsvc_messages_per_insert_(sum|count) (\d+)$`)

// TestStoresOfTenantsGroupedAndIsolated publishes to many tenants at once while one of them cannot be stored
// (its partition is gone): the stores of the healthy tenants go together in grouped inserts, every message of
// theirs is stored exactly once, and the broken tenant's failures never hold them back. Once the broken
// tenant's partition is back, its messages, kept in RabbitMQ meanwhile, are stored too.
func TestStoresOfTenantsGroupedAndIsolated(t *testing.T) {
	s := testenv.Get(t)
	cfg := s.Config(t)
	cfg.StoreRetryInitial = 20 * time.Millisecond
	cfg.ReconcileInterval = time.Hour // the partition stays broken until the test mends it
	a := testenv.Start(t, cfg)
	db := a.DB()

	const healthy, clients, each = 8, 32, 40
	var tenants []string
	for i := range healthy {
		tenants = append(tenants, a.CreateTenant("grouped-"+strconv.Itoa(i), 3))
	}
	broken := a.CreateTenant("grouped-broken", 1)
	brokenID := uuid.MustParse(broken)
	part := pgx.Identifier{messaging.PartitionName(brokenID)}.Sanitize()
	_, err := db.Exec(context.Background(), "ALTER TABLE messages DETACH PARTITION "+part)
	require.NoError(t, err)
	_, err = db.Exec(context.Background(), "DROP TABLE "+part)
	require.NoError(t, err)

	var brokenIDs []uuid.UUID
	for i := range 20 {
		brokenIDs = append(brokenIDs, uuid.MustParse(a.Publish(broken, map[string]int{"i": i})))
	}

	all := publishFromClients(a, clients, each, func(c, i int) string { return tenants[(c+i)%healthy] })
	awaitStored(t, db, all, 60*time.Second, "every message of the healthy tenants is stored while the broken tenant fails")
	require.Equal(t, len(all), testenv.Count(t, db, "SELECT count(*) FROM messages WHERE tenant_id <> $1", brokenID), "each once")

	metrics := scrape(t, a.URL)
	for _, r := range retried.FindAllStringSubmatch(metrics, -1) {
		require.Equal(t, broken, r[1], "only the broken tenant's stores are retried, never a healthy tenant's grouped with it")
	}
	require.Contains(t, metrics, `msgsvc_messages_retried_total{tenant="`+broken+`"}`, "the broken tenant's stores failed and are retried")

	m := perInsert.FindAllStringSubmatch(metrics, -1)
	require.Len(t, m, 2, "msgsvc_messages_per_insert is exported")
	sum, _ := strconv.Atoi(m[0][2])
	count, _ := strconv.Atoi(m[1][2])
	t.Logf("%d messages in %d inserts", sum, count)

	_, err = db.Exec(context.Background(), "CREATE TABLE "+part+" PARTITION OF messages FOR VALUES IN ('"+broken+"')")
	require.NoError(t, err)
	awaitStored(t, db, brokenIDs, 60*time.Second, "the broken tenant's messages are stored once its partition is back")
}
