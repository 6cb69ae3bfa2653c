package tenant

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/uptrace/bun"
	"go.uber.org/zap"

	"github.com/acme/msgsvc/platform/auth"
	"github.com/acme/msgsvc/platform/events"
	"github.com/acme/msgsvc/platform/metrics"
	"github.com/acme/msgsvc/platform/pagination"
	"github.com/acme/msgsvc/platform/problem"
)

// Service implements the tenant use cases.
type Service struct {
	keys   *auth.Authenticator  // forgets revoked keys; optional
	pool   events.PartitionPool // partitions made ahead of time; optional (nil: every creation makes its own)
	db     *bun.DB
	repo   *Repository
	bus    *events.Bus
	limits Limits
	log    *zap.Logger
}

// NewService returns a Service. pool may be nil: every creation then attaches its partition itself, and every
// deletion leaves its partition to the TenantDeleted subscribers.
func NewService(db *bun.DB, repo *Repository, bus *events.Bus, limits Limits, keys *auth.Authenticator, pool events.PartitionPool, log *zap.Logger) *Service {
	return &Service{keys: keys, pool: pool, db: db, repo: repo, bus: bus, limits: limits, log: log.Named("tenant")}
}

// RegisterMetrics exports the number of tenants, read from the database at scrape time.
func (s *Service) RegisterMetrics(reg prometheus.Registerer) {
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: metrics.Namespace, Name: "tenants", Help: "Tenants that exist.",
	}, func() float64 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		n, err := s.db.NewSelect().Model((*Tenant)(nil)).Count(ctx)
		if err != nil {
			return -1
		}
		return float64(n)
	}))
}

// Create makes a tenant with everything it needs: its queues are declared first, then the row and its
// partition commit together, then its consumer starts. On any failure nothing is left half made.
//
// With the partition pool, the creation first claims a tenant id whose partition is attached already (a
// statement of its own: a lease on the pool's row, so no other creation gets it), declares the queues, and then
// takes the claimed id and inserts the rows in one transaction: no DDL, and no lock on messages. Only a
// creation that finds the pool empty attaches its partition itself in its transaction. Either way no
// transaction is open while the creation waits on the broker, so a broker that does not answer holds no
// database connection (TestCreationsAgainstAStuckBrokerHoldNoDatabaseConnection).
func (s *Service) Create(ctx context.Context, req CreateRequest) (Created, error) {
	name, err := validateName(req.Name)
	if err != nil {
		return Created{}, err
	}
	workers, err := s.limits.validateConcurrency("concurrency_config", req.ConcurrencyConfig, false)
	if err != nil {
		return Created{}, err
	}
	if err := validateRetention("max_age_seconds", req.MaxAgeSeconds); err != nil {
		return Created{}, err
	}
	var key IssuedKey
	now := time.Now().UTC().Truncate(time.Microsecond)
	t := Tenant{Name: name, ConcurrencyConfig: workers, CreatedAt: now, UpdatedAt: now, MaxAgeSeconds: req.MaxAgeSeconds}
	began := time.Now()
	var provisioned time.Time
	pooled := false
	insert := func(ctx context.Context, tx bun.Tx) error {
		if err := s.repo.Insert(ctx, tx, &t); err != nil {
			return fmt.Errorf("insert tenant: %w", err)
		}
		var err error
		if key, err = s.repo.InsertKey(ctx, tx, t.ID); err != nil {
			return err
		}
		return events.Publish(ctx, s.bus, events.TenantCreating{Tenant: t.event(), Tx: tx, PartitionReady: pooled})
	}
	var claim events.Claim
	if s.pool != nil {
		if claim, pooled, err = s.pool.Claim(ctx); err != nil {
			return Created{}, problem.Dependency(err)
		}
	}
	t.ID = claim.ID
	if !pooled {
		t.ID = uuid.Must(uuid.NewV7())
	}
	err = events.Publish(ctx, s.bus, events.TenantProvisioning{Tenant: t.event()})
	provisioned = time.Now()
	if err == nil {
		err = s.db.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
			if pooled {
				if err := s.pool.Take(ctx, tx, claim); err != nil {
					return err
				}
			}
			return insert(ctx, tx)
		})
	}
	if err != nil {
		s.log.Warn("tenant creation failed; rolling back", zap.String("tenant_id", t.ID.String()), zap.Error(err))
		// A lost claim's id, and its queues, are another creation's now: nothing of it is this one's to remove.
		if !errors.Is(err, events.ErrClaimLost) {
			cleanup := context.WithoutCancel(ctx)
			if cerr := events.Publish(cleanup, s.bus, events.TenantCreateFailed{TenantID: t.ID}); cerr != nil {
				s.log.Warn("cleanup after failed creation incomplete; reconciliation will finish it",
					zap.String("tenant_id", t.ID.String()), zap.Error(cerr))
			}
			if pooled {
				if rerr := s.pool.Release(cleanup, claim); rerr != nil {
					s.log.Warn("claimed partition not released; its claim lapses", zap.String("tenant_id", t.ID.String()), zap.Error(rerr))
				}
			}
		}
		return Created{}, problem.Dependency(err)
	}
	committed := time.Now()
	if err := events.Publish(context.WithoutCancel(ctx), s.bus, events.TenantCreated{Tenant: t.event()}); err != nil {
		// The tenant exists with its queues; its owner's reconciliation retries what did not start now, and
		// GET /api/v1/tenants/{id} shows it.
		s.log.Warn("tenant created but its consumer did not start yet; reconciliation retries", zap.String("tenant_id", t.ID.String()), zap.Error(err))
	}
	// The durations tell where a creation's time goes (queues at the broker, the row and partition in
	// PostgreSQL, the consumer's start and the event relay).
	s.log.Info("tenant created", zap.String("tenant_id", t.ID.String()), zap.Int("concurrency", workers),
		zap.String("api_key_id", key.KeyID), zap.Bool("pooled_partition", pooled), zap.Duration("queues", provisioned.Sub(began)),
		zap.Duration("transaction", committed.Sub(provisioned)), zap.Duration("start", time.Since(committed)))
	return Created{Tenant: t, APIKey: key.APIKey, APIKeyID: key.KeyID}, nil
}

