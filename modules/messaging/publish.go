package messaging

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"go.uber.org/zap"

	"github.com/acme/msgsvc/platform/broker"
	"github.com/acme/msgsvc/platform/problem"
)

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

// appendJSON appends a's JSON encoding to b, byte for byte what encoding/json's Encoder writes (with its
// trailing newline), without reflection. Status is a plain word ("accepted") that needs no escaping.
func (a Accepted) appendJSON(b []byte) []byte {
	b = append(b, `{"id":"`...)
	b = appendUUID(b, a.ID)
	b = append(b, `","tenant_id":"`...)
	b = appendUUID(b, a.TenantID)
	b = append(b, `","status":"`...)
	b = append(b, a.Status...)
	b = append(b, `","created_at":"`...)
	b = a.CreatedAt.AppendFormat(b, time.RFC3339Nano)
	return append(b, "\"}\n"...)
}

// appendUUID appends id in its canonical form (lower-case hex, as uuid.UUID.String).
func appendUUID(b []byte, id uuid.UUID) []byte {
	const digits = "0123456789abcdef"
	for i, x := range id {
		if i == 4 || i == 6 || i == 8 || i == 10 {
			b = append(b, '-')
		}
		b = append(b, digits[x>>4], digits[x&0x0f])
	}
	return b
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

// publish sends the messages to the tenant's queue and waits for every confirm, PUBLISH_CONFIRM_TIMEOUT at most
// in all (less when ctx ends sooner: the HTTP handlers start it with the request).
func (s *Service) publish(ctx context.Context, tenantID uuid.UUID, createdAt time.Time, ids []uuid.UUID, payloads []json.RawMessage) error {
	if d, ok := ctx.Deadline(); !ok || time.Until(d) > s.publishTimeout { // the handlers set it already
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.publishTimeout)
		defer cancel()
	}
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
		err = s.coal.send(ctx, tenantID, items)
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
	case err == nil:
		s.metrics.publishedFor(tenantID).Add(float64(len(ids)))
		return nil
	case errors.Is(err, broker.ErrUnroutable):
		s.metrics.pubFailed.WithLabelValues("unroutable").Add(float64(len(ids)))
		// The queue is gone: the tenant was deleted elsewhere, or its queue is missing until reconciliation.
		s.view.remove(tenantID)
		if cerr := s.checkTenant(ctx, tenantID); cerr != nil {
			return cerr
		}
		return problem.Unavailable("queue-unavailable", "the tenant's queue is unavailable; retry later", err)
	case errors.Is(err, errPendingFull):
		s.metrics.pubFailed.WithLabelValues("pending_limit").Add(float64(len(ids)))
		return &problem.Error{Kind: problem.KindUnavailable, Slug: "publish-queue-full", RetryAfter: time.Second, Err: err,
			Detail: "too many of the tenant's publishes wait for RabbitMQ (PUBLISH_MAX_PENDING); the message was not sent: retry after the time in Retry-After"}
	case errors.Is(err, broker.ErrUnconfirmed):
		s.metrics.pubFailed.WithLabelValues("unconfirmed").Add(float64(len(ids)))
		detail := "RabbitMQ has not confirmed PUBLISH_MAX_UNCONFIRMED earlier messages to the tenant's queue (it may not answer); the message was not sent: retry after the time in Retry-After"
		if !isNotSent(err) {
			detail = "RabbitMQ has not confirmed PUBLISH_MAX_UNCONFIRMED earlier messages to the tenant's queue (it may not answer), and did not confirm this one; it may still be stored: retry with the same Idempotency-Key to store it once"
		}
		return &problem.Error{Kind: problem.KindUnavailable, Slug: "queue-not-confirming", RetryAfter: 5 * time.Second, Detail: detail, Err: err}
	case errors.Is(err, broker.ErrBlocked):
		s.metrics.pubFailed.WithLabelValues("blocked").Add(float64(len(ids)))
		detail := "RabbitMQ blocks publishing (a memory or disk alarm); the message was not sent: retry later"
		if !isNotSent(err) {
			detail = "RabbitMQ blocks publishing (a memory or disk alarm) and did not confirm the message; it may still be stored: retry with the same Idempotency-Key to store it once"
		}
		return &problem.Error{Kind: problem.KindUnavailable, Slug: "broker-blocked", RetryAfter: time.Second, Detail: detail, Err: err}
	case isNotSent(err):
		s.metrics.pubFailed.WithLabelValues("not_sent").Add(float64(len(ids)))
		return problem.Unavailable("broker-unavailable",
			"RabbitMQ did not take the message within PUBLISH_CONFIRM_TIMEOUT; it was not sent: retry later", err)
	default:
		s.metrics.pubFailed.WithLabelValues("broker").Add(float64(len(ids)))
		s.log.Warn("publish failed", zap.String("tenant_id", tenantID.String()), zap.Int("messages", len(ids)), zap.Error(err))
		return problem.Unavailable("broker-unavailable",
			"RabbitMQ did not confirm the message within PUBLISH_CONFIRM_TIMEOUT; it may still be stored: retry with the same Idempotency-Key to store it once", err)
	}
}
