package e2e

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"github.com/uptrace/bun"
	"go.uber.org/fx"
	"go.uber.org/zap"

	"github.com/acme/msgsvc/modules/messaging"
	"github.com/acme/msgsvc/platform/database"
	"github.com/acme/msgsvc/platform/events"
	"github.com/acme/msgsvc/test/testenv"
)

// poolIDs returns the tenant ids in the partition pool.
// awaitPool waits until the partition pool holds n partitions; what says what is awaited.
func awaitPool(t *testing.T, db *pgx.Conn, n int, what string) {
	t.Helper()
	testenv.Eventually(t, 20*time.Second, func() bool {
		return testenv.Count(t, db, "SELECT count(*) FROM partition_pool") == n
	}, what)
}

func poolIDs(t *testing.T, db *pgx.Conn) map[string]bool {
	t.Helper()
	rows, err := db.Query(context.Background(), "SELECT tenant_id::text FROM partition_pool")
	require.NoError(t, err)
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	out := map[string]bool{}
	for _, id := range ids {
		out[id] = true
	}
	return out
}

// strayPartitions counts the tables named like a tenant partition whose id is neither a tenant's nor pooled.
const strayPartitions = `SELECT count(*) FROM pg_class WHERE relkind = 'r' AND relname LIKE 'messages\_tenant\_%'
	AND relname NOT IN (SELECT 'messages_tenant_' || replace(tenant_id::text, '-', '') FROM partition_pool)
	AND relname NOT IN (SELECT 'messages_tenant_' || replace(id::text, '-', '') FROM tenants)`

// tenantsWithoutPartition counts the tenants whose partition is not attached to messages.
const tenantsWithoutPartition = `SELECT count(*) FROM tenants WHERE NOT EXISTS (SELECT 1 FROM pg_inherits
	WHERE inhparent = 'messages'::regclass AND inhrelid = to_regclass('messages_tenant_' || replace(tenants.id::text, '-', '')))`

// holdAttachLock opens a session that holds SHARE UPDATE EXCLUSIVE on messages, the lock ATTACH PARTITION and
// DETACH PARTITION CONCURRENTLY need, until the returned release is called.
func holdAttachLock(t *testing.T, url string) (release func()) {
	t.Helper()
	ctx := context.Background()
	lock := testenv.Connect(t, url)
	tx, err := lock.Begin(ctx)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, "LOCK TABLE messages IN SHARE UPDATE EXCLUSIVE MODE")
	require.NoError(t, err)
	var once sync.Once
	release = func() { once.Do(func() { require.NoError(t, tx.Rollback(ctx)) }) }
	t.Cleanup(release)
	return release
}

// createWithin creates a tenant, failing t when the answer takes longer than wait (the creation would be
// waiting on a lock).
func createWithin(t *testing.T, a *testenv.App, name string, wait time.Duration) string {
	t.Helper()
	got := make(chan testenv.Response, 1)
	go func() {
		got <- a.Do(http.MethodPost, "/api/v1/tenants", map[string]any{"name": name, "concurrency_config": 1})
	}()
	select {
	case r := <-got:
		require.Equal(t, http.StatusCreated, r.Status, string(r.Body))
		return r.Map(t)["id"].(string)
	case <-time.After(wait):
		t.Fatalf("creating %s took longer than %s: it waits on the lock on messages (DDL on the request path)", name, wait)
		return ""
	}
}

// A creation claims a partition attached ahead of time and runs no DDL: it succeeds while another session holds
// the lock that ATTACH PARTITION needs. The pool is refilled afterwards.
func TestCreateClaimsPooledPartitionWithoutDDL(t *testing.T) {
	s := testenv.Get(t)
	cfg := s.Config(t)
	cfg.PartitionPoolSize, cfg.PartitionPoolBatch = 4, 2
	a := testenv.Start(t, cfg)
	db := a.DB()
	awaitPool(t, db, 4, "pool filled")
	pooled := poolIDs(t, db)

	release := holdAttachLock(t, cfg.DatabaseURL)
	var ids []string
	for i := range 3 {
		ids = append(ids, createWithin(t, a, fmt.Sprintf("pooled-%d", i), 10*time.Second))
	}
	for _, id := range ids {
		require.True(t, pooled[id], "tenant %s got a pooled id", id)
		a.Publish(id, map[string]any{"n": 1})
	}
	release()
	for _, id := range ids {
		testenv.Eventually(t, 10*time.Second, func() bool {
			return testenv.Count(t, db, "SELECT count(*) FROM messages WHERE tenant_id = $1", uuid.MustParse(id)) == 1
		}, "message of %s stored in its pooled partition", id)
	}
	require.Equal(t, 0, testenv.Count(t, db, tenantsWithoutPartition))
	awaitPool(t, db, 4, "pool refilled")
	m := scrape(t, a.URL)
	require.Equal(t, 3.0, metricValue(t, m, `msgsvc_partition_pool_claims_total{source="pool"}`))
}

