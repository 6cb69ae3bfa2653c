package database

import (
	"context"
	"net"
	"net/url"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"
	"github.com/uptrace/bun"
)

// TestClassifyWhatTheServerSends makes a real PostgreSQL (TEST_DATABASE_URL, a superuser connection; freshDatabase)
// fail the way outages and bad data do, through bun over pgx as the service runs its statements,
// and checks the class of what actually arrives.
func TestClassifyWhatTheServerSends(t *testing.T) {
	ctx := context.Background()
	admin, name, dbURL := freshDatabase(t, "classify")
	adminExec := func(q string, args ...any) {
		t.Helper()
		_, err := admin.Exec(ctx, q, args...)
		require.NoError(t, err, q)
	}
	open := func(t *testing.T, dbURL string) *bun.DB {
		db, err := Open(Options{URL: dbURL, MaxOpenConns: 4, MaxIdleConns: 4, ConnMaxLifetime: time.Hour})
		require.NoError(t, err)
		t.Cleanup(func() { _ = db.Close() })
		return db
	}
	db := open(t, dbURL)
	_, err := db.ExecContext(ctx, "CREATE TABLE m (id int PRIMARY KEY CHECK (id > 0), payload jsonb)")
	require.NoError(t, err)
	insert := func(ctx context.Context, db *bun.DB, id int, payload string) error {
		_, err := db.ExecContext(ctx, "INSERT INTO m VALUES (?, ?::jsonb)", id, payload)
		return err
	}

	t.Run("data refused", func(t *testing.T) {
		var pgErr *pgconn.PgError
		err := insert(ctx, db, 1, "{not json")
		require.ErrorAs(t, err, &pgErr)
		require.Equal(t, "22P02", pgErr.Code)
		expectClass(t, Data, err, "%v", err)
		err = insert(ctx, db, -1, "{}")
		require.ErrorAs(t, err, &pgErr)
		require.Equal(t, "23514", pgErr.Code)
		expectClass(t, Data, err, "%v", err)
	})
	t.Run("statement timeout", func(t *testing.T) {
		conn, err := db.Conn(ctx)
		require.NoError(t, err)
		defer conn.Close()
		_, err = conn.ExecContext(ctx, "SET statement_timeout = '50ms'")
		require.NoError(t, err)
		_, err = conn.ExecContext(ctx, "SELECT pg_sleep(2)")
		expectClass(t, Transient, err, "%v", err)
		_, _ = conn.ExecContext(ctx, "RESET statement_timeout")
	})
	t.Run("lock not available", func(t *testing.T) {
		tx, err := db.BeginTx(ctx, nil)
		require.NoError(t, err)
		defer func() { _ = tx.Rollback() }()
		_, err = tx.ExecContext(ctx, "LOCK TABLE m IN ACCESS EXCLUSIVE MODE")
		require.NoError(t, err)
		conn, err := db.Conn(ctx)
		require.NoError(t, err)
		defer conn.Close()
		_, err = conn.ExecContext(ctx, "SET lock_timeout = '50ms'")
		require.NoError(t, err)
		_, err = conn.ExecContext(ctx, "INSERT INTO m VALUES (2, '{}')")
		expectClass(t, Transient, err, "%v", err)
	})
	t.Run("deadline passed", func(t *testing.T) {
		c, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
		defer cancel()
		_, err := db.ExecContext(c, "SELECT pg_sleep(2)")
		expectClass(t, Unavailable, err, "%v", err)
	})
	t.Run("connection refused", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		down, err := url.Parse(dbURL)
		require.NoError(t, err)
		down.Host = l.Addr().String()
		require.NoError(t, l.Close())
		err = insert(ctx, open(t, down.String()), 3, "{}")
		expectClass(t, Unavailable, err, "%v", err)
	})
	t.Run("read-only", func(t *testing.T) {
		ro := open(t, dbURL)
		adminExec("ALTER DATABASE " + name + " SET default_transaction_read_only = on")
		defer adminExec("ALTER DATABASE " + name + " RESET default_transaction_read_only")
		err := insert(ctx, ro, 4, "{}")
		expectClass(t, Unavailable, err, "%v", err)
		require.Error(t, ProbeDB(ro)(ctx), "the probe takes a read-only database for unavailable")
	})
	t.Run("sessions ended, connections refused", func(t *testing.T) {
		busy := make(chan error, 1)
		go func() { _, err := db.ExecContext(ctx, "SELECT pg_sleep(10)"); busy <- err }()
		require.Eventually(t, func() bool {
			var n int
			_ = admin.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND query LIKE 'SELECT pg_sleep%'", name).Scan(&n)
			return n == 1
		}, 5*time.Second, 10*time.Millisecond)
		adminExec("ALTER DATABASE " + name + " ALLOW_CONNECTIONS false")
		adminExec("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name)
		err := <-busy
		expectClass(t, Unavailable, err, "a statement running when its session ended: %v", err)
		err = insert(ctx, db, 5, "{}")
		expectClass(t, Unavailable, err, "a statement while connections are refused: %v", err)
		require.Error(t, ProbeDB(db)(ctx))
		err = db.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
			_, err := tx.ExecContext(ctx, "INSERT INTO m VALUES (5, '{}')")
			return err
		})
		expectClass(t, Unavailable, err, "a transaction while connections are refused: %v", err)
		adminExec("ALTER DATABASE " + name + " ALLOW_CONNECTIONS true")
		require.NoError(t, ProbeDB(db)(ctx))
		require.NoError(t, insert(ctx, db, 6, "{}"))
	})
}

// expectClass checks err's class and logs what arrived.
func expectClass(t *testing.T, want Class, err error, msgAndArgs ...any) {
	t.Helper()
	t.Logf("%s: %v", Classify(err), err)
	require.Equal(t, want, Classify(err), msgAndArgs...)
}
