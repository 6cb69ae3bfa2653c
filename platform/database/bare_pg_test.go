package database

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/uptrace/bun/dialect/pgdialect"
)

// TestBunQueriesArePreparedOnlyWhenTheirTextRepeats runs bun's queries on one session, each with new values
// written into its text as bun does: none leaves a prepared statement behind (pgx's default prepared every text
// in a round trip of its own and kept up to 512 of them per session), and they are answered as before. A text
// run again is prepared once, and a query with arguments ($1, through the *sql.DB) goes through pgx's statement
// cache as before: one prepared statement each. Timestamps are read right whatever DateStyle the database has.
func TestBunQueriesArePreparedOnlyWhenTheirTextRepeats(t *testing.T) {
	ctx := context.Background()
	admin, name, dbURL := freshDatabase(t, "bare")
	// A database whose sessions write dates in another style: a query's first run answers in text.
	_, err := admin.Exec(ctx, "ALTER DATABASE "+name+" SET datestyle = 'SQL, DMY'")
	require.NoError(t, err)
	db, err := Open(Options{URL: dbURL, MaxOpenConns: 1, MaxIdleConns: 1, ConnMaxLifetime: time.Hour})
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })
	_, err = db.ExecContext(ctx, "CREATE TABLE t (id int PRIMARY KEY, at timestamptz NOT NULL, body bytea, tags text[])")
	require.NoError(t, err)

	looks := 0
	prepared := func() (n int) { // a new text each time, as it is not one of the statements counted
		looks++
		require.NoError(t, db.QueryRowContext(ctx, "SELECT count(*) FROM pg_prepared_statements WHERE ? > 0", looks).Scan(&n))
		return n
	}
	at := time.Date(2026, 12, 7, 21, 0, 0, 123456000, time.UTC)
	const n = 600 // past pgx's statement cache of 512
	for i := range n {
		var (
			id   int
			got  time.Time
			body []byte
		)
		require.NoError(t, db.QueryRowContext(ctx, "INSERT INTO t VALUES (?, ?, ?, ARRAY[?]) RETURNING id, at, body",
			i, at.Add(time.Duration(i)*time.Second), []byte{byte(i), 0, 'x'}, fmt.Sprint("tag ", i)).Scan(&id, &got, &body))
		require.Equal(t, i, id)
		require.True(t, at.Add(time.Duration(i)*time.Second).Equal(got), "timestamptz %s", got)
		require.Equal(t, []byte{byte(i), 0, 'x'}, body)
	}
	require.Zero(t, prepared(), "bun's queries left prepared statements on the session")

	for range 3 { // the same text each time (a tenant's first page, polled)
		var count int
		require.NoError(t, db.NewSelect().Table("t").ColumnExpr("count(*)").Where("id >= ?", 100).Scan(ctx, &count))
		require.Equal(t, n-100, count)
		var tags []string
		require.NoError(t, db.QueryRowContext(ctx, "SELECT tags FROM t WHERE id = ?", 7).Scan(pgdialect.Array(&tags)))
		require.Equal(t, []string{"tag 7"}, tags)
	}
	require.Equal(t, 2, prepared(), "two texts run three times each: one prepared statement each")

	for i := range 3 {
		var id int
		require.NoError(t, db.DB.QueryRowContext(ctx, "SELECT id FROM t WHERE id = $1", i).Scan(&id))
		require.Equal(t, i, id)
	}
	require.Equal(t, 3, prepared(), "a query with arguments: one prepared statement for its text")
}
