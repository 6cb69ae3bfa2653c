package messaging

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/uptrace/bun"
	"go.uber.org/zap"

	"github.com/acme/msgsvc/platform/broker"
	"github.com/acme/msgsvc/platform/events"
	"github.com/acme/msgsvc/platform/pagination"
	"github.com/acme/msgsvc/platform/problem"
)

// Service publishes, stores and reads messages.
type Service struct {
	db        *bun.DB
	publisher *broker.Publisher
	exchange  string
	dir       events.TenantDirectory
	view      *view
	metrics   *Metrics
	log       *zap.Logger
}

// NewService returns a Service publishing to exchange.
func NewService(db *bun.DB, publisher *broker.Publisher, exchange string, dir events.TenantDirectory, m *Metrics, log *zap.Logger) *Service {
	return &Service{db: db, publisher: publisher, exchange: exchange, dir: dir, view: newView(), metrics: m, log: log.Named("messaging")}
}

// ErrTenantNotFound answers a message for a tenant that does not exist.
var ErrTenantNotFound = problem.New(problem.KindNotFound, "tenant-not-found", "no tenant with this id")

func unavailable(err error) error {
	return problem.Unavailable("dependency-unavailable", "a dependency of the service is unavailable; retry later", err)
}

// LoadView fills the in-memory tenant view from the directory.
func (s *Service) LoadView(ctx context.Context) error {
	ts, err := s.dir.Tenants(ctx)
	if err != nil {
		return err
	}
	ids := make([]uuid.UUID, len(ts))
	for i, t := range ts {
		ids[i] = t.ID
	}
	s.view.replace(ids)
	return nil
}

// checkTenant answers from the view, and from the database on a miss (a tenant created on another replica
// whose event has not arrived yet).
func (s *Service) checkTenant(ctx context.Context, id uuid.UUID) error {
	if s.view.has(id) {
		return nil
	}
	_, ok, err := s.dir.Tenant(ctx, id)
	if err != nil {
		return unavailable(err)
	}
	if !ok {
		return ErrTenantNotFound
	}
	s.view.add(id)
	return nil
}

// PublishRequest is the body of POST /api/v1/messages.
type PublishRequest struct {
	TenantID *string `json:"tenant_id" validate:"required" format:"uuid" example:"0193a5b0-7c1e-7d2f-9a4b-1c2d3e4f5a6b"`
	// Payload is any JSON object or array; it is stored as jsonb.
	Payload json.RawMessage `json:"payload" validate:"required" swaggertype:"object"`
}

// Accepted is the answer to a publish: the message is in RabbitMQ and will be stored.
type Accepted struct {
	ID        uuid.UUID `json:"id" format:"uuid" example:"0193a5b0-9d3e-7f10-8c2b-3d4e5f6a7b8c"`
	TenantID  uuid.UUID `json:"tenant_id" format:"uuid" example:"0193a5b0-7c1e-7d2f-9a4b-1c2d3e4f5a6b"`
	Status    string    `json:"status" example:"accepted"`
	CreatedAt time.Time `json:"created_at" format:"date-time" example:"2026-11-27T10:00:00.123456Z"`
}

func parseTenantID(s *string) (uuid.UUID, error) {
	if s == nil {
		return uuid.Nil, problem.Invalid("tenant_id", "is required")
	}
	id, err := uuid.Parse(*s)
	if err != nil || len(*s) != 36 {
		return uuid.Nil, problem.Invalid("tenant_id", "must be a UUID such as 0193a5b0-7c1e-7d2f-9a4b-1c2d3e4f5a6b")
	}
	return id, nil
}

