package database

import (
	"context"
	"testing"
	"testing/fstest"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/acme/msgsvc/test/testdb"
)

// A start whose context ends while a migration runs: the migration runs to its end and is recorded, the next
// one is not begun, and the migration lock is free for the next start, which applies the rest.
func TestAMigrationBegunRunsToItsEndWhenTheStartGivesUp(t *testing.T) {
	ctx := context.Background()
	_, _, dbURL := freshDatabase(t, "migrate")
	db, err := Open(Options{URL: dbURL, MaxOpenConns: 4, MaxIdleConns: 4, ConnMaxLifetime: time.Hour})
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })

	migrations := fstest.MapFS{
		"0001_slow.sql": {Data: []byte("SELECT pg_sleep(1.5); CREATE TABLE slow (x int);")},
		"0002_next.sql": {Data: []byte("CREATE TABLE next (x int);")},
	}
	startCtx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	applied, err := Migrate(startCtx, db, migrations, zap.NewNop())
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Equal(t, []string{"0001_slow"}, applied, "the migration begun ran to its end")
	var slow, next bool
	require.NoError(t, db.QueryRowContext(ctx, "SELECT to_regclass('slow') IS NOT NULL, to_regclass('next') IS NOT NULL").Scan(&slow, &next))
	require.True(t, slow)
	require.False(t, next, "the next migration was begun after the start gave up")
	var held int
	require.NoError(t, db.QueryRowContext(ctx, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = ?",
		uint32(migrationLockKey&0xffffffff)).Scan(&held))
	require.Zero(t, held, "the migration lock is still held")

	lctx, lcancel := context.WithTimeout(ctx, 10*time.Second)
	defer lcancel()
	applied, err = Migrate(lctx, db, migrations, zap.NewNop())
	require.NoError(t, err)
	require.Equal(t, []string{"0002_next"}, applied)
}

// freshDatabase creates an empty database (testdb.Create: prefix and random digits) on TEST_DATABASE_URL (a
// superuser connection), dropped when t ends, and returns a connection of that superuser, the database's name and
// its URL. Without TEST_DATABASE_URL the test is skipped, or failed under TEST_REQUIRE_SERVICES=1.
func freshDatabase(t *testing.T, prefix string) (admin *pgx.Conn, name, dbURL string) {
	t.Helper()
	adminURL := testdb.AdminURL(t)
	ctx := context.Background()
	admin, err := pgx.Connect(ctx, adminURL)
	require.NoError(t, err)
	t.Cleanup(func() { _ = admin.Close(ctx) })
	name, dbURL = testdb.Create(t, adminURL, prefix+"_")
	return admin, name, dbURL
}
