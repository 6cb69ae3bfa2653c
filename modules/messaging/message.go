// Package messaging owns messages: publishing them to a tenant's queue with confirms, storing deliveries in
// the tenant's partition idempotently, reading them back with cursor pagination, and the partitions themselves.
package messaging

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/uptrace/bun"

	"github.com/acme/msgsvc/platform/broker"
	"github.com/acme/msgsvc/platform/pagination"
)

// Message is a stored message.
type Message struct {
	bun.BaseModel `bun:"table:messages" swaggerignore:"true"`

	ID        uuid.UUID       `bun:"id,pk,type:uuid" json:"id" format:"uuid" example:"0193a5b0-9d3e-7f10-8c2b-3d4e5f6a7b8c"`
	TenantID  uuid.UUID       `bun:"tenant_id,pk,type:uuid" json:"tenant_id" format:"uuid" example:"0193a5b0-7c1e-7d2f-9a4b-1c2d3e4f5a6b"`
	Payload   json.RawMessage `bun:"payload,type:jsonb" json:"payload" swaggertype:"object"`
	CreatedAt time.Time       `bun:"created_at" json:"created_at" format:"date-time" example:"2026-11-27T10:00:00.123456Z"`
}

func (m Message) cursor() pagination.Cursor {
	return pagination.Cursor{CreatedAt: m.CreatedAt, ID: m.ID}
}

// HeaderCreatedAt carries a message's creation time in Unix microseconds (int64). Publishers that write to
// RabbitMQ directly may set it; without it the AMQP timestamp property, and then the time of storage, is used.
const HeaderCreatedAt = broker.HeaderCreatedAt

// errPayload explains what a payload must be.
var errPayload = errors.New("payload must be a JSON object or array of valid UTF-8 without \\u0000 or lone surrogate escapes, " +
	"whose numbers fit PostgreSQL's numeric")

// validPayload reports whether raw is a JSON object or array that PostgreSQL's jsonb accepts.
func validPayload(raw []byte) bool {
	return plausiblePayload(raw) && validJSON(raw) && jsonbCompatible(raw)
}

// storablePayload is validPayload for raw that is already known to be valid JSON (a json.RawMessage the
// request decoder produced).
func storablePayload(raw []byte) bool {
	return plausiblePayload(raw) && jsonbCompatible(raw)
}

// plausiblePayload checks what is cheap to check: an object or array, valid UTF-8, without \u0000, which
// jsonb refuses.
func plausiblePayload(raw []byte) bool {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || (raw[0] != '{' && raw[0] != '[') {
		return false
	}
	return utf8.Valid(raw) && !bytes.Contains(raw, []byte(`\u0000`))
}

// decodeDelivery turns a delivery from tenantID's queue into a Message; an error means the delivery can
// never be stored and belongs in the dead-letter queue.
func decodeDelivery(tenantID uuid.UUID, d amqp.Delivery, now time.Time) (Message, error) {
	m := Message{TenantID: tenantID}
	if d.MessageId == "" {
		// Without a message id, redeliveries cannot be recognised; direct publishers should set one.
		m.ID = uuid.Must(uuid.NewV7())
	} else {
		id, err := uuid.Parse(d.MessageId)
		if err != nil {
			return m, fmt.Errorf("message_id %q is not a UUID", d.MessageId)
		}
		m.ID = id
	}
	switch v := d.Headers[HeaderCreatedAt].(type) {
	case int64:
		m.CreatedAt = time.UnixMicro(v).UTC()
	case int32:
		m.CreatedAt = time.UnixMicro(int64(v)).UTC()
	default:
		if !d.Timestamp.IsZero() {
			m.CreatedAt = d.Timestamp.UTC()
		} else {
			m.CreatedAt = now.UTC().Truncate(time.Microsecond)
		}
	}
	return m, checkMessage(&m, d.Body)
}

// decodeEnvelopeItem turns a message of an envelope from tenantID's queue into a Message, as decodeDelivery does
// the delivery broker.UnpackItem makes of it.
func decodeEnvelopeItem(tenantID uuid.UUID, it broker.EnvelopeItem) (Message, error) {
	m := Message{TenantID: tenantID, ID: it.ID, CreatedAt: time.UnixMicro(it.CreatedAt).UTC()}
	return m, checkMessage(&m, it.Payload)
}

// checkMessage sets m's payload from body once it is one PostgreSQL stores, and checks m's creation time.
func checkMessage(m *Message, body []byte) error {
	if !validPayload(body) {
		return errPayload
	}
	m.Payload = bytes.TrimSpace(body)
	if y := m.CreatedAt.Year(); y < 1 || y > 9999 {
		// PostgreSQL would store it (4713 BC to 294276 AD), but the API could never answer it: JSON's time
		// (RFC 3339) has four-digit years, and encoding/json refuses the others.
		return fmt.Errorf("creation time %s (%s, or the timestamp property) is outside the years 1 to 9999",
			m.CreatedAt.Format(time.RFC3339Nano), HeaderCreatedAt)
	}
	return nil
}

// messageID returns the id of a new message: a UUIDv7, or with an idempotency key a UUIDv5 of the tenant and
// the key, so that a retried request names the same message and is stored once.
func messageID(tenantID uuid.UUID, idempotencyKey string) uuid.UUID {
	if idempotencyKey != "" {
		return uuid.NewSHA1(tenantID, []byte(idempotencyKey))
	}
	return uuid.Must(uuid.NewV7())
}