// With the pool empty (a refill cannot run) a creation still works: it attaches its partition itself.
func TestEmptyPoolFallsBackToInlineCreation(t *testing.T) {
	s := testenv.Get(t)
	cfg := s.Config(t)
	cfg.PartitionPoolSize, cfg.PartitionPoolBatch = 2, 2
	a := testenv.Start(t, cfg)
	db := a.DB()
	awaitPool(t, db, 2, "pool filled")
	// Another session holds the refill's advisory lock: this replica leaves the refill to it, and the pool
	// stays empty once claimed.
	ctx := context.Background()
	holder := testenv.Connect(t, cfg.DatabaseURL)
	tx, err := holder.Begin(ctx)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", int64(0x6d7367706c))
	require.NoError(t, err)
	pooled := poolIDs(t, db)
	a.CreateTenant("first", 1)
	a.CreateTenant("second", 1)
	require.Equal(t, 0, testenv.Count(t, db, "SELECT count(*) FROM partition_pool"))
	id := a.CreateTenant("inline", 1)
	require.False(t, pooled[id], "the third tenant's id was not pooled")
	require.Equal(t, 0, testenv.Count(t, db, tenantsWithoutPartition))
	a.Publish(id, map[string]any{"n": 1})
	testenv.Eventually(t, 10*time.Second, func() bool {
		return testenv.Count(t, db, "SELECT count(*) FROM messages WHERE tenant_id = $1", uuid.MustParse(id)) == 1
	}, "message stored in the inline partition")
	m := scrape(t, a.URL)
	require.Equal(t, 2.0, metricValue(t, m, `msgsvc_partition_pool_claims_total{source="pool"}`))
	require.Equal(t, 1.0, metricValue(t, m, `msgsvc_partition_pool_claims_total{source="inline"}`))
	require.NoError(t, tx.Rollback(ctx))
	awaitPool(t, db, 2, "pool refilled once the lock is free")
}

// Two replicas claim and refill at once: every tenant gets a partition of its own, no id is both pooled and a
// tenant's, and no partition is left over.
func TestTwoReplicasRefillingNeverShareAPartition(t *testing.T) {
	s := testenv.Get(t)
	cfg := s.Config(t)
	cfg.PartitionPoolSize, cfg.PartitionPoolBatch = 6, 3
	a := testenv.Start(t, cfg)
	cfgB := testenv.AnotherReplica(cfg, "b")
	b := testenv.Start(t, cfgB)
	db := a.DB()

	const each = 20
	ids := make([]string, 2*each)
	var wg sync.WaitGroup
	for i := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			app := a
			if i%2 == 1 {
				app = b
			}
			r := app.Do(http.MethodPost, "/api/v1/tenants", map[string]any{"name": fmt.Sprintf("race-%d", i), "concurrency_config": 1})
			if r.Status == http.StatusCreated {
				ids[i] = r.Map(t)["id"].(string)
			} else {
				t.Errorf("create %d: %d %s", i, r.Status, r.Body)
			}
		}()
	}
	wg.Wait()
	seen := map[string]bool{}
	for _, id := range ids {
		require.False(t, seen[id], "id %s given to two tenants", id)
		seen[id] = true
	}
	require.Equal(t, 2*each, testenv.Count(t, db, "SELECT count(*) FROM tenants"))
	require.Equal(t, 0, testenv.Count(t, db, tenantsWithoutPartition))
	require.Equal(t, 0, testenv.Count(t, db, "SELECT count(*) FROM partition_pool JOIN tenants ON tenants.id = partition_pool.tenant_id"))
	// Refills of both replicas together (each wants to refill now) and the claims left nothing behind.
	var wg2 sync.WaitGroup
	pools := []*messaging.Pool{
		messaging.NewPool(bunDB(t, cfg.DatabaseURL), messaging.PoolOptions{Size: 30, Batch: 5}, nil, zap.NewNop()),
		messaging.NewPool(bunDB(t, cfg.DatabaseURL), messaging.PoolOptions{Size: 30, Batch: 5}, nil, zap.NewNop()),
	}
	for _, p := range pools {
		wg2.Add(1)
		go func() {
			defer wg2.Done()
			for range 10 {
				_, err := p.Refill(context.Background())
				require.NoError(t, err)
			}
		}()
	}
	wg2.Wait()
	require.LessOrEqual(t, testenv.Count(t, db, "SELECT count(*) FROM partition_pool"), 30, "refills together never overfill")
	testenv.Eventually(t, 10*time.Second, func() bool { return testenv.Count(t, db, strayPartitions) == 0 }, "no partition left over")
	require.Equal(t, 0, testenv.Count(t, db, `SELECT count(*) FROM partition_pool WHERE NOT EXISTS (SELECT 1 FROM pg_inherits
		WHERE inhparent = 'messages'::regclass AND inhrelid = to_regclass('messages_tenant_' || replace(tenant_id::text, '-', '')))`),
		"every pooled id has its partition attached")
}