// IssueKey issues another API key for the tenant (for rotation); the answer is the only place it appears.
func (s *Service) IssueKey(ctx context.Context, id uuid.UUID) (IssuedKey, error) {
	if _, err := s.Get(ctx, id); err != nil {
		return IssuedKey{}, err
	}
	k, err := s.repo.InsertKey(ctx, s.db, id)
	if err != nil {
		return IssuedKey{}, problem.Dependency(err)
	}
	s.log.Info("api key issued", zap.String("tenant_id", id.String()), zap.String("api_key_id", k.KeyID))
	return k, nil
}

// RevokeKey revokes one of the tenant's keys: at once on this replica, within AUTH_CACHE_TTL on the others.
func (s *Service) RevokeKey(ctx context.Context, id uuid.UUID, keyID string) error {
	if err := s.repo.RevokeKey(ctx, id, keyID); err != nil {
		return problem.Dependency(err)
	}
	if s.keys != nil {
		s.keys.Forget(keyID)
	}
	s.log.Info("api key revoked", zap.String("tenant_id", id.String()), zap.String("api_key_id", keyID))
	return nil
}

// SetRateLimit sets the tenant's publish rate limit (nil: back to the default); every replica follows.
func (s *Service) SetRateLimit(ctx context.Context, id uuid.UUID, req RateLimitRequest) (Tenant, error) {
	if l := req.MessagesPerSecond; l != nil && (*l < 0 || *l > 1e9 || *l != *l) {
		return Tenant{}, problem.Invalid("messages_per_second", "must be between 0 (unlimited) and 1e9, or null for the default")
	}
	t, err := s.repo.SetRateLimit(ctx, id, req.MessagesPerSecond)
	if err != nil {
		return Tenant{}, problem.Dependency(err)
	}
	if err := events.Publish(context.WithoutCancel(ctx), s.bus, events.TenantRateLimitChanged{TenantID: id, RateLimit: t.RateLimit}); err != nil {
		s.log.Error("rate limit not applied everywhere", zap.String("tenant_id", id.String()), zap.Error(err))
	}
	return t, nil
}

