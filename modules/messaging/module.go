package messaging

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/uptrace/bun"
	"go.uber.org/fx"
	"go.uber.org/zap"

	"github.com/acme/msgsvc/platform/config"
	"github.com/acme/msgsvc/platform/events"
	"github.com/acme/msgsvc/platform/httpserver"
	"github.com/acme/msgsvc/platform/periodic"
)

// Module provides the messaging Service (which the consumer runtime uses as its Handler), its routes, and
// subscribes it to the tenant events: partitions are made and dropped here, and the tenant view follows.
var Module = fx.Module("messaging",
	fx.Provide(
		func(reg prometheus.Registerer, c config.Config) *Metrics { return NewMetrics(reg, c.MetricsPerTenant) },
		NewService,
		httpserver.AsRoutes(func(s *Service, c config.Config) *Handlers { return NewHandlers(s, c.HTTPMaxBatchBodyBytes) }),
		httpserver.AsRoutes(NewLookupHandlers),
		func(db *bun.DB, dir events.TenantDirectory, c config.Config, reg prometheus.Registerer, log *zap.Logger) *Partitions {
			return NewPartitions(db, dir, c.ReconcileInterval, c.ReconcileOrphanGrace, reg, log)
		},
		func(db *bun.DB, c config.Config, reg prometheus.Registerer, log *zap.Logger) *Pool {
			return NewPool(db, PoolOptions{Size: c.PartitionPoolSize, Batch: c.PartitionPoolBatch, DropBatch: c.PartitionDropBatch,
				DueAfter: c.ConsumerDrainTimeout + c.ReplicaTTL, VacuumAfter: c.PartitionCatalogueVacuumAfter}, reg, log)
		},
		func(p *Pool) events.PartitionPool { return p },
	),
	fx.Invoke(SubscribePartitions),
	fx.Invoke(Subscribe),
	fx.Invoke(RunRetention),
	fx.Invoke(func(lc fx.Lifecycle, p *Partitions) { lc.Append(fx.Hook{OnStart: p.Start, OnStop: p.Stop}) }),
)

// Consumers is what the messaging module needs of the consumer runtime when a tenant is deleted; the consumer
// runtime provides it.
type Consumers interface {
	// AwaitNoConsumers returns once no replica consumes the tenant's queue (every consumer of it drained and
	// stopped), or when waiting longer would not help (the drain's bound passed, the queue is gone).
	AwaitNoConsumers(ctx context.Context, id uuid.UUID)
	// Owns reports whether this replica owns the tenant (runs its worker pool); it sweeps the tenant's
	// expired messages.
	Owns(id uuid.UUID) bool
}

// Subscribe registers the messaging module on the tenant events, loads the tenant view at start and refreshes it
// from the database every VIEW_REFRESH_INTERVAL.
func Subscribe(lc fx.Lifecycle, bus *events.Bus, s *Service, c config.Config) {
	events.Subscribe(bus, "messaging.view", func(_ context.Context, e events.TenantCreated) error {
		s.view.add(e.Tenant)
		return nil
	})
	events.Subscribe(bus, "messaging.view", func(_ context.Context, e events.TenantRateLimitChanged) error {
		s.view.setLimit(e.TenantID, e.RateLimit)
		return nil
	})
	events.Subscribe(bus, "messaging.view", func(_ context.Context, e events.TenantDeleting) error {
		s.view.remove(e.TenantID)
		s.metrics.forget(e.TenantID)
		return nil
	})
	events.Subscribe(bus, "messaging.view", func(ctx context.Context, e events.TenantDemand) error {
		if events.IsRemote(ctx) {
			s.view.heard(e, time.Now())
		}
		return nil
	})
	var refresh, exchange *periodic.Loop
	lc.Append(fx.Hook{
		OnStart: func(ctx context.Context) error {
			if err := s.LoadView(ctx); err != nil {
				return fmt.Errorf("messaging: load tenants: %w", err)
			}
			refresh = periodic.Start(c.ViewRefreshInterval, s.RefreshView, func(err error) {
				s.log.Warn("tenant view refresh failed; next run will retry", zap.Error(err))
			})
			if c.RateLimitExchangeInterval > 0 {
				exchange = periodic.Start(c.RateLimitExchangeInterval, func(ctx context.Context) error {
					d := s.view.exchange(time.Now())
					s.metrics.ratePeers.Set(float64(s.view.peers()))
					if len(d.Demand) == 0 {
						return nil // the others count a replica that reports nothing as having no demand
					}
					return events.Publish(ctx, bus, d) // the cluster relay sends it to the other replicas
				}, func(err error) {
					s.log.Warn("reporting publish demand to the other replicas failed; next run will retry", zap.Error(err))
				})
			}
			return nil
		},
		OnStop: func(context.Context) error {
			refresh.Stop()
			if exchange != nil {
				exchange.Stop()
			}
			return nil
		},
	})
}

// RunRetention runs the retention sweeper on this replica's tenants every RETENTION_INTERVAL, and sooner for a
// tenant whose retention changed.
func RunRetention(lc fx.Lifecycle, bus *events.Bus, db *bun.DB, dir events.TenantDirectory, consumers Consumers,
	c config.Config, reg prometheus.Registerer, log *zap.Logger) {
	m := NewRetentionMetrics(reg, c.MetricsPerTenant)
	sw := NewSweeper(db, dir, consumers.Owns, SweeperOptions{Default: c.RetentionDefault, DeadLetters: c.DeadLetterRetention,
		Batch: c.RetentionBatch, Share: c.RetentionSweepShare, Interval: c.RetentionInterval}, m, log)
	events.Subscribe(bus, "messaging.retention", func(_ context.Context, e events.TenantRetentionChanged) error {
		if consumers.Owns(e.TenantID) {
			sw.Kick()
		}
		return nil
	})
	events.Subscribe(bus, "messaging.retention", func(context.Context, events.TenantCreated) error {
		sw.Created()
		return nil
	})
	events.Subscribe(bus, "messaging.retention", func(_ context.Context, e events.TenantDeleting) error {
		m.forget(e.TenantID)
		return nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	lc.Append(fx.Hook{
		OnStart: func(context.Context) error {
			go func() { defer close(done); sw.Run(ctx, c.RetentionInterval) }()
			return nil
		},
		OnStop: func(context.Context) error { cancel(); <-done; return nil },
	})
}