// A refill whose session dies mid-way (a replica killed) leaves no partition and no pool row behind.
func TestRefillKilledMidwayLeavesNothing(t *testing.T) {
	s := testenv.Get(t)
	cfg := s.Config(t)
	cfg.PartitionPoolSize = 0 // the application's own pool stays out of the way
	a := testenv.Start(t, cfg)
	db := a.DB()
	ctx := context.Background()
	release := holdAttachLock(t, cfg.DatabaseURL)
	sep := "?"
	if strings.Contains(cfg.DatabaseURL, "?") {
		sep = "&"
	}
	bdb := bunDB(t, cfg.DatabaseURL+sep+"application_name=refill-under-test")
	p := messaging.NewPool(bdb, messaging.PoolOptions{Size: 10, Batch: 10}, nil, zap.NewNop())
	done := make(chan error, 1)
	go func() { _, err := p.Refill(ctx); done <- err }()
	// The refill made its first table and waits to attach it: kill its backend.
	testenv.Eventually(t, 10*time.Second, func() bool {
		return testenv.Count(t, db, `SELECT count(*) FROM pg_stat_activity WHERE application_name = 'refill-under-test'
			AND wait_event_type = 'Lock' AND query LIKE 'ALTER TABLE messages ATTACH%'`) == 1
	}, "refill waiting to attach")
	require.Equal(t, 1, testenv.Count(t, db, `SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
		WHERE application_name = 'refill-under-test') k`))
	require.Error(t, <-done)
	release()
	require.Equal(t, 0, testenv.Count(t, db, "SELECT count(*) FROM partition_pool"))
	require.Equal(t, 0, testenv.Count(t, db, `SELECT count(*) FROM pg_class WHERE relname LIKE 'messages\_tenant\_%'`))
}

// A deleted tenant answers 404 at once, and its partition is dropped in the background: a drop that cannot run
// (its detach waits on a lock) does not hold the deletion, and a restart finishes what was pending.
func TestDeletedPartitionsDroppedInBackgroundAndAfterRestart(t *testing.T) {
	s := testenv.Get(t)
	cfg := s.Config(t)
	cfg.PartitionPoolSize = 0
	a := testenv.Start(t, cfg)
	db := a.DB()
	var ids []string
	for i := range 4 {
		ids = append(ids, a.CreateTenant(fmt.Sprintf("gone-%d", i), 1))
	}
	release := holdAttachLock(t, cfg.DatabaseURL)
	for _, id := range ids {
		done := make(chan int, 1)
		go func() { done <- a.Do(http.MethodDelete, "/api/v1/tenants/"+id, nil).Status }()
		select {
		case st := <-done:
			require.Equal(t, http.StatusNoContent, st)
		case <-time.After(15 * time.Second):
			t.Fatalf("deleting %s waits on the partition's detach", id)
		}
		require.Equal(t, http.StatusNotFound, a.Do(http.MethodGet, "/api/v1/tenants/"+id, nil).Status)
	}
	require.Equal(t, 4, testenv.Count(t, db, "SELECT count(*) FROM partition_drops"))
	require.Equal(t, 4, testenv.Count(t, db, `SELECT count(*) FROM pg_class WHERE relkind = 'r' AND relname LIKE 'messages\_tenant\_%'`))
	require.NoError(t, a.Stop()) // the dropper is waiting on the lock: it stops, the drops stay pending
	release()
	require.Equal(t, 4, testenv.Count(t, db, "SELECT count(*) FROM partition_drops"))

	cfgB := testenv.AnotherReplica(cfg, "restarted")
	testenv.Start(t, cfgB)
	testenv.Eventually(t, 60*time.Second, func() bool {
		return testenv.Count(t, db, "SELECT count(*) FROM partition_drops") == 0
	}, "pending drops finished after the restart")
	require.Equal(t, 0, testenv.Count(t, db, `SELECT count(*) FROM pg_class WHERE relname LIKE 'messages\_tenant\_%'`))
	require.Equal(t, 0, testenv.Count(t, db, `SELECT count(*) FROM pg_inherits WHERE inhdetachpending`))
}