// SetRetention sets how long the tenant's messages are kept (nil: back to RETENTION_DEFAULT). Every replica
// reads the retention from the tenant's row in each query that serves messages and at each sweep, so the
// change holds everywhere at once; TenantRetentionChanged tells the other replicas' subscribers too.
func (s *Service) SetRetention(ctx context.Context, id uuid.UUID, req RetentionRequest) (Tenant, error) {
	if err := validateRetention("max_age_seconds", req.MaxAgeSeconds); err != nil {
		return Tenant{}, err
	}
	t, err := s.repo.SetRetention(ctx, id, req.MaxAgeSeconds)
	if err != nil {
		return Tenant{}, problem.Dependency(err)
	}
	if err := events.Publish(context.WithoutCancel(ctx), s.bus, events.TenantRetentionChanged{TenantID: id, MaxAgeSeconds: t.MaxAgeSeconds}); err != nil {
		s.log.Warn("retention change not told to every replica; it holds anyway (read from the database)", zap.String("tenant_id", id.String()), zap.Error(err))
	}
	s.log.Info("tenant retention changed", zap.String("tenant_id", id.String()), zap.Any("max_age_seconds", t.MaxAgeSeconds))
	return t, nil
}

// Get returns one tenant.
func (s *Service) Get(ctx context.Context, id uuid.UUID) (Tenant, error) {
	t, err := s.repo.Get(ctx, id)
	if err != nil {
		return t, problem.Dependency(err)
	}
	return t, nil
}

// List returns a page of tenants, newest first.
func (s *Service) List(ctx context.Context, after *pagination.Cursor, limit int) (pagination.Page[Tenant], error) {
	rows, err := s.repo.List(ctx, after, limit)
	if err != nil {
		return pagination.Page[Tenant]{}, problem.Dependency(err)
	}
	return pagination.NewPage(rows, limit, Tenant.cursor), nil
}

// SetConcurrency changes a tenant's worker count; its live consumers follow.
func (s *Service) SetConcurrency(ctx context.Context, id uuid.UUID, req ConcurrencyRequest) (Tenant, error) {
	workers, err := s.limits.validateConcurrency("workers", req.Workers, true)
	if err != nil {
		return Tenant{}, err
	}
	t, err := s.repo.SetConcurrency(ctx, id, workers)
	if err != nil {
		return Tenant{}, problem.Dependency(err)
	}
	if err := events.Publish(context.WithoutCancel(ctx), s.bus, events.TenantConcurrencyChanged{TenantID: id, Concurrency: workers}); err != nil {
		s.log.Error("resize not applied everywhere; reconciliation will", zap.String("tenant_id", id.String()), zap.Error(err))
	}
	s.log.Info("tenant concurrency changed", zap.String("tenant_id", id.String()), zap.Int("concurrency", workers))
	return t, nil
}

// Delete removes a tenant: its row first (so of concurrent deletes one wins and the others get 404), together
// with the record that its partition is to be dropped, then its consumers drain and stop and its queues are
// deleted. The partition is dropped in the background, in batches, once no replica consumes the tenant.
func (s *Service) Delete(ctx context.Context, id uuid.UUID) error {
	err := s.db.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		if err := s.repo.Delete(ctx, tx, id); err != nil {
			return err
		}
		if s.pool == nil {
			return nil
		}
		return s.pool.ScheduleDrop(ctx, tx, id)
	})
	if err != nil {
		return problem.Dependency(err)
	}
	ctx = context.WithoutCancel(ctx)
	if err := events.Publish(ctx, s.bus, events.TenantDeleting{TenantID: id}); err != nil {
		s.log.Error("tenant deleted but its queues remain; reconciliation will remove them", zap.String("tenant_id", id.String()), zap.Error(err))
	}
	if err := events.Publish(ctx, s.bus, events.TenantDeleted{TenantID: id}); err != nil {
		s.log.Error("tenant deleted but its partition or queues remain; the background dropper and reconciliation will remove them",
			zap.String("tenant_id", id.String()), zap.Error(err))
	}
	s.log.Info("tenant deleted", zap.String("tenant_id", id.String()))
	return nil
}
