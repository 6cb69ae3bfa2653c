package consumer

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgconn"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/uptrace/bun"
	rabbitmq "github.com/wagslane/go-rabbitmq"
	"go.uber.org/fx"
	"go.uber.org/zap"

	"github.com/acme/msgsvc/platform/broker"
	"github.com/acme/msgsvc/platform/database"
	"github.com/acme/msgsvc/platform/events"
)

// Dead-letter reasons.
const (
	ReasonUndecodable      = "undecodable"       // the message can never be stored (not JSON, a bad id, refused by PostgreSQL)
	ReasonRetriesExhausted = "retries_exhausted" // storing it failed AMQP_DELIVERY_LIMIT times
	// Reasons the broker gives when it dead-letters by itself (x-death): delivery_limit, rejected, expired, maxlen.
)

// HeaderAttempts counts how often the service failed to store a message: on retry-budget exhaustion the
// service republishes the message with it incremented, so that only real failures count, whatever the broker
// counts (returns by a stop, a resize or a reconnection never do).
const HeaderAttempts = "x-msgsvc-attempts"

// headerCreatedAt is the message's creation time (messaging.HeaderCreatedAt; modules do not import each other).
const headerCreatedAt = "x-created-at"

// deadRow is a dead letter to insert.
type deadRow struct {
	tenant     uuid.UUID
	id         uuid.UUID
	originalID string
	reason     string
	lastError  string
	body       []byte
	headers    []byte // JSON object
	attempts   int
	createdAt  *time.Time
}

// DeadLetters keeps dead letters in PostgreSQL (table dead_letters): the consumers write them there, the
// broker's own dead letters are moved there from one shared queue, and the API lists, replays and discards them.
type DeadLetters struct {
	db        *bun.DB
	conn      *broker.Conn
	publisher *broker.Publisher
	dir       events.TenantDirectory
	opts      Options
	metrics   *Metrics
	log       *zap.Logger
	gate      *database.Gate // whether the database can be used; nil: always

	// The consumer of the shared dead-letter queue.
	mu       sync.Mutex
	c        *rabbitmq.Consumer
	stopping atomic.Bool
	stopped  chan struct{}
	chanMu   sync.RWMutex // see generation.chanMu
	closed   bool
	bg       sync.WaitGroup
}

// DeadLettersParams are the dead-letter store's dependencies, as fx fills them.
type DeadLettersParams struct {
	fx.In

	DB        *bun.DB
	Conn      *broker.Conn
	Publisher *broker.Publisher
	Directory events.TenantDirectory
	Options   Options
	Metrics   *Metrics
	Log       *zap.Logger

	// Gate closes while the database is unusable; stores of dead letters wait for it. Optional.
	Gate *database.Gate `optional:"true"`
}

// NewDeadLetters returns the dead-letter store.
func NewDeadLetters(p DeadLettersParams) *DeadLetters {
	return &DeadLetters{db: p.DB, conn: p.Conn, publisher: p.Publisher, dir: p.Directory, opts: p.Options, metrics: p.Metrics,
		log: p.Log.Named("deadletters"), gate: p.Gate, stopped: make(chan struct{})}
}

// insertDeadSQL stores dead letters of any tenants in one statement; rows of tenants that no longer exist are
// skipped, and a message dead-lettered again updates its row (one row per message).
const insertDeadSQL = `INSERT INTO dead_letters (tenant_id, id, original_id, reason, last_error, body, headers, attempts, created_at)
SELECT d.tenant_id::uuid, d.id::uuid, NULLIF(d.original_id, ''), d.reason, d.last_error, d.body, d.headers::jsonb, d.attempts,
       NULLIF(d.created_at, '')::timestamptz
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bytea[], $7::text[], $8::int[], $9::text[])
     AS d(tenant_id, id, original_id, reason, last_error, body, headers, attempts, created_at)
JOIN tenants t ON t.id = d.tenant_id::uuid
ON CONFLICT (tenant_id, id) DO UPDATE SET reason = excluded.reason, last_error = excluded.last_error,
    attempts = GREATEST(dead_letters.attempts, excluded.attempts), dead_lettered_at = excluded.dead_lettered_at`