// bunDB opens a bun database on url, closed when t ends.
func bunDB(t *testing.T, url string) *bun.DB {
	t.Helper()
	db, err := database.Open(database.Options{URL: url, MaxOpenConns: 4, MaxIdleConns: 4, ConnMaxLifetime: time.Hour})
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })
	return db
}

// A claim holds its pooled id for its lease only: once it lapsed (the creation's replica died between claim and
// take), another creation claims the id, and the first creation can neither take it (ErrClaimLost: it leaves the
// id and its queues to the other) nor release the other's claim. Without a lapse, a claimed id is never
// claimed twice.
func TestALapsedClaimGoesToAnotherCreation(t *testing.T) {
	s := testenv.Get(t)
	cfg := s.Config(t)
	cfg.PartitionPoolSize = 0 // the application's own pool stays out of the way
	a := testenv.Start(t, cfg)
	db := a.DB()
	ctx := context.Background()
	bdb := bunDB(t, cfg.DatabaseURL)
	const lease = 2 * time.Second
	p := messaging.NewPool(bdb, messaging.PoolOptions{Size: 1, Batch: 1, ClaimLease: lease}, nil, zap.NewNop())
	made, err := p.Refill(ctx)
	require.NoError(t, err)
	require.Equal(t, 1, made)

	first, ok, err := p.Claim(ctx)
	require.NoError(t, err)
	require.True(t, ok)
	_, ok, err = p.Claim(ctx)
	require.NoError(t, err)
	require.False(t, ok, "the only pooled id was claimed twice within its lease")

	time.Sleep(lease + 500*time.Millisecond)
	second, ok, err := p.Claim(ctx)
	require.NoError(t, err)
	require.True(t, ok, "a lapsed claim's id was not claimed again")
	require.Equal(t, first.ID, second.ID)

	take := func(c events.Claim) error {
		return bdb.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error { return p.Take(ctx, tx, c) })
	}
	require.ErrorIs(t, take(first), events.ErrClaimLost)
	require.NoError(t, p.Release(ctx, first))
	_, ok, err = p.Claim(ctx)
	require.NoError(t, err)
	require.False(t, ok, "the lapsed claimer's release freed the new claimer's id")
	require.NoError(t, take(second))
	require.Equal(t, 0, testenv.Count(t, db, "SELECT count(*) FROM partition_pool"), "the taken id left the pool")
	require.ErrorIs(t, take(second), events.ErrClaimLost, "an id was taken twice")
}

// The partition reconciler drops partitions without a tenant after RECONCILE_ORPHAN_GRACE, but never a pooled one
// (attached ahead of time for a tenant not created yet) nor one waiting for the background dropper.
func TestReconcilerKeepsPooledPartitions(t *testing.T) {
	s := testenv.Get(t)
	cfg := s.Config(t)
	cfg.PartitionPoolSize, cfg.PartitionPoolBatch = 3, 3
	cfg.ReconcileOrphanGrace = time.Nanosecond
	var parts *messaging.Partitions
	a := testenv.Start(t, cfg, fx.Populate(&parts))
	db := a.DB()
	awaitPool(t, db, 3, "pool filled")
	// A real orphan beside them: a partition attached for an id that is neither pooled nor a tenant's.
	orphan := uuid.Must(uuid.NewV7())
	ctx := context.Background()
	require.NoError(t, bunDB(t, cfg.DatabaseURL).RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		return messaging.CreatePartition(ctx, tx, orphan)
	}))
	for range 2 { // the first run notes the orphans, the second drops those past the grace
		require.NoError(t, parts.Reconcile(ctx))
	}
	require.Equal(t, 0, testenv.Count(t, db, "SELECT count(*) FROM pg_class WHERE relname = $1", messaging.PartitionName(orphan)),
		"the real orphan is dropped")
	require.Equal(t, 3, testenv.Count(t, db, `SELECT count(*) FROM partition_pool WHERE EXISTS (SELECT 1 FROM pg_inherits
		WHERE inhparent = 'messages'::regclass AND inhrelid = to_regclass('messages_tenant_' || replace(tenant_id::text, '-', '')))`),
		"every pooled partition is still attached")
}

