package messaging

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgconn"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/uptrace/bun"
	"go.uber.org/zap"

	"github.com/acme/msgsvc/platform/auth"
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
	coal      coalescers
	stores    *storeBatcher
	metrics   *Metrics
	log       *zap.Logger
}

// NewService returns a Service publishing to exchange.
// defaultRateLimit is each tenant's publish limit in messages per second per replica unless it has its own
// (0: unlimited).
func NewService(db *bun.DB, publisher *broker.Publisher, exchange string, dir events.TenantDirectory, defaultRateLimit float64, m *Metrics, log *zap.Logger) *Service {
	return &Service{db: db, publisher: publisher, exchange: exchange, dir: dir, view: newView(defaultRateLimit),
		coal: coalescers{tenants: map[uuid.UUID]*coalescer{}}, stores: newStoreBatcher(db, 2, m.perInsert), metrics: m, log: log.Named("messaging")}
}

// ErrTenantNotFound answers a message for a tenant that does not exist.
var ErrTenantNotFound = problem.New(problem.KindNotFound, "tenant-not-found", "no tenant with this id")

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
		return ErrTenantNotFound
	}
	if s.view.has(id) {
		return nil
	}
	t, ok, err := s.dir.Tenant(ctx, id)
	if err != nil {
		return problem.Dependency(err)
	}
	if !ok {
		return ErrTenantNotFound
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
	if err := checkPayload("payload", req.Payload); err != nil {
		return Accepted{}, err
	}
	if err := checkIdempotencyKey(idempotencyKey); err != nil {
		return Accepted{}, err
	}
	a := Accepted{ID: messageID(tenantID, idempotencyKey), TenantID: tenantID, Status: "accepted",
		CreatedAt: time.Now().UTC().Truncate(time.Microsecond)}
	if err := s.publish(ctx, tenantID, a.CreatedAt, []uuid.UUID{a.ID}, []json.RawMessage{req.Payload}); err != nil {
		return Accepted{}, err
	}
	return a, nil
}

// MaxBatch is the most messages one batch publish takes.
const MaxBatch = 1000

// BatchRequest is the body of POST /api/v1/messages/batch.
type BatchRequest struct {
	TenantID *string `json:"tenant_id" example:"0193a5b0-7c1e-7d2f-9a4b-1c2d3e4f5a6b"`
	Messages []struct {
		Payload json.RawMessage `json:"payload" swaggertype:"object"`
	} `json:"messages"`
}

// BatchAccepted is the answer to a batch publish: every message is in RabbitMQ, ids in request order.
type BatchAccepted struct {
	TenantID  uuid.UUID   `json:"tenant_id" example:"0193a5b0-7c1e-7d2f-9a4b-1c2d3e4f5a6b"`
	IDs       []uuid.UUID `json:"ids"`
	Status    string      `json:"status" example:"accepted"`
	CreatedAt time.Time   `json:"created_at" example:"2026-11-27T10:00:00.123456Z"`
}

// PublishBatch validates every message first (one invalid message rejects the whole batch), publishes them
// all with their confirms in flight together and returns once RabbitMQ confirmed every one. With an
// idempotency key, message i's id is derived from the tenant, the key and i.
func (s *Service) PublishBatch(ctx context.Context, req BatchRequest, idempotencyKey string) (BatchAccepted, error) {
	tenantID, err := parseTenantID(req.TenantID)
	if err != nil {
		return BatchAccepted{}, err
	}
	if len(req.Messages) == 0 || len(req.Messages) > MaxBatch {
		return BatchAccepted{}, problem.Invalid("messages", fmt.Sprintf("must hold 1 to %d messages", MaxBatch))
	}
	if err := checkIdempotencyKey(idempotencyKey); err != nil {
		return BatchAccepted{}, err
	}
	payloads := make([]json.RawMessage, len(req.Messages))
	ids := make([]uuid.UUID, len(req.Messages))
	for i, m := range req.Messages {
		if err := checkPayload(fmt.Sprintf("messages[%d].payload", i), m.Payload); err != nil {
			return BatchAccepted{}, err
		}
		payloads[i] = m.Payload
		key := idempotencyKey
		if key != "" {
			key = fmt.Sprintf("%s/%d", key, i)
		}
		ids[i] = messageID(tenantID, key)
	}
	a := BatchAccepted{TenantID: tenantID, IDs: ids, Status: "accepted", CreatedAt: time.Now().UTC().Truncate(time.Microsecond)}
	if err := s.publish(ctx, tenantID, a.CreatedAt, ids, payloads); err != nil {
		return BatchAccepted{}, err
	}
	return a, nil
}