// insert stores rows in one statement (a row repeated in rows is stored once). When PostgreSQL refuses a value
// (a header or time it cannot represent), the rows are stored again without their headers and creation time,
// which no dead letter can then block.
func (s *DeadLetters) insert(ctx context.Context, rows []deadRow) error {
	err := s.insertRows(ctx, rows)
	var pgErr *pgconn.PgError
	if err == nil || !errors.As(err, &pgErr) || !strings.HasPrefix(pgErr.Code, "22") {
		return err
	}
	s.log.Warn("PostgreSQL refused a dead letter's headers or time; storing it without them", zap.Error(err))
	bare := make([]deadRow, len(rows))
	for i, r := range rows {
		r.headers, r.createdAt = []byte("{}"), nil
		bare[i] = r
	}
	return s.insertRows(ctx, bare)
}

func (s *DeadLetters) insertRows(ctx context.Context, rows []deadRow) error {
	seen := make(map[[2]uuid.UUID]bool, len(rows))
	var tenants, ids, originals, reasons, lastErrs, headers, created []string
	var bodies [][]byte
	var attempts []int32
	for _, r := range rows {
		k := [2]uuid.UUID{r.tenant, r.id}
		if seen[k] {
			continue
		}
		seen[k] = true
		tenants = append(tenants, r.tenant.String())
		ids = append(ids, r.id.String())
		originals = append(originals, r.originalID)
		reasons = append(reasons, r.reason)
		lastErrs = append(lastErrs, r.lastError)
		bodies = append(bodies, r.body)
		headers = append(headers, string(r.headers))
		attempts = append(attempts, int32(r.attempts))
		c := ""
		if r.createdAt != nil {
			c = r.createdAt.UTC().Format(time.RFC3339Nano)
		}
		created = append(created, c)
	}
	_, err := s.db.DB.ExecContext(ctx, insertDeadSQL, tenants, ids, originals, reasons, lastErrs, bodies, headers, attempts, created)
	return err
}

// store stores rows for a consumer, retrying with backoff while the database refuses, until it succeeds (true)
// or the generation stops (false; an insert running then is cancelled). While the database is unavailable
// (database.Classify), it reports it to the gate and waits for the gate, like a store.
func (s *DeadLetters) store(rows []deadRow, stopped <-chan struct{}, stopping func() bool) bool {
	backoff := s.opts.RetryInitial
	for attempt := 1; ; attempt++ {
		select {
		case <-s.gate.Ready():
		case <-stopped:
		}
		if stopping() {
			return false
		}
		err := s.insertUntil(stopped, rows)
		if err == nil {
			return true
		}
		if attempt == 1 || attempt%10 == 0 {
			s.log.Warn("could not store dead letters; retrying with backoff", zap.String("tenant_id", rows[0].tenant.String()),
				zap.Int("messages", len(rows)), zap.Int("attempt", attempt), zap.Error(err))
		}
		if database.Classify(err) == database.Unavailable {
			s.gate.Fail(err)
			continue
		}
		select {
		case <-time.After(backoff):
		case <-stopped:
		}
		backoff = min(backoff*2, maxBackoff)
	}
}

// insertUntil inserts rows, giving up after 10 s or when stopped is closed.
func (s *DeadLetters) insertUntil(stopped <-chan struct{}, rows []deadRow) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	go func() {
		select {
		case <-stopped:
			cancel()
		case <-ctx.Done():
		}
	}()
	return s.insert(ctx, rows)
}

// maxLastError is how much of an error message a dead letter keeps.
const maxLastError = 1024

// rowFor describes delivery d of tenant as a dead letter.
func rowFor(tenant uuid.UUID, d amqp.Delivery, reason string, lastErr string, attempts int) deadRow {
	r := deadRow{tenant: tenant, reason: reason, body: d.Body, attempts: attempts}
	if len(lastErr) > maxLastError {
		lastErr = strings.ToValidUTF8(lastErr[:maxLastError], "")
	}
	r.lastError = strings.ReplaceAll(strings.ToValidUTF8(lastErr, "?"), "\x00", "")
	switch id, err := uuid.Parse(d.MessageId); {
	case d.MessageId == "":
		r.id = uuid.Must(uuid.NewV7())
	case err != nil || len(d.MessageId) != 36:
		// Derived from the original id, so that a redelivery of the same message finds the same row.
		r.id = uuid.NewSHA1(tenant, []byte(d.MessageId))
		r.originalID = strings.ReplaceAll(strings.ToValidUTF8(d.MessageId, "?"), "\x00", "")
	default:
		r.id = id
	}
	if t, ok := createdAt(d); ok && t.Year() >= 1 && t.Year() <= 9999 {
		r.createdAt = &t
	}
	r.headers, _ = json.Marshal(jsonHeaders(d.Headers))
	return r
}

