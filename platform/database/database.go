// Package database opens the service's *bun.DB over pgx, applies the embedded migrations under a
// PostgreSQL advisory lock, and answers the readiness probe.
package database

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
	"hash/maphash"
	"io/fs"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect/pgdialect"
	"go.uber.org/zap"
)

// Options configures the connection pool.
type Options struct {
	URL             string
	MaxOpenConns    int
	MaxIdleConns    int
	ConnMaxLifetime time.Duration
}

// Open returns a *bun.DB over a pgx pool. It does not connect; Ping or Migrate does. A query without arguments,
// which is every query of bun's, goes over PostgreSQL's simple protocol the first time its text is seen
// (bareQueries).
func Open(o Options) (*bun.DB, error) {
	cfg, err := pgx.ParseConfig(o.URL)
	if err != nil {
		return nil, fmt.Errorf("database: parse DATABASE_URL: %w", err)
	}
	// bareQueries' first runs answer in text, which pgx reads in PostgreSQL's own styles only (a database set to
	// DateStyle SQL or German would fail every timestamp of bun's): sessions use those, unless the URL says.
	for name, value := range map[string]string{"datestyle": "ISO", "intervalstyle": "postgres"} {
		given := false
		for k := range cfg.RuntimeParams {
			given = given || strings.EqualFold(k, name)
		}
		if !given {
			cfg.RuntimeParams[name] = value
		}
	}
	sqldb := sql.OpenDB(bareQueries{stdlib.GetConnector(*cfg)})
	sqldb.SetMaxOpenConns(o.MaxOpenConns)
	sqldb.SetMaxIdleConns(o.MaxIdleConns)
	sqldb.SetConnMaxLifetime(o.ConnMaxLifetime)
	return bun.NewDB(sqldb, pgdialect.New(), bun.WithDiscardUnknownColumns()), nil
}

// bareQueries is pgx's connector, whose connections run a query that has no arguments over PostgreSQL's simple
// protocol, in one round trip, the first time they see its text, and leave it to pgx's statement cache from the
// second time on (the PostgreSQL JDBC driver's prepareThreshold works so).
//
// bun writes every argument into the statement's text, so each of its queries reaches the driver without
// arguments, and most texts are never seen again (a new id, token or time in each). pgx's default
// (QueryExecModeCacheStatement) prepared every such text in a round trip of its own, kept it among up to 512
// prepared statements of the session, and closed the oldest in one more round trip: a query run once cost
// PostgreSQL 2.5 times the CPU and took 2.7 times as long (measured with 5,000 queries on one session). A text
// that does repeat (the first page of a tenant's messages, polled) still gets a prepared statement and its
// plan, pruned to the tenant's partition while planning, kept. A query with arguments ($1, through the *sql.DB)
// goes to the cache at once, as before.
type bareQueries struct{ driver.Connector }

// Connect implements driver.Connector.
func (c bareQueries) Connect(ctx context.Context) (driver.Conn, error) {
	conn, err := c.Connector.Connect(ctx)
	if err != nil {
		return nil, err
	}
	sc, ok := conn.(*stdlib.Conn)
	if !ok {
		_ = conn.Close()
		return nil, fmt.Errorf("database: a %T is not a pgx connection", conn)
	}
	return &bareQueryConn{Conn: sc, seen: make(map[uint64]struct{})}, nil
}

// bareQueryConn is a pgx connection of database/sql's (every optional interface of *stdlib.Conn's stays). As
// database/sql uses a connection from one goroutine at a time, seen needs no lock.
type bareQueryConn struct {
	*stdlib.Conn
	seen map[uint64]struct{} // hashes of the texts of queries without arguments run on this connection
}

// seenTexts bounds a connection's seen: once full it is cleared, and a text that repeats runs once more over the
// simple protocol before it goes to the cache again.
const seenTexts = 4096

var (
	seenSeed = maphash.MakeSeed()
	// simpleProtocol is the argument list of a query without arguments run once: pgx takes a leading
	// QueryExecMode as an option.
	simpleProtocol = []driver.NamedValue{{Ordinal: 1, Value: pgx.QueryExecModeSimpleProtocol}}
)

