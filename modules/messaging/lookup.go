package messaging

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/acme/msgsvc/platform/auth"
	"github.com/acme/msgsvc/platform/events"
	"github.com/acme/msgsvc/platform/problem"
)

// ConsumerState is what the consumer runtime knows about a tenant: its dead letters and its queue. The consumer
// module provides it (the application's assembly wires it, as it wires the consumer's Handler the other way).
//
// Contract: every method is safe for concurrent use and answers from the database or the broker, never from one
// replica's memory; an error means the database or the broker did not answer.
type ConsumerState interface {
	// FindDeadLetter reports whether the tenant's message id was dead-lettered, and why.
	FindDeadLetter(ctx context.Context, tenant, id uuid.UUID) (reason, lastError string, at time.Time, found bool, err error)
	// CountDeadLetters returns how many dead letters the tenant has.
	CountDeadLetters(ctx context.Context, tenant uuid.UUID) (int64, error)
	// QueueDepth returns the messages ready in the tenant's queue and the consumers on it (all replicas).
	QueueDepth(ctx context.Context, tenant uuid.UUID) (messages, consumers int, err error)
}

// Message states of a lookup.
const (
	StateStored       = "stored"
	StateDeadLettered = "dead_lettered"
)

// MessageState is the answer to a lookup of one message by id: the stored message, the same shape as a
// listing item plus stored_at, or its dead-lettered state.
type MessageState struct {
	ID       uuid.UUID       `json:"id" format:"uuid" example:"0193a5b0-9d3e-7f10-8c2b-3d4e5f6a7b8c"`
	TenantID uuid.UUID       `json:"tenant_id" format:"uuid" example:"0193a5b0-7c1e-7d2f-9a4b-1c2d3e4f5a6b"`
	State    string          `json:"state" enums:"stored,dead_lettered" example:"stored"`
	Payload  json.RawMessage `json:"payload,omitempty" swaggertype:"object"`
	// CreatedAt is when the message was published; StoredAt when it was stored.
	CreatedAt *time.Time `json:"created_at,omitempty" format:"date-time" example:"2026-11-27T10:00:00.123456Z"`
	StoredAt  *time.Time `json:"stored_at,omitempty" format:"date-time" example:"2026-11-27T10:00:00.131002Z"`
	// Reason, LastError and DeadLetteredAt describe a dead-lettered message (see the dead-letter API).
	Reason         string     `json:"reason,omitempty" example:"undecodable"`
	LastError      string     `json:"last_error,omitempty" example:"payload must be a JSON object or array"`
	DeadLetteredAt *time.Time `json:"dead_lettered_at,omitempty" format:"date-time"`
}

// ErrNotStored answers a lookup of a message that is neither stored nor dead-lettered: it may still wait in
// the tenant's queue, or never have existed.
var ErrNotStored = problem.New(problem.KindNotFound, "message-not-stored",
	"the message is not stored (yet): it may still be waiting in the tenant's queue, or the id is unknown")

// lookupSQL finds one message by its primary key: PostgreSQL prunes to the tenant's partition and probes its
// primary-key index, whatever the partition's size.
//
// The queries on messages here run with the simple protocol (pgx interpolates the parameters safely), so that
// PostgreSQL plans each with the tenant id known and prunes to one partition while planning. As a prepared
// statement, the sixth execution on a connection builds a generic plan over every partition: measured with
// 1,000 partitions, 1.2 s for the stats query and 0.18 s for the lookup, once per pooled connection, while
// the simple protocol costs 0.4 ms a query.
//
// A message older than the tenant's retention is not found, whether the sweep deleted it yet or not.
var lookupSQL = `SELECT payload, created_at, stored_at FROM messages WHERE tenant_id = $1 AND id = $2
  AND created_at >= ` + RetentionCutoff("$1", "$3")

