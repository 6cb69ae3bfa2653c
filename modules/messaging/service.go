package messaging

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/uptrace/bun"
	"go.uber.org/fx"
	"go.uber.org/zap"

	"github.com/acme/msgsvc/platform/auth"
	"github.com/acme/msgsvc/platform/broker"
	"github.com/acme/msgsvc/platform/config"
	"github.com/acme/msgsvc/platform/events"
	"github.com/acme/msgsvc/platform/problem"
)

// Service publishes, stores and reads messages.
type Service struct {
	db        *bun.DB
	publisher *broker.Publisher
	exchange  string
	dir       events.TenantDirectory
	view      *view
	coal      *coalescers
	// publishTimeout bounds a publish request from its start to its answer (PUBLISH_CONFIRM_TIMEOUT).
	publishTimeout time.Duration
	stores         *storeBatcher
	// retentionDefault is a tenant's retention unless it has its own (RETENTION_DEFAULT; 0: forever).
	retentionDefault time.Duration
	metrics          *Metrics
	log              *zap.Logger
}

// ServiceParams are the Service's dependencies, as fx fills them; outside fx (in tests) a literal works too.
type ServiceParams struct {
	fx.In

	DB        *bun.DB
	Publisher *broker.Publisher
	Directory events.TenantDirectory
	// Config gives the exchange messages are published to (AMQPExchange), each tenant's publish limit in
	// messages per second for the cluster unless it has its own (RateLimitDefault; 0: unlimited), this replica's
	// name and how often it exchanges demand with the others (ReplicaID, RateLimitExchangeInterval), how long a publish
	// request may wait in all (PublishConfirmTimeout) and how many of a tenant's publishes may wait for RabbitMQ
	// (PublishMaxPending), and the retention of a tenant without its own (RetentionDefault).
	Config  config.Config
	Metrics *Metrics
	Log     *zap.Logger
	// Lifecycle, when given, closes the grouped inserts' pool (see storeBatcher) when the application stops.
	Lifecycle fx.Lifecycle `optional:"true"`
}

// NewService returns a Service publishing to the configured exchange.
func NewService(p ServiceParams) *Service {
	s := &Service{db: p.DB, publisher: p.Publisher, exchange: p.Config.AMQPExchange, dir: p.Directory,
		view: newView(p.Config.RateLimitDefault), publishTimeout: p.Config.PublishConfirmTimeout,
		retentionDefault: p.Config.RetentionDefault, metrics: p.Metrics, log: p.Log.Named("messaging")}
	s.view.self, s.view.period = p.Config.ReplicaID, p.Config.RateLimitExchangeInterval
	if s.publishTimeout <= 0 {
		s.publishTimeout = 5 * time.Second
	}
	s.coal = newCoalescers(p.Config.PublishLinger, p.Config.PublishMaxPending, s.publishTimeout, s.publishEnvelope,
		func(n int) { s.metrics.perPublish.Observe(float64(n)) })
	grouped, err := openGroupedPool(p.Config.DatabaseURL, p.Config.StoreInsertsInFlight, p.Config.DBConnMaxLifetime)
	if err != nil { // DATABASE_URL was parsed when the database was opened: not expected
		s.log.Error("grouped inserts run on the shared pool, without their lock and statement bounds", zap.Error(err))
	} else if p.Lifecycle != nil {
		p.Lifecycle.Append(fx.StopHook(grouped.Close))
	}
	// A store that goes alone takes at most the consumers' retry budget: no attempt outlasts the budget. The
	// tenants that go alone (their stores failed: a locked partition, say) hold at most half the pool.
	s.stores = newStoreBatcher(p.DB, grouped, p.Config.StoreInsertsInFlight, p.Config.StoreRetryBudget,
		p.Config.DBMaxOpenConns/2, p.Metrics.perInsert, p.Metrics.stores)
	s.stores.linger = p.Config.StoreLinger
	return s
}

// LoadView fills the in-memory tenant view from the directory.
func (s *Service) LoadView(ctx context.Context) error {
	ts, err := s.dir.Tenants(ctx)
	if err != nil {
		return err
	}
	s.view.replace(ts)
	return nil
}

// RefreshView makes the in-memory tenant view match the directory again, for the changes whose events never
// arrived (relayed while a replica was disconnected, or lost with a broker restart): tenants deleted or
// created elsewhere, rate limits changed elsewhere. Changes made by events after the read began are kept.
func (s *Service) RefreshView(ctx context.Context) error {
	s.metrics.refreshes.Inc()
	readAt := time.Now()
	ts, err := s.dir.Tenants(ctx)
	if err != nil {
		return err
	}
	s.view.refresh(ts, readAt)
	return nil
}

// checkTenant answers whether the caller may use the tenant and it exists: from the view, and from the
// database on a miss (a tenant created on another replica whose event has not arrived yet). Another tenant's
// key gets the same answer as an unknown tenant.
func (s *Service) checkTenant(ctx context.Context, id uuid.UUID) error {
	if !auth.CanAccessTenant(ctx, id) {
		return events.ErrTenantNotFound
	}
	if s.view.has(id) {
		return nil
	}
	t, ok, err := s.dir.Tenant(ctx, id)
	if err != nil {
		return problem.Dependency(err)
	}
	if !ok {
		return events.ErrTenantNotFound
	}
	s.view.add(t)
	return nil
}

// checkRate takes n messages from the tenant's rate limit, or answers 429 with Retry-After.
func (s *Service) checkRate(id uuid.UUID, n int) error {
	wait, ok := s.view.allow(id, n, time.Now())
	switch {
	case !ok:
		s.metrics.rateLimited.WithLabelValues(s.metrics.tenant(id)).Add(float64(n))
		return &problem.Error{Kind: problem.KindTooMany, Slug: "rate-limited", RetryAfter: time.Second,
			Detail: fmt.Sprintf("a batch of %d messages exceeds the tenant's burst (one second of its rate limit); send smaller batches", n)}
	case wait > 0:
		s.metrics.rateLimited.WithLabelValues(s.metrics.tenant(id)).Add(float64(n))
		return &problem.Error{Kind: problem.KindTooMany, Slug: "rate-limited", RetryAfter: wait,
			Detail: "the tenant's publish rate limit is exceeded; retry after the time in Retry-After"}
	}
	return nil
}
