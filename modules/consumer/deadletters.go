package consumer

import (
	"bytes"
	"context"
	"database/sql"
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
	"go.uber.org/zap"

	"github.com/acme/msgsvc/platform/broker"
	"github.com/acme/msgsvc/platform/events"
	"github.com/acme/msgsvc/platform/pagination"
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

	// The consumer of the shared dead-letter queue.
	mu       sync.Mutex
	c        *rabbitmq.Consumer
	stopping atomic.Bool
	stopped  chan struct{}
	chanMu   sync.RWMutex // see generation.chanMu
	closed   bool
	bg       sync.WaitGroup
}

// NewDeadLetters returns the dead-letter store.
func NewDeadLetters(db *bun.DB, conn *broker.Conn, p *broker.Publisher, dir events.TenantDirectory, opts Options, m *Metrics, log *zap.Logger) *DeadLetters {
	return &DeadLetters{db: db, conn: conn, publisher: p, dir: dir, opts: opts, metrics: m, log: log.Named("deadletters"),
		stopped: make(chan struct{})}
}

// DeadLetterExchange is the exchange the tenants' queues dead-letter to (x-dead-letter-exchange).
func DeadLetterExchange(exchange string) string { return exchange + ".dlx" }

// DeadQueueName is the one queue, shared by every tenant, that receives what the broker dead-letters by itself;
// the runtime moves its messages into the dead_letters table.
func DeadQueueName(exchange string) string { return exchange + ".dead" }

// brokerDeliveryLimit is the x-delivery-limit of quorum queues: only a backstop far above the service's own
// limit, so that the broker never dead-letters a message that did not fail (RabbitMQ 4.0–4.2 count every return).
func brokerDeliveryLimit(serviceLimit int) int64 { return int64(max(1000, 10*serviceLimit)) }

// deadQueue is the shared dead-letter queue's declaration.
func (o Options) deadQueue() broker.Queue {
	args := amqp.Table{"x-queue-type": o.QueueType}
	if o.QueueType == "quorum" {
		// RabbitMQ 4.0–4.2 give quorum queues a default limit of 20 returns; this queue has no dead-letter target.
		args["x-delivery-limit"] = int64(1_000_000)
	}
	return broker.Queue{Name: DeadQueueName(o.Exchange), Args: args}
}