// staleDirectory answers Tenants with a list read earlier, as a reconciliation pass that read its tenants
// before a deletion does.
type staleDirectory struct {
	events.TenantDirectory
	tenants []events.Tenant
}

func (d staleDirectory) Tenants(context.Context) ([]events.Tenant, error) { return d.tenants, nil }

// A reconciliation pass that read its tenant list before a deletion, and the partitions after the deleted
// tenant's partition was dropped, makes no partition for it again (it did, and the partition stayed an orphan
// until RECONCILE_ORPHAN_GRACE).
func TestAPassWithATenantListFromBeforeADeletionMakesNoPartitionForIt(t *testing.T) {
	s := testenv.Get(t)
	cfg := s.Config(t)
	var dir events.TenantDirectory
	a := testenv.Start(t, cfg, fx.Populate(&dir))
	tenant := uuid.MustParse(a.CreateTenant("deleted-meanwhile", 1))
	ctx := context.Background()
	before, err := dir.Tenants(ctx)
	require.NoError(t, err)
	r := a.Do(http.MethodDelete, "/api/v1/tenants/"+tenant.String(), nil)
	require.Equal(t, http.StatusNoContent, r.Status, string(r.Body))
	db := a.DB()
	partition := "SELECT count(*) FROM pg_class WHERE relname = $1"
	testenv.Eventually(t, 30*time.Second, func() bool { return testenv.Count(t, db, partition, messaging.PartitionName(tenant)) == 0 },
		"the deleted tenant's partition dropped")

	parts := messaging.NewPartitions(bunDB(t, cfg.DatabaseURL), staleDirectory{dir, before}, time.Hour, time.Hour,
		prometheus.NewRegistry(), zap.NewNop())
	require.NoError(t, parts.Reconcile(ctx))
	require.Equal(t, 0, testenv.Count(t, db, partition, messaging.PartitionName(tenant)), "the deleted tenant's partition was made again")
}