// Get returns the tenant's message id: stored, or dead-lettered (from state), or ErrNotStored.
func (s *Service) Get(ctx context.Context, tenantID, id uuid.UUID, state ConsumerState) (MessageState, error) {
	if err := s.checkTenant(ctx, tenantID); err != nil {
		return MessageState{}, err
	}
	m := MessageState{ID: id, TenantID: tenantID}
	var payload []byte
	var created, stored time.Time
	err := s.db.DB.QueryRowContext(ctx, lookupSQL, pgx.QueryExecModeSimpleProtocol, tenantID, id, s.defaultRetentionSeconds()).Scan(&payload, &created, &stored)
	switch {
	case err == nil:
		created, stored = created.UTC(), stored.UTC()
		m.State, m.Payload, m.CreatedAt, m.StoredAt = StateStored, payload, &created, &stored
		return m, nil
	case !errors.Is(err, sql.ErrNoRows):
		return m, problem.Dependency(err)
	}
	reason, lastErr, at, found, err := state.FindDeadLetter(ctx, tenantID, id)
	switch {
	case err != nil:
		return m, problem.Dependency(err)
	case !found:
		return m, ErrNotStored
	}
	at = at.UTC()
	m.State, m.Reason, m.LastError, m.DeadLetteredAt = StateDeadLettered, reason, lastErr, &at
	return m, nil
}

// lookupTenant is the tenant a lookup is about: a tenant key's own (a tenant_id naming another tenant answers
// 404, as for every tenant resource), or for an admin key the required tenant_id.
func lookupTenant(ctx context.Context, tenantID *string) (uuid.UUID, error) {
	p, _ := auth.FromContext(ctx)
	if !p.Admin && tenantID == nil {
		return p.TenantID, nil
	}
	if tenantID == nil {
		return uuid.Nil, problem.Invalid("tenant_id", "is required with an admin key")
	}
	return parseTenantID(tenantID)
}

// Stats are a tenant's figures at a glance.
type Stats struct {
	TenantID uuid.UUID `json:"tenant_id" format:"uuid" example:"0193a5b0-7c1e-7d2f-9a4b-1c2d3e4f5a6b"`
	// StoredMessages is exact up to 10,000 messages; above, PostgreSQL's statistics estimate it and
	// StoredMessagesEstimated is true.
	StoredMessages          int64 `json:"stored_messages" example:"1250000"`
	StoredMessagesEstimated bool  `json:"stored_messages_estimated" example:"true"`
	// NewestMessageAt is the creation time of the newest stored message.
	NewestMessageAt *time.Time `json:"newest_message_at" extensions:"x-nullable" format:"date-time" example:"2026-11-27T10:00:00.123456Z"`
	// StoredLastMinute counts the stored messages created in the last minute, on every replica (read from the
	// database); PublishRatePerSecond is it divided by 60. Messages still in the queue are not counted yet.
	// Above 5,000 it is extrapolated from the time the newest 5,000 span (StoredLastMinuteEstimated).
	StoredLastMinute          int64   `json:"stored_last_minute" example:"600"`
	StoredLastMinuteEstimated bool    `json:"stored_last_minute_estimated" example:"false"`
	PublishRatePerSecond      float64 `json:"publish_rate_per_second" example:"10"`
	// QueueMessages are ready in the tenant's queue (not counting deliveries being stored); QueueConsumers
	// consume it, on every replica. Both exact, from RabbitMQ.
	QueueMessages  int   `json:"queue_messages" example:"12"`
	QueueConsumers int   `json:"queue_consumers" example:"1"`
	DeadLetters    int64 `json:"dead_letters" example:"2"`
	// Workers is the tenant's configured worker count; RateLimit its publish limit in messages per second for
	// the cluster (0: unlimited), RateLimitDefault whether that is RATE_LIMIT_DEFAULT.
	Workers          int     `json:"workers" example:"3"`
	RateLimit        float64 `json:"rate_limit" example:"100"`
	RateLimitDefault bool    `json:"rate_limit_default" example:"true"`
	// OldestMessageAt is the creation time of the oldest stored message (an expired one the sweep has not
	// deleted yet included); StorageBytes the size of the tenant's partition with its indexes and TOAST, as
	// PostgreSQL counts it (dead letters not included).
	OldestMessageAt *time.Time `json:"oldest_message_at" extensions:"x-nullable" format:"date-time" example:"2026-11-20T10:00:00.123456Z"`
	StorageBytes    int64      `json:"storage_bytes" example:"73728"`
	// MaxAgeSeconds is the tenant's retention in seconds (0: forever), RetentionDefault whether that is
	// RETENTION_DEFAULT.
	MaxAgeSeconds    int64     `json:"max_age_seconds" example:"604800"`
	RetentionDefault bool      `json:"retention_default" example:"false"`
	At               time.Time `json:"at" format:"date-time" example:"2026-11-27T10:00:01Z"`
}

