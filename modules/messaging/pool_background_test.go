package messaging

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"
	"github.com/uptrace/bun"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/acme/msgsvc/platform/database"
	"github.com/acme/msgsvc/platform/periodic"
)

// Once the pool attached or dropped VacuumAfter partitions and is quiet (a refill that found nothing to do, no
// claim or drop of this replica within periodic.BurstQuiet), it vacuums and analyzes the catalogue tables, so that
// autovacuum finds nothing left to do in the next burst of creations; not before, and not while creations go on.
func TestThePoolVacuumsTheCatalogueAfterItsChurn(t *testing.T) {
	db, _ := storeDB(t)
	ctx := context.Background()
	p := NewPool(db, PoolOptions{Size: 12, Batch: 4, VacuumAfter: 10}, prometheus.NewRegistry(), zap.NewNop())
	vacuumed := func(table string) bool {
		at, analyzed := lastVacuum(t, db, table)
		return at != nil && analyzed != nil
	}

	n, err := p.Refill(ctx)
	require.NoError(t, err)
	require.Equal(t, 4, n)
	require.NoError(t, p.vacuumIfDue(ctx))
	require.Zero(t, counted(t, p.vacuums), "4 partitions attached: below VacuumAfter")
	for range 2 {
		_, err := p.Refill(ctx)
		require.NoError(t, err)
	}
	p.claiming.Mark()
	require.NoError(t, p.vacuumIfDue(ctx))
	require.Zero(t, counted(t, p.vacuums), "a claim within periodic.BurstQuiet: creations go on")
	p.claiming.MarkAt(time.Now().Add(-periodic.BurstQuiet))
	require.NoError(t, p.vacuumIfDue(ctx))
	require.Equal(t, 1.0, counted(t, p.vacuums), "12 partitions attached, quiet: vacuumed")
	require.Eventually(t, func() bool { return vacuumed("pg_attribute") && vacuumed("pg_class") && vacuumed("pg_depend") },
		5*time.Second, 100*time.Millisecond, "the catalogue tables' last vacuum and analyze")
	require.NoError(t, p.vacuumIfDue(ctx))
	require.Equal(t, 1.0, counted(t, p.vacuums), "nothing attached or dropped since")

	// Drops count as well.
	var ids []string
	require.NoError(t, db.NewSelect().Table("partition_pool").Column("tenant_id").Scan(ctx, &ids))
	_, err = db.ExecContext(ctx, "INSERT INTO partition_drops (tenant_id, due_at) SELECT tenant_id, now() FROM partition_pool")
	require.NoError(t, err)
	_, err = db.ExecContext(ctx, "DELETE FROM partition_pool")
	require.NoError(t, err)
	p.opt.DropBatch = 100
	dropped, err := p.DropDue(ctx)
	require.NoError(t, err)
	require.Equal(t, 12, dropped)
	require.NoError(t, p.vacuumIfDue(ctx))
	require.Equal(t, 1.0, counted(t, p.vacuums), "a drop within periodic.BurstQuiet")
	p.dropping.MarkAt(time.Now().Add(-periodic.BurstQuiet))
	require.NoError(t, p.vacuumIfDue(ctx))
	require.Equal(t, 2.0, counted(t, p.vacuums), "12 partitions dropped, quiet: vacuumed")
}

// The catalogue vacuum waits on no lock: a catalogue table another session vacuums (here: holds as a vacuum
// would) is skipped and left to autovacuum, the others are vacuumed.
func TestTheCatalogueVacuumWaitsOnNoLock(t *testing.T) {
	db, url := storeDB(t)
	ctx := context.Background()
	holder, err := database.Open(database.Options{URL: url, MaxOpenConns: 1, MaxIdleConns: 1})
	require.NoError(t, err)
	t.Cleanup(func() { _ = holder.Close() })
	tx, err := holder.BeginTx(ctx, nil)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback() }()
	_, err = tx.ExecContext(ctx, "LOCK TABLE pg_catalog.pg_attribute IN SHARE UPDATE EXCLUSIVE MODE")
	require.NoError(t, err)

	p := NewPool(db, PoolOptions{Size: 1, VacuumAfter: 1}, prometheus.NewRegistry(), zap.NewNop())
	p.churn.Store(1)
	vctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	require.NoError(t, p.vacuumIfDue(vctx), "the vacuum waited on the held table")
	require.Equal(t, 1.0, counted(t, p.vacuums))
	require.Eventually(t, func() bool { at, _ := lastVacuum(t, db, "pg_class"); return at != nil }, 5*time.Second, 100*time.Millisecond)
	at, _ := lastVacuum(t, db, "pg_attribute")
	require.Nil(t, at, "the held table skipped")
}

