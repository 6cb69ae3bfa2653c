package tenant

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/uptrace/bun"
	"go.uber.org/fx"
	"go.uber.org/zap"

	"github.com/acme/msgsvc/platform/auth"
	"github.com/acme/msgsvc/platform/config"
	"github.com/acme/msgsvc/platform/events"
	"github.com/acme/msgsvc/platform/httpserver"
)

// Module provides the tenant service, its HTTP routes and the events.TenantDirectory.
var Module = fx.Module("tenant",
	fx.Provide(
		NewRepository,
		func(r *Repository) events.TenantDirectory { return r },
		func(r *Repository) auth.TenantKeys { return r },
		func(c config.Config) Limits {
			return Limits{DefaultConcurrency: c.TenantDefaultConcurrency, MaxConcurrency: c.TenantMaxConcurrency}
		},
		func(p serviceParams) *Service {
			return NewService(p.DB, p.Repo, p.Bus, p.Limits, p.Keys, p.Pool, p.Log)
		},
		httpserver.AsRoutes(func(p handlerParams) *Handlers { return NewHandlers(p.Service).WithConsumerStates(p.States) }),
	),
	fx.Invoke(func(s *Service, reg prometheus.Registerer) { s.RegisterMetrics(reg) }),
)

// handlerParams are the handlers' dependencies; the consumer runtime provides the consumer states.
type handlerParams struct {
	fx.In
	Service *Service
	States  events.ConsumerStates `optional:"true"`
}

// serviceParams are the service's dependencies; the messaging module provides the partition pool.
type serviceParams struct {
	fx.In
	DB     *bun.DB
	Repo   *Repository
	Bus    *events.Bus
	Limits Limits
	Keys   *auth.Authenticator
	Pool   events.PartitionPool `optional:"true"`
	Log    *zap.Logger
}