// rowsFor describes a delivery as dead letters: one row, or one per message of an envelope (so that each is
// found, listed and replayed by its own id). An envelope that cannot be read is one row of its raw body.
func rowsFor(tenant uuid.UUID, d amqp.Delivery, reason, lastErr string, attempts int) []deadRow {
	if broker.IsEnvelope(d) {
		if parts, err := broker.Unpack(d); err == nil {
			rows := make([]deadRow, len(parts))
			for i, p := range parts {
				rows[i] = rowFor(tenant, p, reason, lastErr, attempts)
			}
			return rows
		}
	}
	return []deadRow{rowFor(tenant, d, reason, lastErr, attempts)}
}

// createdAt is a delivery's own creation time: x-created-at, else the AMQP timestamp.
func createdAt(d amqp.Delivery) (time.Time, bool) {
	switch v := d.Headers[headerCreatedAt].(type) {
	case int64:
		return time.UnixMicro(v).UTC(), true
	case int32:
		return time.UnixMicro(int64(v)).UTC(), true
	}
	if !d.Timestamp.IsZero() {
		return d.Timestamp.UTC(), true
	}
	return time.Time{}, false
}

// droppedHeaders are broker bookkeeping and the service's own counters, which a replay starts afresh.
var droppedHeaders = map[string]bool{
	"x-death": true, "x-first-death-exchange": true, "x-first-death-queue": true, "x-first-death-reason": true,
	"x-last-death-exchange": true, "x-last-death-queue": true, "x-last-death-reason": true, "x-delivery-count": true,
	HeaderAttempts: true, headerCreatedAt: true,
	// Set by service versions that kept dead letters in per-tenant queues.
	"x-dead-letter-reason": true, "x-last-error": true, "x-dead-lettered-at": true,
}

// jsonHeaders turns AMQP headers into JSON values (byte arrays become text or base64, times RFC 3339).
func jsonHeaders(h amqp.Table) map[string]any {
	out := map[string]any{}
	for k, v := range h {
		if !droppedHeaders[k] {
			out[k] = jsonValue(v)
		}
	}
	return out
}

func jsonValue(v any) any {
	switch v := v.(type) {
	case string:
		return strings.ReplaceAll(v, "\x00", "") // jsonb refuses \u0000
	case nil, bool, int, int8, int16, int32, int64, uint8, uint16, uint32, uint64, float32, float64:
		return v
	case []byte:
		if utf8.Valid(v) && !bytes.ContainsRune(v, 0) {
			return string(v)
		}
		return base64.StdEncoding.EncodeToString(v)
	case time.Time:
		return v.UTC().Format(time.RFC3339)
	case amqp.Table:
		return jsonHeaders(v)
	case map[string]any:
		return jsonHeaders(v)
	case []any:
		out := make([]any, len(v))
		for i, e := range v {
			out[i] = jsonValue(e)
		}
		return out
	default:
		return fmt.Sprint(v)
	}
}

// attempts is how often the service failed to store d before (HeaderAttempts).
func attempts(d amqp.Delivery) int {
	switch v := d.Headers[HeaderAttempts].(type) {
	case int64:
		return int(v)
	case int32:
		return int(v)
	case int:
		return v
	}
	return 0
}

// deadLetter stores ds (described by rows, one or more per delivery) in the dead_letters table in one insert and acks them after the
// commit. While the database refuses, it retries with backoff like a store; when the generation stops first,
// it gives the deliveries back to the queue, so a dead letter is never lost nor dropped without its reason.
func (tc *tenantConsumer) deadLetter(g *generation, ds []rabbitmq.Delivery, rows []deadRow) {
	rt := tc.rt
	label := rt.metrics.tenant(tc.id)
	if !rt.dead.store(rows, g.stopped, g.stopping.Load) {
		for _, d := range ds {
			tc.settle(g, d, func() error { return d.Nack(false, true) })
		}
		rt.metrics.requeued.WithLabelValues(label, requeueStopping).Add(float64(len(ds)))
		return
	}
	for _, d := range ds {
		tc.settle(g, d, func() error { return d.Ack(false) })
	}
	for _, r := range rows {
		rt.metrics.deadLetter(label, r.reason).Inc()
	}
}
