package database

import (
	"context"

	"github.com/uptrace/bun"
	"go.uber.org/fx"
	"go.uber.org/zap"

	"github.com/acme/msgsvc/migrations"
	"github.com/acme/msgsvc/platform/config"
	"github.com/acme/msgsvc/platform/health"
)

// Module provides *bun.DB, applies migrations at start and closes the pool at stop.
var Module = fx.Module("database",
	fx.Provide(
		func(lc fx.Lifecycle, c config.Config, log *zap.Logger) (*bun.DB, error) {
			db, err := Open(Options{URL: c.DatabaseURL, MaxOpenConns: c.DBMaxOpenConns,
				MaxIdleConns: c.DBMaxIdleConns, ConnMaxLifetime: c.DBConnMaxLifetime})
			if err != nil {
				return nil, err
			}
			lc.Append(fx.Hook{
				OnStart: func(ctx context.Context) error {
					_, err := Migrate(ctx, db, migrations.FS, log.Named("database"))
					return err
				},
				OnStop: func(context.Context) error { return db.Close() },
			})
			return db, nil
		},
		health.AsCheck(func(db *bun.DB) health.Check {
			return health.Check{Name: "database", Check: func(ctx context.Context) error {
				return Ready(ctx, db, migrations.FS)
			}}
		}),
	),
)