// checkPayload checks a payload decoded from a request (so it is valid JSON).
func checkPayload(field string, p json.RawMessage) error {
	if p == nil {
		return problem.Invalid(field, "is required")
	}
	if !storablePayload(p) {
		return problem.Invalid(field, errPayload.Error())
	}
	return nil
}

func checkIdempotencyKey(key string) error {
	if len(key) > 255 {
		return problem.Invalid("Idempotency-Key", "must be at most 255 characters")
	}
	return nil
}

// publish sends the messages to the tenant's queue and waits for every confirm.
func (s *Service) publish(ctx context.Context, tenantID uuid.UUID, createdAt time.Time, ids []uuid.UUID, payloads []json.RawMessage) error {
	if err := s.checkTenant(ctx, tenantID); err != nil {
		return err
	}
	if err := s.checkRate(tenantID, len(ids)); err != nil {
		return err
	}
	items := make([]broker.EnvelopeItem, len(ids))
	for i := range ids {
		items[i] = broker.EnvelopeItem{ID: ids[i], CreatedAt: createdAt.UnixMicro(), Payload: payloads[i]}
	}
	var err error
	if len(items) == 1 {
		err = s.send(ctx, tenantID, items)
	} else {
		// A batch request goes as envelopes of its own, with their confirms in flight together.
		var msgs []broker.Message
		for len(items) > 0 {
			n := min(len(items), maxEnvelopeItems)
			msgs = append(msgs, s.message(tenantID, items[:n]))
			s.metrics.perPublish.Observe(float64(n))
			items = items[n:]
		}
		err = s.publisher.PublishAll(ctx, msgs)
	}
	switch {
	case errors.Is(err, broker.ErrUnroutable):
		s.metrics.pubFailed.WithLabelValues("unroutable").Add(float64(len(ids)))
		// The queue is gone: the tenant was deleted elsewhere, or its queue is missing until reconciliation.
		s.view.remove(tenantID)
		if cerr := s.checkTenant(ctx, tenantID); cerr != nil {
			return cerr
		}
		return problem.Unavailable("queue-unavailable", "the tenant's queue is unavailable; retry later", err)
	case err != nil:
		s.metrics.pubFailed.WithLabelValues("broker").Add(float64(len(ids)))
		s.log.Warn("publish failed", zap.String("tenant_id", tenantID.String()), zap.Int("messages", len(ids)), zap.Error(err))
		return problem.Unavailable("broker-unavailable", "RabbitMQ did not confirm the message; retry later", err)
	}
	s.metrics.published.WithLabelValues(s.metrics.tenant(tenantID)).Add(float64(len(ids)))
	return nil
}

// Handle stores a batch of deliveries from tenantID's queue in one multi-row insert that skips messages
// already stored. It implements the consumer runtime's Handler: the result holds one error per delivery,
// nil when it is stored (or was already), broker.Permanent when it can never be stored.
func (s *Service) Handle(ctx context.Context, tenantID uuid.UUID, ds []amqp.Delivery) []error {
	errs := make([]error, len(ds))
	now := time.Now()
	items := make([]item, 0, len(ds))
	for i, d := range ds {
		parts := []amqp.Delivery{d}
		if broker.IsEnvelope(d) {
			var err error
			if parts, err = broker.Unpack(d); err != nil {
				errs[i] = broker.Permanent(err)
				continue
			}
		}
		for _, p := range parts {
			m, err := decodeDelivery(tenantID, p, now)
			if err != nil {
				failItem(errs, i, p, broker.Permanent(err), len(parts) > 1 || broker.IsEnvelope(d))
				continue
			}
			items = append(items, item{msg: m, delivery: i, part: p, enveloped: broker.IsEnvelope(d)})
		}
	}
	s.store(ctx, tenantID, items, errs)
	return errs
}

