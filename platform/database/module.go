package database

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/uptrace/bun"
	"go.uber.org/fx"
	"go.uber.org/zap"

	"github.com/acme/msgsvc/migrations"
	"github.com/acme/msgsvc/platform/config"
	"github.com/acme/msgsvc/platform/health"
)

// Module provides *bun.DB, applies migrations at start and closes the pool at stop, and the *Gate that tells
// the consumers whether the database can be used (with its metrics).
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
		NewGateFor,
		health.AsCheck(func(db *bun.DB) health.Check {
			return health.Check{Name: "database", Check: func(ctx context.Context) error {
				return Ready(ctx, db, migrations.FS)
			}}
		}),
	),
)

// NewGateFor returns the service's database gate, probing db, with its metrics on reg; it stops with the
// lifecycle (before the pool closes).
func NewGateFor(lc fx.Lifecycle, db *bun.DB, reg prometheus.Registerer, log *zap.Logger) *Gate {
	g := NewGate(GateOptions{Probe: ProbeDB(db), Log: log.Named("database")})
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "msgsvc_database_available",
			Help: "1 while the consumers take the database as usable, 0 while its gate is closed and a probe waits for it"},
			func() float64 {
				if g.Available() {
					return 1
				}
				return 0
			}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "msgsvc_database_unavailable_errors_total",
			Help: "store failures classified as the database being unavailable (never counted against a message)"},
			func() float64 { return float64(g.Failures()) }),
	)
	lc.Append(fx.Hook{OnStop: func(context.Context) error { g.Close(); return nil }})
	return g
}