// A partition that an older version's DETACH … CONCURRENTLY left pending detach (cancelled between its two
// transactions) is dropped with its tenant like any other, in the same batch as a partition that never began one,
// and other tenants' partitions are left alone. The dropper finishes such a detach first; PostgreSQL 15 would
// drop the partition without that too.
func TestADropFinishesADetachLeftPending(t *testing.T) {
	s := testenv.Get(t)
	cfg := s.Config(t)
	cfg.PartitionPoolSize = 0
	a := testenv.Start(t, cfg)
	db := a.DB()
	ctx := context.Background()
	left := uuid.MustParse(a.CreateTenant("left-pending", 1))
	plain := uuid.MustParse(a.CreateTenant("plain", 1))
	kept := a.CreateTenant("kept", 1)

	// The detach's second transaction waits for every transaction holding a lock on messages: one holds it there,
	// and the detach is cancelled while it waits.
	holder := testenv.Connect(t, cfg.DatabaseURL)
	tx, err := holder.Begin(ctx)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, "SELECT 1 FROM messages LIMIT 1")
	require.NoError(t, err)
	detacher := testenv.Connect(t, cfg.DatabaseURL)
	detached := make(chan error, 1)
	go func() {
		_, err := detacher.Exec(ctx, `ALTER TABLE messages DETACH PARTITION "`+messaging.PartitionName(left)+`" CONCURRENTLY`)
		detached <- err
	}()
	pendingDetach := `SELECT count(*) FROM pg_inherits WHERE inhdetachpending`
	testenv.Eventually(t, 10*time.Second, func() bool { return testenv.Count(t, db, pendingDetach) == 1 },
		"the detach's first transaction marked the partition")
	testenv.Eventually(t, 10*time.Second, func() bool {
		return testenv.Count(t, db, `SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND wait_event_type = 'Lock'`,
			detacher.PgConn().PID()) == 1
	}, "the detach waiting for the holder")
	require.Equal(t, 1, testenv.Count(t, db, `SELECT count(*) FROM (SELECT pg_cancel_backend($1)) c`, detacher.PgConn().PID()))
	require.Error(t, <-detached, "the cancelled detach")
	require.NoError(t, tx.Rollback(ctx))
	require.Equal(t, 1, testenv.Count(t, db, pendingDetach), "the partition is left pending detach")

	for _, id := range []uuid.UUID{left, plain} {
		require.Equal(t, http.StatusNoContent, a.Do(http.MethodDelete, "/api/v1/tenants/"+id.String(), nil).Status)
	}
	testenv.Eventually(t, 30*time.Second, func() bool {
		return testenv.Count(t, db, "SELECT count(*) FROM partition_drops") == 0
	}, "both drops done")
	require.Equal(t, 0, testenv.Count(t, db, `SELECT count(*) FROM pg_class WHERE relname = ANY($1)`,
		[]string{messaging.PartitionName(left), messaging.PartitionName(plain)}), "a deleted tenant's partition is left")
	require.Equal(t, 0, testenv.Count(t, db, pendingDetach))
	require.Equal(t, 1, testenv.Count(t, db, `SELECT count(*) FROM pg_inherits WHERE inhparent = 'messages'::regclass
		AND inhrelid = to_regclass($1)`, messaging.PartitionName(uuid.MustParse(kept))), "the other tenant's partition is attached")
	a.Publish(kept, map[string]any{"n": 1})
	testenv.Eventually(t, 10*time.Second, func() bool {
		return testenv.Count(t, db, "SELECT count(*) FROM messages WHERE tenant_id = $1", kept) == 1
	}, "the other tenant's message stored")
}

// TestADropWhoseCallerStopsWaitingReleasesItsLock: a batch drop whose caller's context ends while the drop waits
// for its lock on messages (a shutdown) ends with its lock timeout, unlocks the dropper's advisory lock on its own
// connection, and the next run drops the partition. Its transaction does not end with the caller's context:
// database/sql ended such a transaction from another goroutine and closed the connection there, racing the
// deferred unlock on it (a nil driver connection: one panic at a shutdown in CI).
func TestADropWhoseCallerStopsWaitingReleasesItsLock(t *testing.T) {
	s := testenv.Get(t)
	cfg := s.Config(t)
	cfg.PartitionPoolSize = 0
	a := testenv.Start(t, cfg)
	require.NoError(t, a.Stop()) // the schema is there; no other dropper runs
	ctx := context.Background()
	db := testenv.Connect(t, cfg.DatabaseURL)
	bdb := bunDB(t, cfg.DatabaseURL)
	id := uuid.Must(uuid.NewV7())
	require.NoError(t, bdb.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		return messaging.CreatePartition(ctx, tx, id)
	}))
	_, err := db.Exec(ctx, "INSERT INTO partition_drops (tenant_id, due_at) VALUES ($1, now())", id)
	require.NoError(t, err)
	pool := messaging.NewPool(bdb, messaging.PoolOptions{DropBatch: 10}, prometheus.NewRegistry(), zap.NewNop())
	holder := testenv.Connect(t, cfg.DatabaseURL)
	for range 10 {
		tx, err := holder.Begin(ctx)
		require.NoError(t, err)
		_, err = tx.Exec(ctx, "SELECT 1 FROM messages LIMIT 1") // the drop's ACCESS EXCLUSIVE waits for it
		require.NoError(t, err)
		dctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
		n, err := pool.DropDue(dctx)
		cancel()
		require.Error(t, err, "the drop got its lock")
		require.Zero(t, n)
		require.NoError(t, tx.Rollback(ctx))
	}
	require.Zero(t, testenv.Count(t, db, `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted
		AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`),
		"a dropper's advisory lock is still held")
	n, err := pool.DropDue(ctx)
	require.NoError(t, err)
	require.Equal(t, 1, n, "the next run drops the partition")
	require.Zero(t, testenv.Count(t, db, "SELECT count(*) FROM pg_class WHERE relname = $1", messaging.PartitionName(id)))
}