// deadBinding binds the shared dead-letter queue to the dead-letter exchange for a tenant's routing key.
func (o Options) deadBinding(id uuid.UUID) broker.Queue {
	q := o.deadQueue()
	q.Exchange, q.Key = DeadLetterExchange(o.Exchange), id.String()
	return q
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

// brokerDeadRows describes a message the broker dead-lettered by itself (or an older service version put in a
// per-tenant dead-letter queue), from its x-death and headers: one row, or one per message of an envelope; ok
// is false when no tenant can be told.
func brokerDeadRows(d amqp.Delivery) ([]deadRow, bool) {
	tenant, err := uuid.Parse(d.RoutingKey)
	reason, queue := "rejected", ""
	count := int64(0)
	if deaths, ok := d.Headers["x-death"].([]any); ok && len(deaths) > 0 {
		if death, ok := deaths[0].(amqp.Table); ok {
			if r, ok := death["reason"].(string); ok {
				reason = r
			}
			queue, _ = death["queue"].(string)
			count, _ = death["count"].(int64)
		}
	}
	if err != nil {
		id, ok := parseQueueName(queue)
		if !ok {
			return nil, false
		}
		tenant = id
	}
	lastErr := fmt.Sprintf("dead-lettered by RabbitMQ (%s) from queue %s", reason, queue)
	if r, ok := d.Headers["x-dead-letter-reason"].(string); ok { // older service versions
		reason = r
		lastErr, _ = d.Headers["x-last-error"].(string)
	}
	n := attempts(d)
	if reason == "delivery_limit" || reason == "rejected" {
		n = max(n, int(count), int(deliveryCount(d.Headers)))
	}
	return rowsFor(tenant, d, reason, lastErr, n), true
}

// deliveryCount is how often the broker delivered a message before (quorum queues count it in x-delivery-count).
func deliveryCount(h amqp.Table) int64 {
	switch v := h["x-delivery-count"].(type) {
	case int64:
		return v
	case int32:
		return int64(v)
	}
	return 0
}

// Start declares the shared dead-letter queue, binds it for every tenant, consumes it, and moves what older
// versions left in per-tenant dead-letter queues into the table (in the background).
func (s *DeadLetters) Start(ctx context.Context) error {
	if err := s.conn.DeclareQueues(ctx, s.opts.deadQueue()); err != nil {
		return fmt.Errorf("consumer: declare the dead-letter queue: %w", err)
	}
	c, err := rabbitmq.NewConsumer(s.conn.Conn, DeadQueueName(s.opts.Exchange),
		rabbitmq.WithConsumerOptionsQueueNoDeclare,
		rabbitmq.WithConsumerOptionsConcurrency(1),
		rabbitmq.WithConsumerOptionsQOSPrefetch(50),
		rabbitmq.WithConsumerOptionsForceShutdown,
		rabbitmq.WithConsumerOptionsConsumerName(s.opts.ReplicaID+"/"+DeadQueueName(s.opts.Exchange)),
		rabbitmq.WithConsumerOptionsLogger(broker.Logger(s.log)),
	)
	if err != nil {
		return fmt.Errorf("consumer: consume the dead-letter queue: %w", err)
	}
	s.mu.Lock()
	s.c = c
	s.mu.Unlock()
	s.bg.Add(2)
	go func() {
		defer s.bg.Done()
		if err := c.Run(s.handle); err != nil {
			s.log.Warn("dead-letter queue consumer stopped", zap.Error(err))
		}
	}()
	go func() {
		defer s.bg.Done()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go func() {
			select {
			case <-s.stopped:
				cancel()
			case <-ctx.Done():
			}
		}()
		if err := s.adoptTenants(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("moving old dead-letter queues into the table failed; the next start retries", zap.Error(err))
		}
	}()
	return nil
}

// adoptTenants binds the shared dead-letter queue for every existing tenant and moves the messages of their
// per-tenant dead-letter queues (made by versions before the table) into the table, then deletes those queues.
func (s *DeadLetters) adoptTenants(ctx context.Context) error {
	tenants, err := s.dir.Tenants(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, t := range tenants {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err := s.conn.DeclareQueues(ctx, s.opts.deadBinding(t.ID)); err != nil {
			errs = append(errs, err)
			continue
		}
		if err := s.adoptLegacyQueue(ctx, t.ID); err != nil {
			errs = append(errs, fmt.Errorf("tenant %s: %w", t.ID, err))
		}
	}
	return errors.Join(errs...)
}

// adoptLegacyQueue moves the messages of a tenant's per-tenant dead-letter queue into the table, each acked
// after its insert committed, and deletes the queue once it is empty.
func (s *DeadLetters) adoptLegacyQueue(ctx context.Context, id uuid.UUID) error {
	name := DeadLetterQueueName(id)
	st, err := s.conn.InspectQueue(ctx, name)
	if err != nil || !st.Exists {
		return err
	}
	moved := 0
	err = s.conn.WithChannel(ctx, func(ch *amqp.Channel) error {
		for {
			var batch []amqp.Delivery
			for len(batch) < 100 {
				d, ok, err := ch.Get(name, false)
				if err != nil {
					return err
				}
				if !ok {
					break
				}
				batch = append(batch, d)
			}
			if len(batch) == 0 {
				_, err := ch.QueueDelete(name, false, false, false)
				return err
			}
			rows := make([]deadRow, 0, len(batch))
			for _, d := range batch {
				if d.RoutingKey == "" || d.RoutingKey != id.String() {
					d.RoutingKey = id.String()
				}
				r, _ := brokerDeadRows(d)
				rows = append(rows, r...)
			}
			if err := s.insert(ctx, rows); err != nil {
				return err // the channel's close returns the batch to the queue
			}
			if err := ch.Ack(batch[len(batch)-1].DeliveryTag, true); err != nil {
				return err
			}
			moved += len(batch)
		}
	})
	if moved > 0 {
		s.log.Info("moved an old dead-letter queue into the table", zap.String("tenant_id", id.String()), zap.Int("messages", moved))
	}
	return err
}

// handle moves one delivery of the shared dead-letter queue into the table and acks it after the commit; while
// the database refuses it retries with backoff, and on stop it leaves the delivery to the channel's close.
func (s *DeadLetters) handle(d rabbitmq.Delivery) rabbitmq.Action {
	s.chanMu.RLock()
	defer s.chanMu.RUnlock()
	rows, ok := brokerDeadRows(d.Delivery)
	if !ok {
		s.log.Error("a dead letter of no known tenant; dropping it", zap.String("routing_key", d.RoutingKey),
			zap.String("message_id", d.MessageId))
		if !s.closed {
			_ = d.Ack(false)
		}
		return rabbitmq.Manual
	}
	backoff := s.opts.RetryInitial
	for attempt := 1; ; attempt++ {
		if s.stopping.Load() {
			return rabbitmq.Manual
		}
		err := s.insertUntil(s.stopped, rows)
		if err == nil {
			break
		}
		if attempt == 1 || attempt%10 == 0 {
			s.log.Warn("could not store a dead letter; retrying", zap.String("tenant_id", rows[0].tenant.String()), zap.Error(err))
		}
		select {
		case <-time.After(backoff):
		case <-s.stopped:
		}
		backoff = min(backoff*2, maxBackoff)
	}
	if !s.closed {
		if err := d.Ack(false); err != nil {
			s.log.Warn("could not ack a stored dead letter; it is stored again (once)", zap.Error(err))
		}
	}
	for _, row := range rows {
		s.metrics.deadLettered.WithLabelValues(s.metrics.tenant(row.tenant), row.reason).Inc()
	}
	return rabbitmq.Manual
}

// Stop stops consuming the shared dead-letter queue; what was not stored yet stays in it.
func (s *DeadLetters) Stop(ctx context.Context) error {
	if !s.stopping.Swap(true) {
		close(s.stopped)
	}
	s.chanMu.Lock() // waits for a running handle
	s.closed = true
	s.chanMu.Unlock()
	s.mu.Lock()
	c := s.c
	s.mu.Unlock()
	if c != nil {
		c.CloseWithContext(ctx)
	}
	s.bg.Wait()
	return nil
}

// store stores rows for a consumer, retrying with backoff while the database refuses, until it succeeds (true)
// or the generation stops (false; an insert running then is cancelled).
func (s *DeadLetters) store(rows []deadRow, stopped <-chan struct{}, stopping func() bool) bool {
	backoff := s.opts.RetryInitial
	for attempt := 1; ; attempt++ {
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

// unbind removes the shared dead-letter queue's binding for a deleted tenant.
func (s *DeadLetters) unbind(ctx context.Context, id uuid.UUID) error {
	return s.conn.WithChannel(ctx, func(ch *amqp.Channel) error {
		return ch.QueueUnbind(DeadQueueName(s.opts.Exchange), id.String(), DeadLetterExchange(s.opts.Exchange), nil)
	})
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

// UseDeadLetters makes the runtime's consumers dead-letter into s.
func (r *Runtime) UseDeadLetters(s *DeadLetters) { r.dead = s }