// A role that is neither a superuser nor the database's owner may not vacuum the catalogue (VACUUM would only
// warn): the pool leaves it to autovacuum, without an error, and does not ask again.
func TestThePoolLeavesTheCatalogueToAutovacuumWithoutThePrivilege(t *testing.T) {
	_, url := storeDB(t)
	ctx := context.Background()
	db, err := database.Open(database.Options{URL: url, MaxOpenConns: 1, MaxIdleConns: 1})
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })
	role := fmt.Sprintf("t_pool_plain_%d", rand.Uint32())
	_, err = db.ExecContext(ctx, "CREATE ROLE "+role+" NOLOGIN NOSUPERUSER")
	require.NoError(t, err)
	t.Cleanup(func() {
		_, _ = db.ExecContext(context.Background(), "RESET ROLE")
		_, err := db.ExecContext(context.Background(), "DROP ROLE IF EXISTS "+role)
		require.NoError(t, err)
	})
	_, err = db.ExecContext(ctx, "SET ROLE "+role) // the only connection of db
	require.NoError(t, err)

	p := NewPool(db, PoolOptions{Size: 1, VacuumAfter: 1}, prometheus.NewRegistry(), zap.NewNop())
	p.churn.Store(1000)
	require.NoError(t, p.vacuumIfDue(ctx))
	require.True(t, p.vacuumDenied)
	require.Zero(t, counted(t, p.vacuums))
	require.NoError(t, p.vacuumIfDue(ctx))
}

// lastVacuum is when catalogue table was last vacuumed and analyzed by hand (nil: never).
func lastVacuum(t *testing.T, db *bun.DB, table string) (vacuumed, analyzed *time.Time) {
	t.Helper()
	require.NoError(t, db.QueryRowContext(context.Background(),
		"SELECT last_vacuum, last_analyze FROM pg_stat_sys_tables WHERE relname = ?", table).Scan(&vacuumed, &analyzed))
	return vacuumed, analyzed
}

// counted is c's value.
func counted(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	require.NoError(t, c.Write(&m))
	return m.GetCounter().GetValue()
}

// A background loop's lock waits that run out (a drop while inserts and reads are busy on messages) are said at
// info, and warned about only once they went on for lockedOutWarn; any other failure is a warning each time.
func TestLockWaitsRunningOutAreNotWarnedAboutEachTime(t *testing.T) {
	core, logs := observer.New(zap.InfoLevel)
	log := zap.New(core)
	timedOut := fmt.Errorf("drop 20 partitions: %w", &pgconn.PgError{Code: lockNotAvailable})
	var l lockedOut
	at := time.Now()
	l.log(log, "dropping", timedOut, at)
	l.log(log, "dropping", timedOut, at.Add(time.Second))
	l.log(log, "dropping", timedOut, at.Add(30*time.Second))
	require.Equal(t, 1, logs.Len())
	require.Equal(t, zap.InfoLevel, logs.All()[0].Level)
	l.log(log, "dropping", timedOut, at.Add(lockedOutWarn))
	require.Equal(t, 2, logs.Len())
	require.Equal(t, zap.WarnLevel, logs.All()[1].Level, "a minute of lock waits running out")
	l.log(log, "dropping", timedOut, at.Add(lockedOutWarn+time.Second))
	require.Equal(t, 2, logs.Len())
	l.log(log, "dropping", errors.New("connection refused"), at.Add(lockedOutWarn+2*time.Second))
	l.log(log, "dropping", errors.New("connection refused"), at.Add(lockedOutWarn+3*time.Second))
	require.Equal(t, 4, logs.Len())
	require.Equal(t, zap.WarnLevel, logs.All()[3].Level)
	l.log(log, "dropping", timedOut, at.Add(lockedOutWarn+4*time.Second))
	require.Equal(t, zap.InfoLevel, logs.All()[4].Level, "a new series after another failure")
}
