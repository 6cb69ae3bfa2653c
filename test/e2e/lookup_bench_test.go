package e2e

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/acme/msgsvc/test/testenv"
)

// fillMessages stores n messages for tenant straight in the database, one per millisecond back from now
// (so 60,000 of them fall in the last minute when n is large), and returns up to 1,000 of their ids.
func fillMessages(b *testing.B, db *pgx.Conn, tenant string, n int) []string {
	b.Helper()
	ctx := context.Background()
	_, err := db.Exec(ctx, `INSERT INTO messages (id, tenant_id, payload, created_at)
SELECT gen_random_uuid(), $1, jsonb_build_object('i', i, 'data', repeat('x', 400)), now() - i * interval '1 millisecond'
FROM generate_series(1, $2::int) AS i`, tenant, n)
	require.NoError(b, err)
	_, err = db.Exec(ctx, "ANALYZE messages")
	require.NoError(b, err)
	rows, err := db.Query(ctx, `SELECT id::text FROM messages WHERE tenant_id = $1 ORDER BY random() LIMIT 1000`, tenant)
	require.NoError(b, err)
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(b, err)
	return ids
}

// BenchmarkGetMessage looks messages up by id (GET /api/v1/messages/{id}) in a partition of 1,000 and of
// 1,000,000 rows: the cost is the same, one primary-key probe.
//
//	go test ./test/e2e/ -run '^$' -bench BenchmarkGetMessage -benchtime 3000x
func BenchmarkGetMessage(b *testing.B) {
	s := testenv.Get(b)
	a := testenv.Start(b, s.Config(b))
	db := a.DB()
	for _, n := range []int{1_000, 1_000_000} {
		tenant := a.CreateTenant(fmt.Sprintf("rows-%d", n), 1)
		ids := fillMessages(b, db, tenant, n)
		b.Run(fmt.Sprintf("rows=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				r := a.Do(http.MethodGet, "/api/v1/messages/"+ids[i%len(ids)]+"?tenant_id="+tenant, nil)
				if r.Status != http.StatusOK {
					b.Fatalf("%d %s", r.Status, r.Body)
				}
				i++
			}
		})
	}
}

// BenchmarkTenantStats polls GET /api/v1/tenants/{id}/stats for 1,000 tenants of 100 stored messages each
// (8 clients at once), as a dashboard polling every tenant would, and once for a tenant of 1,000,000 messages
// of which 60,000 are from the last minute (1,000 messages per second: the rate is extrapolated from the newest
// 5,000, so the cost stays that of 5,000 index entries).
//
//	go test ./test/e2e/ -run '^$' -bench BenchmarkTenantStats -benchtime 3x -timeout 30m
func BenchmarkTenantStats(b *testing.B) {
	s := testenv.Get(b)
	cfg := s.Config(b)
	cfg.ReconcileInterval = time.Hour // the tests' 2 s would inspect every queue every 2 s as well
	a := testenv.Start(b, cfg)
	db := a.DB()
	const tenants = 1000
	ids := make([]string, tenants)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for i := range ids {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			ids[i] = a.CreateTenant(fmt.Sprintf("stats-%d", i), 1)
		}()
	}
	wg.Wait()
	_, err := db.Exec(context.Background(), `INSERT INTO messages (id, tenant_id, payload, created_at)
SELECT gen_random_uuid(), t.id, '{"i":1}', now() - i * interval '1 second' FROM tenants t, generate_series(1, 100) AS i`)
	require.NoError(b, err)
	_, err = db.Exec(context.Background(), "ANALYZE messages")
	require.NoError(b, err)

	b.Run("tenants=1000", func(b *testing.B) {
		for b.Loop() {
			start := time.Now()
			work := make(chan string)
			for range 8 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for id := range work {
						if r := a.Do(http.MethodGet, "/api/v1/tenants/"+id+"/stats", nil); r.Status != http.StatusOK {
							b.Errorf("%d %s", r.Status, r.Body)
						}
					}
				}()
			}
			for _, id := range ids {
				work <- id
			}
			close(work)
			wg.Wait()
			b.ReportMetric(float64(time.Since(start).Milliseconds()), "ms/1000-tenants")
		}
	})
	big := a.CreateTenant("big", 1)
	fillMessages(b, db, big, 1_000_000)
	b.Run("rows=1000000", func(b *testing.B) {
		for b.Loop() {
			if r := a.Do(http.MethodGet, "/api/v1/tenants/"+big+"/stats", nil); r.Status != http.StatusOK {
				b.Fatalf("%d %s", r.Status, r.Body)
			}
		}
	})

}
