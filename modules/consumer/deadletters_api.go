package consumer

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/acme/msgsvc/platform/broker"
	"github.com/acme/msgsvc/platform/pagination"
)

// DeadLetter is one dead-lettered message of a tenant.
type DeadLetter struct {
	ID       uuid.UUID `json:"id" format:"uuid" example:"0193a5b0-9d3e-7f10-8c2b-3d4e5f6a7b8c"`
	TenantID uuid.UUID `json:"tenant_id" format:"uuid" example:"0193a5b0-7c1e-7d2f-9a4b-1c2d3e4f5a6b"`
	// OriginalID is the message_id the publisher sent when it was not a UUID (id was made from it then).
	OriginalID string `json:"original_id,omitempty" example:"order-42"`
	// Reason: undecodable, retries_exhausted, or what RabbitMQ said when it dead-lettered by itself
	// (delivery_limit, rejected, expired, maxlen).
	Reason    string `json:"reason" example:"undecodable"`
	LastError string `json:"last_error" example:"payload must be a JSON object or array"`
	// Attempts is how often storing it failed.
	Attempts int `json:"attempts" example:"1"`
	// Payload is the body when it is valid JSON; RawPayload the body as text otherwise.
	Payload        json.RawMessage `json:"payload,omitempty" swaggertype:"object"`
	RawPayload     *string         `json:"raw_payload,omitempty" example:"not json"`
	Headers        map[string]any  `json:"headers,omitempty" swaggertype:"object"`
	CreatedAt      *time.Time      `json:"created_at,omitempty" format:"date-time" example:"2026-11-27T10:00:00.123456Z"`
	DeadLetteredAt time.Time       `json:"dead_lettered_at" format:"date-time" example:"2026-11-27T10:00:01.5Z"`

	body []byte
}

func (d DeadLetter) cursor() pagination.Cursor {
	return pagination.Cursor{CreatedAt: d.DeadLetteredAt, ID: d.ID}
}

// amqpHeaders turns stored JSON headers back into AMQP header values (integers stay integers).
func amqpHeaders(raw []byte) amqp.Table {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		return amqp.Table{}
	}
	return amqpValue(m).(amqp.Table)
}

func amqpValue(v any) any {
	switch v := v.(type) {
	case json.Number:
		if n, err := v.Int64(); err == nil {
			return n
		}
		f, _ := v.Float64()
		return f
	case map[string]any:
		t := amqp.Table{}
		for k, e := range v {
			t[k] = amqpValue(e)
		}
		return t
	case []any:
		for i, e := range v {
			v[i] = amqpValue(e)
		}
		return v
	}
	return v
}

const deadColumns = `id, tenant_id, COALESCE(original_id, ''), reason, last_error, attempts, body, headers, created_at, dead_lettered_at`

func scanDead(rows interface{ Scan(...any) error }) (DeadLetter, error) {
	var d DeadLetter
	var headers []byte
	var created sql.NullTime
	if err := rows.Scan(&d.ID, &d.TenantID, &d.OriginalID, &d.Reason, &d.LastError, &d.Attempts, &d.body, &headers, &created, &d.DeadLetteredAt); err != nil {
		return d, err
	}
	d.DeadLetteredAt = d.DeadLetteredAt.UTC()
	if created.Valid {
		t := created.Time.UTC()
		d.CreatedAt = &t
	}
	if json.Valid(d.body) {
		d.Payload = d.body
	} else {
		s := strings.ToValidUTF8(string(d.body), "\uFFFD")
		d.RawPayload = &s
	}
	_ = json.Unmarshal(headers, &d.Headers)
	if len(d.Headers) == 0 {
		d.Headers = nil
	}
	return d, nil
}

// List returns a page of the tenant's dead letters, newest first, only of reason when it is not empty.
// Reading changes nothing.
func (s *DeadLetters) List(ctx context.Context, tenant uuid.UUID, reason string, after *pagination.Cursor, limit int) (pagination.Page[DeadLetter], error) {
	q := `SELECT ` + deadColumns + ` FROM dead_letters WHERE tenant_id = $1 AND ($2 = '' OR reason = $2)`
	args := []any{tenant, reason}
	switch {
	case after == nil:
	case after.ID == uuid.Nil:
		q += ` AND dead_lettered_at < $3`
		args = append(args, after.CreatedAt)
	default:
		q += ` AND (dead_lettered_at, id) < ($3, $4)`
		args = append(args, after.CreatedAt, after.ID)
	}
	q += fmt.Sprintf(` ORDER BY dead_lettered_at DESC, id DESC LIMIT %d`, limit+1)
	rows, err := s.db.DB.QueryContext(ctx, q, args...)
	if err != nil {
		return pagination.Page[DeadLetter]{}, err
	}
	defer rows.Close()
	var out []DeadLetter
	for rows.Next() {
		d, err := scanDead(rows)
		if err != nil {
			return pagination.Page[DeadLetter]{}, err
		}
		out = append(out, d)
	}
	if err := rows.Err(); err != nil {
		return pagination.Page[DeadLetter]{}, err
	}
	return pagination.NewPage(out, limit, DeadLetter.cursor), nil
}