// item is one message of a batch being stored: from delivery number delivery, itself (part) or one message of
// that envelope.
type item struct {
	msg       Message
	delivery  int
	part      amqp.Delivery
	enveloped bool
}

// failItem records that a message of delivery i can never be stored: the delivery's error when it is the
// message, or one more failed message of the envelope; a transient error of the delivery stays (it is retried
// whole).
func failItem(errs []error, i int, part amqp.Delivery, err error, enveloped bool) {
	if !enveloped {
		errs[i] = err
		return
	}
	switch e := errs[i].(type) {
	case nil:
		errs[i] = &broker.ItemsFailed{Items: []broker.FailedItem{{Delivery: part, Err: err}}}
	case *broker.ItemsFailed:
		e.Items = append(e.Items, broker.FailedItem{Delivery: part, Err: err})
	}
}

// store inserts items in one statement and records each delivery's outcome in errs.
func (s *Service) store(ctx context.Context, tenantID uuid.UUID, items []item, errs []error) {
	if len(items) == 0 {
		return
	}
	msgs := make([]Message, len(items))
	for i, it := range items {
		msgs[i] = it.msg
	}
	inserted, err := s.stores.insert(ctx, tenantID, msgs)
	if err != nil && isDataError(err) {
		// PostgreSQL refuses a value of the data itself: no retry can store that message, and in a multi-row
		// insert it would fail every other one. Store one by one, so that only the refused ones are dead-lettered.
		if len(items) == 1 {
			failItem(errs, items[0].delivery, items[0].part, broker.Permanent(fmt.Errorf("store message: %w", err)), items[0].enveloped)
			return
		}
		for _, it := range items {
			s.store(ctx, tenantID, []item{it}, errs)
		}
		return
	}
	if err != nil {
		err = fmt.Errorf("store %d messages: %w", len(msgs), err)
		for _, it := range items {
			errs[it.delivery] = err // transient: the whole delivery is tried again
		}
		return
	}
	label := s.metrics.tenant(tenantID)
	s.metrics.stored.WithLabelValues(label).Add(float64(inserted))
	if dup := int64(len(msgs)) - inserted; dup > 0 {
		s.metrics.duplicates.WithLabelValues(label).Add(float64(dup))
	}
	done := time.Now()
	for _, m := range msgs {
		s.metrics.latency.Observe(done.Sub(m.CreatedAt).Seconds())
	}
}

// isDataError reports whether err is PostgreSQL refusing a value (SQLSTATE class 22, data exception: a number
// out of range, invalid JSON or text, a time it cannot represent), which no retry mends.
func isDataError(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && strings.HasPrefix(pgErr.Code, "22")
}

// List returns a page of a tenant's messages, newest first.
func (s *Service) List(ctx context.Context, tenantID uuid.UUID, after *pagination.Cursor, limit int) (pagination.Page[Message], error) {
	if err := s.checkTenant(ctx, tenantID); err != nil {
		return pagination.Page[Message]{}, err
	}
	var rows []Message
	q := s.db.NewSelect().Model(&rows).Column("id", "tenant_id", "payload", "created_at").Where("tenant_id = ?", tenantID)
	if err := pagination.Apply(q, after, limit).Scan(ctx); err != nil {
		return pagination.Page[Message]{}, problem.Dependency(err)
	}
	return pagination.NewPage(rows, limit, Message.cursor), nil
}