// Publish validates req, publishes the message persistently to the tenant's queue and returns once RabbitMQ
// confirmed it.
func (s *Service) Publish(ctx context.Context, req PublishRequest, idempotencyKey string) (Accepted, error) {
	tenantID, err := parseTenantID(req.TenantID)
	if err != nil {
		return Accepted{}, err
	}
	if req.Payload == nil {
		return Accepted{}, problem.Invalid("payload", "is required")
	}
	if !validPayload(req.Payload) {
		return Accepted{}, problem.Invalid("payload", errPayload.Error())
	}
	if len(idempotencyKey) > 255 {
		return Accepted{}, problem.Invalid("Idempotency-Key", "must be at most 255 characters")
	}
	if err := s.checkTenant(ctx, tenantID); err != nil {
		return Accepted{}, err
	}
	a := Accepted{ID: messageID(tenantID, idempotencyKey), TenantID: tenantID, Status: "accepted",
		CreatedAt: time.Now().UTC().Truncate(time.Microsecond)}
	err = s.publisher.Publish(ctx, broker.Message{
		Exchange: s.exchange, RoutingKey: tenantID.String(), MessageID: a.ID.String(), Mandatory: true,
		Headers: map[string]any{HeaderCreatedAt: a.CreatedAt.UnixMicro()}, Body: req.Payload,
	})
	switch {
	case errors.Is(err, broker.ErrUnroutable):
		s.metrics.pubFailed.WithLabelValues("unroutable").Inc()
		// The queue is gone: the tenant was deleted elsewhere, or its queue is missing until reconciliation.
		s.view.remove(tenantID)
		if cerr := s.checkTenant(ctx, tenantID); cerr != nil {
			return Accepted{}, cerr
		}
		return Accepted{}, problem.Unavailable("queue-unavailable", "the tenant's queue is unavailable; retry later", err)
	case err != nil:
		s.metrics.pubFailed.WithLabelValues("broker").Inc()
		s.log.Warn("publish failed", zap.String("tenant_id", tenantID.String()), zap.Error(err))
		return Accepted{}, problem.Unavailable("broker-unavailable", "RabbitMQ did not confirm the message; retry later", err)
	}
	s.metrics.published.WithLabelValues(s.metrics.tenant(tenantID)).Inc()
	return a, nil
}

// Handle stores a batch of deliveries from tenantID's queue in one multi-row insert that skips messages
// already stored. It implements the consumer runtime's Handler: the result holds one error per delivery,
// nil when it is stored (or was already), broker.Permanent when it can never be stored.
func (s *Service) Handle(ctx context.Context, tenantID uuid.UUID, ds []amqp.Delivery) []error {
	errs := make([]error, len(ds))
	now := time.Now()
	msgs := make([]Message, 0, len(ds))
	idx := make([]int, 0, len(ds))
	for i, d := range ds {
		m, err := decodeDelivery(tenantID, d, now)
		if err != nil {
			errs[i] = broker.Permanent(err)
			continue
		}
		msgs = append(msgs, m)
		idx = append(idx, i)
	}
	if len(msgs) == 0 {
		return errs
	}
	res, err := s.db.NewInsert().Model(&msgs).On("CONFLICT (tenant_id, id) DO NOTHING").Exec(ctx)
	if err != nil {
		err = fmt.Errorf("store %d messages: %w", len(msgs), err)
		for _, i := range idx {
			errs[i] = err
		}
		return errs
	}
	inserted, _ := res.RowsAffected()
	label := s.metrics.tenant(tenantID)
	s.metrics.stored.WithLabelValues(label).Add(float64(inserted))
	if dup := int64(len(msgs)) - inserted; dup > 0 {
		s.metrics.duplicates.WithLabelValues(label).Add(float64(dup))
	}
	done := time.Now()
	for _, m := range msgs {
		s.metrics.latency.Observe(done.Sub(m.CreatedAt).Seconds())
	}
	return errs
}

// List returns a page of a tenant's messages, newest first.
func (s *Service) List(ctx context.Context, tenantID uuid.UUID, after *pagination.Cursor, limit int) (pagination.Page[Message], error) {
	if err := s.checkTenant(ctx, tenantID); err != nil {
		return pagination.Page[Message]{}, err
	}
	var rows []Message
	q := s.db.NewSelect().Model(&rows).Column("id", "tenant_id", "payload", "created_at").Where("tenant_id = ?", tenantID)
	if err := pagination.Apply(q, after, limit).Scan(ctx); err != nil {
		return pagination.Page[Message]{}, unavailable(err)
	}
	return pagination.NewPage(rows, limit, Message.cursor), nil
}
