// Package database opens the service's *bun.DB over pgx, applies the embedded migrations under a
// PostgreSQL advisory lock, and answers the readiness probe.
package database

import (
	"context"
	"fmt"
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

// Open returns a *bun.DB over a pgx pool. It does not connect; Ping or Migrate does.
func Open(o Options) (*bun.DB, error) {
	cfg, err := pgx.ParseConfig(o.URL)
	if err != nil {
		return nil, fmt.Errorf("database: parse DATABASE_URL: %w", err)
	}
	sqldb := stdlib.OpenDB(*cfg)
	sqldb.SetMaxOpenConns(o.MaxOpenConns)
	sqldb.SetMaxIdleConns(o.MaxIdleConns)
	sqldb.SetConnMaxLifetime(o.ConnMaxLifetime)
	return bun.NewDB(sqldb, pgdialect.New(), bun.WithDiscardUnknownColumns()), nil
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