// Get returns one dead letter; ok is false when the tenant has none with this id.
func (s *DeadLetters) Get(ctx context.Context, tenant, id uuid.UUID) (DeadLetter, bool, error) {
	row := s.db.DB.QueryRowContext(ctx, `SELECT `+deadColumns+` FROM dead_letters WHERE tenant_id = $1 AND id = $2`, tenant, id)
	d, err := scanDead(row)
	if errors.Is(err, sql.ErrNoRows) {
		return DeadLetter{}, false, nil
	}
	return d, err == nil, err
}

// Count returns how many dead letters the tenant has.
func (s *DeadLetters) Count(ctx context.Context, tenant uuid.UUID) (int64, error) {
	var n int64
	err := s.db.DB.QueryRowContext(ctx, `SELECT count(*) FROM dead_letters WHERE tenant_id = $1`, tenant).Scan(&n)
	return n, err
}

// Delete discards one dead letter; it reports whether there was one.
func (s *DeadLetters) Delete(ctx context.Context, tenant, id uuid.UUID) (bool, error) {
	res, err := s.db.DB.ExecContext(ctx, `DELETE FROM dead_letters WHERE tenant_id = $1 AND id = $2`, tenant, id)
	if err != nil {
		return false, err
	}
	n, _ := res.RowsAffected()
	return n > 0, nil
}

// replayChunk is how many dead letters one replay step moves.
const replayChunk = 100

// Replay publishes the tenant's dead letters back to its queue, oldest first: all that are there when it
// starts (limit 0), up to limit, or the one with id (when not nil). Each chunk is published and confirmed
// before its rows are deleted, so a failure midway leaves every message in the table or in the queue (or in
// both, and storage is idempotent by id). A message that fails again while the replay runs is not replayed
// twice. It returns how many were replayed, and ErrNotFound for an id the tenant has no dead letter with.
func (s *DeadLetters) Replay(ctx context.Context, tenant uuid.UUID, id *uuid.UUID, limit int) (int, error) {
	var start time.Time
	if err := s.db.DB.QueryRowContext(ctx, `SELECT now()`).Scan(&start); err != nil {
		return 0, err
	}
	moved := 0
	after := pagination.Cursor{CreatedAt: time.Unix(-62135596800, 0)} // year 1
	for limit == 0 || moved < limit {
		n := replayChunk
		if limit > 0 {
			n = min(n, limit-moved)
		}
		var page []DeadLetter
		if id != nil {
			d, ok, err := s.Get(ctx, tenant, *id)
			if err != nil {
				return moved, err
			}
			if !ok {
				return 0, ErrNotFound
			}
			page = []DeadLetter{d}
		} else {
			rows, err := s.db.DB.QueryContext(ctx, `SELECT `+deadColumns+` FROM dead_letters
WHERE tenant_id = $1 AND dead_lettered_at <= $2 AND (dead_lettered_at, id) > ($3, $4)
ORDER BY dead_lettered_at, id LIMIT $5`, tenant, start, after.CreatedAt, after.ID, n)
			if err != nil {
				return moved, err
			}
			for rows.Next() {
				d, err := scanDead(rows)
				if err != nil {
					rows.Close()
					return moved, err
				}
				page = append(page, d)
			}
			rows.Close()
			if err := rows.Err(); err != nil {
				return moved, err
			}
		}
		if len(page) == 0 {
			break
		}
		msgs := make([]broker.Message, len(page))
		ids := make([]uuid.UUID, len(page))
		times := make([]time.Time, len(page))
		for i, d := range page {
			var headers amqp.Table
			if d.Headers != nil {
				raw, _ := json.Marshal(d.Headers)
				headers = amqpHeaders(raw)
			} else {
				headers = amqp.Table{}
			}
			if d.CreatedAt != nil {
				headers[headerCreatedAt] = d.CreatedAt.UnixMicro()
			}
			msgs[i] = broker.Message{Exchange: s.opts.Exchange, RoutingKey: tenant.String(), MessageID: d.ID.String(),
				Headers: headers, Body: d.body, Mandatory: true}
			ids[i], times[i] = d.ID, d.DeadLetteredAt
		}
		// Mandatory: a publish to a missing queue is returned, and PublishAll answers ErrUnroutable for it, so no
		// row goes for a message the broker dropped.
		if err := s.publisher.PublishAll(ctx, msgs); err != nil {
			return moved, fmt.Errorf("republish: %w", err)
		}
		// Delete only the rows as they were replayed: one dead-lettered again meanwhile has a newer time and stays.
		if _, err := s.db.DB.ExecContext(ctx, `DELETE FROM dead_letters d USING unnest($2::uuid[], $3::timestamptz[]) AS r(id, at)
WHERE d.tenant_id = $1 AND d.id = r.id AND d.dead_lettered_at = r.at`, tenant, uuidStrings(ids), times); err != nil {
			return moved, err
		}
		moved += len(page)
		s.metrics.replayed.WithLabelValues(s.metrics.tenant(tenant)).Add(float64(len(page)))
		if id != nil {
			break
		}
		last := page[len(page)-1]
		after = pagination.Cursor{CreatedAt: last.DeadLetteredAt, ID: last.ID}
	}
	return moved, nil
}

func uuidStrings(ids []uuid.UUID) []string {
	out := make([]string, len(ids))
	for i, id := range ids {
		out[i] = id.String()
	}
	return out
}

// ErrNotFound answers a dead letter that does not exist.
var ErrNotFound = errors.New("no dead letter with this id")