// QueryContext implements driver.QueryerContext.
func (c *bareQueryConn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	if len(args) == 0 {
		h := maphash.String(seenSeed, query)
		if _, again := c.seen[h]; !again {
			if len(c.seen) >= seenTexts {
				clear(c.seen)
			}
			c.seen[h] = struct{}{}
			args = simpleProtocol
		}
	}
	return c.Conn.QueryContext(ctx, query, args)
}

// migrationLockKey is the advisory lock id that serialises migrations between replicas.
const migrationLockKey = 0x6d73677376 // "msgsv"

// Migrate applies every migration in migrations that is not recorded in schema_migrations, each in its own
// transaction, while holding a session advisory lock, so that replicas starting together apply each once.
// It returns the versions it applied.
func Migrate(ctx context.Context, db *bun.DB, migrations fs.FS, log *zap.Logger) ([]string, error) {
	conn, err := db.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("database: connect: %w", err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "SELECT pg_advisory_lock(?)", migrationLockKey); err != nil {
		return nil, fmt.Errorf("database: take migration lock: %w", err)
	}
	defer func() {
		_, _ = conn.ExecContext(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock(?)", migrationLockKey)
	}()
	if _, err := conn.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		return nil, fmt.Errorf("database: create schema_migrations: %w", err)
	}
	var done []string
	if err := conn.NewSelect().Table("schema_migrations").Column("version").Scan(ctx, &done); err != nil {
		return nil, fmt.Errorf("database: read schema_migrations: %w", err)
	}
	names, err := fs.Glob(migrations, "*.sql")
	if err != nil {
		return nil, err
	}
	slices.Sort(names)
	var applied []string
	for _, name := range names {
		version := strings.TrimSuffix(name, ".sql")
		if slices.Contains(done, version) {
			continue
		}
		if err := ctx.Err(); err != nil {
			return applied, fmt.Errorf("database: migration %s not begun: %w", name, err)
		}
		body, err := fs.ReadFile(migrations, name)
		if err != nil {
			return applied, err
		}
		// A migration begun runs to its end (or its error), whatever ctx does meanwhile: database/sql rolls back
		// a transaction whose context ended from another goroutine and closes the *sql.Conn of a connection it
		// discards there, which races the deferred unlock on the same Conn (the partition dropper panicked so
		// in CI, messaging.Pool.DropDue). The next migration is not begun once ctx ended.
		err = conn.RunInTx(context.WithoutCancel(ctx), nil, func(ctx context.Context, tx bun.Tx) error {
			if _, err := tx.ExecContext(ctx, string(body)); err != nil {
				return err
			}
			_, err := tx.ExecContext(ctx, "INSERT INTO schema_migrations (version) VALUES (?)", version)
			return err
		})
		if err != nil {
			return applied, fmt.Errorf("database: migration %s: %w", name, err)
		}
		log.Info("migration applied", zap.String("version", version))
		applied = append(applied, version)
	}
	return applied, nil
}

// Pending returns how many migrations in migrations are not applied yet.
func Pending(ctx context.Context, db bun.IDB, migrations fs.FS) (int, error) {
	names, err := fs.Glob(migrations, "*.sql")
	if err != nil {
		return 0, err
	}
	var done []string
	if err := db.NewSelect().Table("schema_migrations").Column("version").Scan(ctx, &done); err != nil {
		return 0, err
	}
	n := 0
	for _, name := range names {
		if !slices.Contains(done, strings.TrimSuffix(name, ".sql")) {
			n++
		}
	}
	return n, nil
}

// Ready reports whether the database answers and every migration is applied.
func Ready(ctx context.Context, db *bun.DB, migrations fs.FS) error {
	if err := db.PingContext(ctx); err != nil {
		return fmt.Errorf("ping: %w", err)
	}
	n, err := Pending(ctx, db, migrations)
	if err != nil {
		return fmt.Errorf("migrations: %w", err)
	}
	if n > 0 {
		return fmt.Errorf("%d migrations pending", n)
	}
	return nil
}