// exactCountBelow is the partition size (by PostgreSQL's live-tuple statistics) under which stats count
// stored messages exactly.
const exactCountBelow = "10000"

// rateSample is how many of the newest messages the last minute's count reads at most: beyond it (more than
// 83 messages per second) the rate is extrapolated from the time the newest rateSample messages span, so that
// the cost stays bounded whatever the rate.
const (
	rateSample  = 5000
	rateSampleS = "5000"
)

// statsSQL reads a tenant's figures in one statement, so that they all come from one snapshot (a count taken
// by a second statement could include rows committed after the first read the last minute's), each from an
// index: the live-tuple statistics of its partition, the exact count when those say it is under
// exactCountBelow (the CASE keeps PostgreSQL from running the count otherwise), its newest message (the keyset
// index's first entry), and the newest messages of the last minute (at most rateSample entries of that index).
const statsSQL = `WITH est AS (SELECT COALESCE(pg_stat_get_live_tuples(to_regclass($2::text)), 0) AS n)
SELECT
  est.n,
  CASE WHEN est.n < ` + exactCountBelow + ` THEN (SELECT count(*) FROM messages WHERE tenant_id = $1) END,
  (SELECT created_at FROM messages WHERE tenant_id = $1 ORDER BY created_at DESC, id DESC LIMIT 1),
  last.n, last.oldest, now(),
  (SELECT created_at FROM messages WHERE tenant_id = $1 ORDER BY created_at, id LIMIT 1),
  COALESCE(pg_total_relation_size(to_regclass($2::text)), 0)
FROM est, (SELECT count(*) AS n, min(created_at) AS oldest FROM (
  SELECT created_at FROM messages WHERE tenant_id = $1 AND created_at >= now() - interval '1 minute'
  ORDER BY created_at DESC, id DESC LIMIT ` + rateSampleS + `) r) last`

// Stats returns the tenant's figures.
func (s *Service) Stats(ctx context.Context, tenantID uuid.UUID, state ConsumerState) (Stats, error) {
	if err := s.checkTenant(ctx, tenantID); err != nil {
		return Stats{}, err
	}
	t, ok, err := s.dir.Tenant(ctx, tenantID)
	if err != nil {
		return Stats{}, problem.Dependency(err)
	}
	if !ok {
		return Stats{}, events.ErrTenantNotFound
	}
	st := Stats{TenantID: tenantID, Workers: t.Concurrency, RateLimit: s.view.defaultLimit, RateLimitDefault: t.RateLimit == nil}
	if t.RateLimit != nil {
		st.RateLimit = *t.RateLimit
	}
	st.MaxAgeSeconds, st.RetentionDefault = maxAge(t, s.retentionDefault), t.MaxAgeSeconds == nil
	var newest, oldest, first sql.NullTime
	var exact sql.NullInt64
	if err := s.db.DB.QueryRowContext(ctx, statsSQL, pgx.QueryExecModeSimpleProtocol, tenantID, PartitionName(tenantID)).
		Scan(&st.StoredMessages, &exact, &newest, &st.StoredLastMinute, &oldest, &st.At, &first, &st.StorageBytes); err != nil {
		return Stats{}, problem.Dependency(err)
	}
	if exact.Valid {
		st.StoredMessages = exact.Int64
	} else {
		st.StoredMessagesEstimated = true
	}
	st.At = st.At.UTC()
	if first.Valid {
		f := first.Time.UTC()
		st.OldestMessageAt = &f
	}
	if newest.Valid {
		n := newest.Time.UTC()
		st.NewestMessageAt = &n
	}
	st.PublishRatePerSecond = float64(st.StoredLastMinute) / 60
	if span := st.At.Sub(oldest.Time).Seconds(); st.StoredLastMinute >= rateSample && oldest.Valid && span > 0 {
		st.PublishRatePerSecond = float64(st.StoredLastMinute) / span
		st.StoredLastMinute = int64(st.PublishRatePerSecond * 60)
		st.StoredLastMinuteEstimated = true
	}
	if st.DeadLetters, err = state.CountDeadLetters(ctx, tenantID); err != nil {
		return Stats{}, problem.Dependency(err)
	}
	if st.QueueMessages, st.QueueConsumers, err = state.QueueDepth(ctx, tenantID); err != nil {
		return Stats{}, problem.Dependency(err)
	}
	return st, nil
}
