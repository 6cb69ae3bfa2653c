package messaging

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/uptrace/bun"
	"go.uber.org/zap"

	"github.com/acme/msgsvc/platform/events"
	"github.com/acme/msgsvc/platform/metrics"
	"github.com/acme/msgsvc/platform/periodic"
)

// retentionCutoffSQL is the oldest created_at a tenant's message may have to be served: now minus the tenant's
// retention (its max_age_seconds, else the default, the second parameter, in seconds), or -infinity when the
// retention is 0 (keep forever). The first parameter is the tenant's id. It is read from the tenant's row in
// the query that serves the messages, so that a retention change holds on every replica at once. PostgreSQL
// computes it once per query (an InitPlan), and the partition's (created_at, id) index bounds its scan with it.
const retentionCutoffSQL = `COALESCE(now() - make_interval(secs => NULLIF(COALESCE(
  (SELECT max_age_seconds FROM tenants WHERE id = %s), %s), 0)), '-infinity'::timestamptz)`

// RetentionCutoff returns the expression of the oldest created_at a tenant's message may have to be served,
// with the given parameter placeholders for the tenant's id and RETENTION_DEFAULT in seconds.
func RetentionCutoff(tenantParam, defaultParam string) string {
	return fmt.Sprintf(retentionCutoffSQL, tenantParam, defaultParam)
}

// defaultRetentionSeconds is RETENTION_DEFAULT in whole seconds (0: forever).
func (s *Service) defaultRetentionSeconds() int64 { return int64(s.retentionDefault / time.Second) }

// maxAge is a tenant's retention in seconds (0: forever), its own or def.
func maxAge(t events.Tenant, def time.Duration) int64 {
	if t.MaxAgeSeconds != nil {
		return *t.MaxAgeSeconds
	}
	return int64(def / time.Second)
}

// SweeperOptions are the settings of the retention sweeper.
type SweeperOptions struct {
	// Default is each tenant's retention unless it has its own (RETENTION_DEFAULT; 0: forever).
	Default time.Duration
	// DeadLetters is how long dead letters are kept (DEAD_LETTER_RETENTION; 0: forever).
	DeadLetters time.Duration
	// Batch is how many rows one delete removes (RETENTION_BATCH).
	Batch int
	// Share is the most of its time a sweep spends deleting, 0 to 1 (RETENTION_SWEEP_SHARE): after a batch that
	// took d it pauses d × (1/Share − 1), so that it yields to the stores, and more so while PostgreSQL is slow.
	// 0 or 1: no pause.
	Share float64
	// FirstReads is how many partitions that this replica never read the size of a sweep reads, after its first
	// sweep, which reads them all (0: sweepChunk). Tenants created in a burst get their figure over the next sweeps.
	FirstReads int
	// Interval is the time between sweeps (RETENTION_INTERVAL): a sweep's size reads are paced so as to end
	// within half of it (sizeReadEvery). 0: they are paced at sizeReadRate.
	Interval time.Duration
}

// Sweeper deletes expired messages and dead letters of the tenants this replica owns, in batches of at most
// Batch rows, each delete its own short transaction along the (created_at, id) index: a DELETE takes only row
// locks and the ROW EXCLUSIVE table lock that inserts take too, so stores never wait on it. It keeps no state:
// a sweep cut short (a crash, its time bound) is continued by the next one.
type Sweeper struct {
	db    *bun.DB
	dir   events.TenantDirectory
	owns  func(uuid.UUID) bool
	opts  SweeperOptions
	m     *RetentionMetrics
	log   *zap.Logger
	kicks chan struct{}
	// creations are the tenant creations in the cluster: a sweep makes way for their bursts (Run).
	creations periodic.Burst
	asked     atomic.Bool // the sweep under way was asked for (Kick): it does not make way for the creations
	// last is each owned tenant's partition size at its last read, kept for a sweep that cannot read it or
	// need not (nothing written or vacuumed since).
	last  map[uuid.UUID]sizeRead
	swept bool // a sweep ran to its end
}

// sizeRead is a partition's size when the sweep last read it, and its write counters then ("": not known).
type sizeRead struct {
	size   float64
	writes string
}

// sweepLockTimeout bounds how long one statement of a sweep waits for a lock on a tenant's partition or the
// dead letters (lock_timeout, set for its transaction only). A partition that someone holds against writes (a
// CREATE INDEX without CONCURRENTLY, an operator's LOCK TABLE or long transaction) is passed over until the
// next sweep, so that it never holds back the sweep of the replica's other tenants.
const sweepLockTimeout = "200ms"

// lockNotAvailable is SQLSTATE 55P03, what lock_timeout raises.
const lockNotAvailable = "55P03"

// NewSweeper returns a Sweeper of the tenants owns says this replica owns.
func NewSweeper(db *bun.DB, dir events.TenantDirectory, owns func(uuid.UUID) bool, opts SweeperOptions, m *RetentionMetrics, log *zap.Logger) *Sweeper {
	if opts.Batch <= 0 {
		opts.Batch = 1000
	}
	if opts.FirstReads <= 0 {
		opts.FirstReads = sweepChunk
	}
	return &Sweeper{db: db, dir: dir, owns: owns, opts: opts, m: m, log: log.Named("retention"), kicks: make(chan struct{}, 1),
		last: map[uuid.UUID]sizeRead{}}
}

// Kick asks for a sweep before the next interval (a retention was shortened).
func (s *Sweeper) Kick() {
	select {
	case s.kicks <- struct{}{}:
	default:
	}
}

// Created records a tenant creation, in the cluster: a sweep makes way for a burst of them (Run).
func (s *Sweeper) Created() { s.creations.Mark() }

// kicked reports whether a sweep was asked for (Kick) and has not started yet.
func (s *Sweeper) kicked() bool { return len(s.kicks) > 0 }

// Run sweeps every interval, and when kicked, until ctx ends. Each sweep is bounded by interval.
//
// A sweep in its turn makes way for a burst of tenant creations (periodic.Burst), for up to one interval before it
// starts and half of one while it runs (between tenants and between its size reads): at 10,000 tenants on two
// cores, the start of a sweep took some 0.15 s of the service's CPU at once, in a block of 1,000 creations that
// went at 0.77 × the rate of the first block. A sweep a kick asks for (a retention shortened) does not wait, and a
// kick ends the waits of a sweep under way.
func (s *Sweeper) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		asked := true
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			asked = false
			if s.creations.Yield(ctx, interval, s.kicked); ctx.Err() != nil {
				return
			}
		case <-s.kicks:
		}
		select { // the sweep about to start serves a kick that came meanwhile
		case <-s.kicks:
			asked = true
		default:
		}
		s.asked.Store(asked)
		sctx, cancel := context.WithTimeout(ctx, interval)
		if err := s.Sweep(sctx); err != nil && ctx.Err() == nil {
			s.log.Warn("retention sweep failed; the next one continues", zap.Error(err))
		}
		cancel()
		t.Reset(interval) // the next turn is an interval after this sweep, however long it waited
	}
}

// sweepChunk is how many tenants one statement of a sweep covers where the work is the same for each and cheap:
// the expiry of their dead letters (one shared table) and the write counters of the partitions of tenants without
// a retention (their sizes go sizeReadChunk at a time).
// Statement by statement, a sweep of 10,000 tenants took some 50,000 round trips a minute, several seconds of
// the service's and PostgreSQL's CPU: the creations running meanwhile slowed to half their rate.
const sweepChunk = 1000

// sizeReadChunk is how many partitions' sizes one statement of a sweep reads, and sizeReadRate how many a second
// it reads at most, unless that would take more than half of RETENTION_INTERVAL. Reading a size opens the
// partition, its indexes and TOAST table (0.15–0.6 ms of PostgreSQL's CPU each). A thousand new tenants read in
// one statement took 0.63 s of PostgreSQL's CPU at 10,000 partitions, all at once, while 8 clients created
// tenants (PostgreSQL +0.55 ms per creation in the block of 1,000 it fell in); paced, it is about a tenth of a
// core over five seconds.
const (
	sizeReadChunk = 100
	sizeReadRate  = 200
)

// sizeReadEvery is the time from the start of one statement of a sweep's n size reads to the next one's:
// sizeReadChunk / sizeReadRate, or less so that they end within half of interval (0: not bounded).
func sizeReadEvery(n int, interval time.Duration) time.Duration {
	rate := float64(sizeReadRate)
	if interval > 0 {
		rate = max(rate, 2*float64(n)/interval.Seconds())
	}
	return time.Duration(float64(sizeReadChunk) / rate * float64(time.Second))
}

// sleepCtx waits d (nothing when d <= 0) or until ctx ends, and returns ctx's error.
func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
	return ctx.Err()
}

// Sweep deletes what has expired in the tenants this replica owns, and refreshes their storage figures.
func (s *Sweeper) Sweep(ctx context.Context) error {
	began := time.Now()
	ts, err := s.dir.Tenants(ctx)
	if err != nil {
		return fmt.Errorf("retention: list tenants: %w", err)
	}
	var lag float64
	var errs []error
	owned := make(map[uuid.UUID]bool, len(ts)) // the listed tenants this replica owns: their last sizes are kept
	var own, plain []uuid.UUID                 // the owned tenants, and those of them without a retention
	sizes := make(map[uuid.UUID]float64, len(ts))
	var yielded time.Duration
	yield := func() { // to a burst of creations, for up to half of Interval over the sweep (Run)
		if s.creations.Busy() && !s.asked.Load() {
			yielded += s.creations.Yield(ctx, s.opts.Interval/2-yielded, s.kicked)
		}
	}
	for _, t := range ts {
		if s.owns(t.ID) {
			owned[t.ID] = true
			own = append(own, t.ID)
		}
	}
	for _, t := range ts {
		if !owned[t.ID] {
			continue
		}
		if maxAge(t, s.opts.Default) == 0 {
			plain = append(plain, t.ID)
			continue
		}
		yield()
		l, size, err := s.sweepTenant(ctx, t)
		if err != nil {
			errs = append(errs, err)
			if ctx.Err() != nil {
				break
			}
			continue
		}
		lag = max(lag, l)
		sizes[t.ID] = size
	}
	read, writes, err := s.sizesToRead(ctx, plain, sizes)
	if err != nil {
		errs = append(errs, err)
	}
	every, next := sizeReadEvery(len(read), s.opts.Interval), time.Now()
	for chunk := range slices.Chunk(read, sizeReadChunk) {
		if sleepCtx(ctx, time.Until(next)) != nil {
			break
		}
		yield()
		next = time.Now().Add(every)
		if err := s.readSizes(ctx, chunk, sizes); err != nil {
			errs = append(errs, err)
		}
	}
	for _, id := range read { // not read this time (the sweep's time ran out, an error): its last figure stays
		if _, ok := sizes[id]; !ok {
			if _, seen := s.last[id]; seen {
				sizes[id] = -1
			}
		}
	}
	if s.opts.DeadLetters > 0 {
		for chunk := range slices.Chunk(own, sweepChunk) {
			if ctx.Err() != nil {
				break
			}
			if err := s.expireDeadLetters(ctx, chunk); err != nil {
				errs = append(errs, err)
			}
		}
	}
	bytes := map[string]float64{}
	for id, size := range sizes {
		if size < 0 { // its size could not be read this time: keep the last figure
			size = s.last[id].size
		} else {
			s.last[id] = sizeRead{size: size, writes: writes[id]} // "" when not read (a tenant with a retention)
		}
		bytes[s.m.tenant(id)] += size
	}
	for id := range s.last {
		if !owned[id] {
			delete(s.last, id)
		}
	}
	if ctx.Err() == nil {
		s.swept = true
	}
	s.m.storage.Reset()
	for label, b := range bytes {
		s.m.storage.WithLabelValues(label).Set(b)
	}
	s.m.lag.Set(lag)
	s.m.duration.Observe(time.Since(began).Seconds())
	return errors.Join(errs...)
}

// sizesToRead returns which of the tenants without a retention need their partition's size read, with the
// partitions' write counters, and puts the last figure of the others in sizes. A partition's size changes only
// by rows written into it and by vacuums, which PostgreSQL counts per partition (its statistics, a hash lookup
// each): a partition whose counters are the same as at its last read keeps its figure, and only the others are
// read, since opening a relation to read its size (pg_total_relation_size) costs PostgreSQL some 0.15–0.5 ms per
// partition, more while DDL churns its caches. A sweep read every size each minute, 3–6 s of PostgreSQL's CPU at
// 10,000 tenants, and the creations running meanwhile slowed by a third. A partition never read by this replica
// is read, at most FirstReads of them per sweep after the first. The counters reach the statistics within about a
// second of a commit (longer while PostgreSQL is very busy), so a figure can lag a write by one sweep. When the
// counters cannot be read, every size is read.
func (s *Sweeper) sizesToRead(ctx context.Context, ids []uuid.UUID, sizes map[uuid.UUID]float64) ([]uuid.UUID, map[uuid.UUID]string, error) {
	writes := make(map[uuid.UUID]string, len(ids))
	for chunk := range slices.Chunk(ids, sweepChunk) {
		if err := s.readWrites(ctx, chunk, writes); err != nil {
			return ids, nil, err
		}
	}
	var read []uuid.UUID
	first := 0
	for _, id := range ids {
		w, exists := writes[id]
		last, seen := s.last[id]
		switch {
		case !exists:
			sizes[id] = 0 // the partition is gone: its tenant was deleted meanwhile
		case seen && last.writes == w:
			sizes[id] = last.size
		case !seen && s.swept && first >= s.opts.FirstReads:
			// read at a later sweep
		default:
			if !seen {
				first++
			}
			read = append(read, id)
		}
	}
	return read, writes, nil
}

// readWrites reads into writes, in one statement, the counters of what was written into each tenant's partition:
// rows inserted, updated and deleted, vacuums, and its live rows (which a TRUNCATE sets to 0); a partition that does
// not exist is left out.
func (s *Sweeper) readWrites(ctx context.Context, ids []uuid.UUID, writes map[uuid.UUID]string) error {
	names, byName := partitionNames(ids)
	rows, err := s.db.DB.QueryContext(ctx, `SELECT n, concat_ws(',', pg_stat_get_tuples_inserted(o), pg_stat_get_tuples_updated(o),
		pg_stat_get_tuples_deleted(o), pg_stat_get_vacuum_count(o), pg_stat_get_autovacuum_count(o), pg_stat_get_live_tuples(o))
		FROM (SELECT n, to_regclass(n) AS o FROM unnest($1::text[]) AS n) p WHERE o IS NOT NULL`,
		pgx.QueryExecModeSimpleProtocol, arrayLiteral(names))
	if err != nil {
		return fmt.Errorf("retention: partitions' write counters: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var name, w string
		if err := rows.Scan(&name, &w); err != nil {
			return fmt.Errorf("retention: partitions' write counters: %w", err)
		}
		writes[byName[name]] = w
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("retention: partitions' write counters: %w", err)
	}
	return nil
}

// partitionNames returns the names of the tenants' partitions, and the tenant of each name.
func partitionNames(ids []uuid.UUID) ([]string, map[string]uuid.UUID) {
	names := make([]string, len(ids))
	byName := make(map[string]uuid.UUID, len(ids))
	for i, id := range ids {
		names[i] = PartitionName(id)
		byName[names[i]] = id
	}
	return names, byName
}

// readSizes reads the sizes of the tenants' partitions in one statement into sizes: 0 for a partition gone (its
// tenant deleted meanwhile), -1 for all of them when a partition's lock could not be had in time (the sweep
// passes them over until the next one).
func (s *Sweeper) readSizes(ctx context.Context, ids []uuid.UUID, sizes map[uuid.UUID]float64) error {
	names, byName := partitionNames(ids)
	got := make(map[uuid.UUID]float64, len(ids))
	err := s.bounded(ctx, func(tx *sql.Tx) error {
		// Partition names are letters, digits and underscores: the array literal needs no quoting.
		rows, err := tx.QueryContext(ctx, `SELECT n, pg_total_relation_size(to_regclass(n)) FROM unnest($1::text[]) AS n`,
			pgx.QueryExecModeSimpleProtocol, arrayLiteral(names))
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var name string
			var b *int64
			if err := rows.Scan(&name, &b); err != nil {
				return err
			}
			if b != nil {
				got[byName[name]] = float64(*b)
			}
		}
		return rows.Err()
	})
	if err != nil {
		if s.lockedOut("messages", len(ids), err) {
			for _, id := range ids {
				sizes[id] = -1
			}
			return nil
		}
		return fmt.Errorf("retention: partition sizes: %w", err)
	}
	for _, id := range ids {
		sizes[id] = got[id] // 0 when the partition is gone
	}
	return nil
}

// expireDeadLetters deletes the tenants' dead letters older than DeadLetters, in batches of at most Batch rows
// over all of them, pausing between batches as deleteBatches does.
func (s *Sweeper) expireDeadLetters(ctx context.Context, ids []uuid.UUID) error {
	q := `DELETE FROM dead_letters WHERE ctid = ANY(ARRAY(SELECT ctid FROM dead_letters WHERE tenant_id = ANY($2::uuid[])
		AND dead_lettered_at < now() - make_interval(secs => $1) LIMIT ` + strconv.Itoa(s.opts.Batch) + `)) RETURNING tenant_id`
	for {
		began := time.Now()
		var deleted []uuid.UUID
		err := s.bounded(ctx, func(tx *sql.Tx) error {
			rows, err := tx.QueryContext(ctx, q, pgx.QueryExecModeSimpleProtocol, s.opts.DeadLetters.Seconds(), uuidArray(ids))
			if err != nil {
				return err
			}
			defer rows.Close()
			for rows.Next() {
				var id uuid.UUID
				if err := rows.Scan(&id); err != nil {
					return err
				}
				deleted = append(deleted, id)
			}
			return rows.Err()
		})
		if err != nil {
			if s.lockedOut("dead_letters", len(ids), err) {
				return nil
			}
			return fmt.Errorf("retention: dead letters: %w", err)
		}
		for _, id := range deleted {
			s.m.deleted.WithLabelValues(s.m.tenant(id), "dead_letters").Inc()
		}
		if len(deleted) < s.opts.Batch {
			return nil
		}
		if err := s.pause(ctx, time.Since(began)); err != nil {
			return err
		}
	}
}

// sweepTenant deletes the expired messages of a tenant with a retention; it returns how far past its age the
// oldest expired message left is (0 when none is) and the partition's size in bytes (-1 when it could not be
// read for a lock). A tenant deleted meanwhile (its partition gone) is no error, nor is a partition locked
// beyond sweepLockTimeout: it is passed over until the next sweep.
func (s *Sweeper) sweepTenant(ctx context.Context, t events.Tenant) (lag, size float64, err error) {
	part := partitionIdent(t.ID)
	// The tenant_id condition, always true in its partition, lets the planner walk the (tenant_id, created_at,
	// id) index in order.
	tenant := ` WHERE tenant_id = ` + tenantLiteral(t.ID)
	age := maxAge(t, s.opts.Default)
	if age > 0 {
		// ctid = ANY(ARRAY(...)) is a TID scan of the rows the index found; the subquery walks the index from
		// its oldest end, so that each batch reads only what it deletes.
		q := `DELETE FROM ` + part + ` WHERE ctid = ANY(ARRAY(SELECT ctid FROM ` + part +
			tenant + ` AND created_at < now() - make_interval(secs => $1) ORDER BY created_at, id LIMIT ` + strconv.Itoa(s.opts.Batch) + `))`
		n, err := s.deleteBatches(ctx, q, float64(age))
		s.m.deleted.WithLabelValues(s.m.tenant(t.ID), "messages").Add(float64(n))
		if err != nil && !s.passedOver(t.ID, "messages", err) {
			return 0, 0, s.gone(t.ID, err)
		}
	}
	// What is left: the oldest message (for the lag, also of a tenant passed over) and the partition's size.
	var oldest *time.Time
	var now time.Time
	var b *int64
	oldestSQL := `NULL::timestamptz`
	if age > 0 {
		oldestSQL = `(SELECT created_at FROM ` + part + tenant + ` ORDER BY created_at, id LIMIT 1)`
	}
	err = s.bounded(ctx, func(tx *sql.Tx) error {
		return tx.QueryRowContext(ctx, `SELECT `+oldestSQL+`, now(), pg_total_relation_size(to_regclass($1::text))`,
			pgx.QueryExecModeSimpleProtocol, PartitionName(t.ID)).Scan(&oldest, &now, &b)
	})
	if err != nil {
		if s.passedOver(t.ID, "messages", err) {
			return 0, -1, nil
		}
		return 0, 0, s.gone(t.ID, err)
	}
	if oldest != nil {
		lag = max(0, now.Sub(oldest.Add(time.Duration(age)*time.Second)).Seconds())
	}
	if b != nil {
		size = float64(*b)
	}
	return lag, size, nil
}

// bounded runs fn in a transaction whose statements wait at most sweepLockTimeout for a lock.
func (s *Sweeper) bounded(ctx context.Context, fn func(tx *sql.Tx) error) error {
	tx, err := s.db.DB.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback() }()
	if _, err := tx.ExecContext(ctx, `SET LOCAL lock_timeout = '`+sweepLockTimeout+`'`); err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		return err
	}
	return tx.Commit()
}

// passedOver reports whether err is a lock wait that ran out (the tenant's table is held by someone else), and
// if so counts and logs it: the tenant is swept again next time.
func (s *Sweeper) passedOver(id uuid.UUID, table string, err error) bool {
	if !lockTimedOut(err) {
		return false
	}
	s.m.locked.WithLabelValues(table).Inc()
	s.log.Info("tenant's table locked by another session; its sweep waits for the next one",
		zap.String("tenant_id", id.String()), zap.String("table", table))
	return true
}

// lockedOut reports whether err is a lock wait that ran out in a statement covering n tenants, and if so counts
// and logs it: those tenants are swept again next time.
func (s *Sweeper) lockedOut(table string, n int, err error) bool {
	if !lockTimedOut(err) {
		return false
	}
	s.m.locked.WithLabelValues(table).Inc()
	s.log.Info("a table locked by another session; these tenants' sweep waits for the next one",
		zap.String("table", table), zap.Int("tenants", n))
	return true
}

// lockTimedOut reports whether err is a statement's lock wait that ran out (lock_timeout).
func lockTimedOut(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == lockNotAvailable
}

// deleteBatches runs q (one bounded delete, its own transaction with a bounded lock wait) until it deletes less
// than a batch, pausing between batches to keep to Share.
func (s *Sweeper) deleteBatches(ctx context.Context, q string, ageSeconds float64) (int64, error) {
	var total int64
	for {
		began := time.Now()
		var n int64
		err := s.bounded(ctx, func(tx *sql.Tx) error {
			res, err := tx.ExecContext(ctx, q, pgx.QueryExecModeSimpleProtocol, ageSeconds)
			if err != nil {
				return err
			}
			n, _ = res.RowsAffected()
			return nil
		})
		if err != nil {
			return total, err
		}
		total += n
		if n < int64(s.opts.Batch) {
			return total, nil
		}
		if err := s.pause(ctx, time.Since(began)); err != nil {
			return total, err
		}
	}
}

// pause waits after a batch that took d as long as keeps the deletes to Share of the sweep's time.
func (s *Sweeper) pause(ctx context.Context, d time.Duration) error {
	if sh := s.opts.Share; sh > 0 && sh < 1 {
		return sleepCtx(ctx, time.Duration(float64(d)*(1/sh-1)))
	}
	return ctx.Err()
}

// gone turns the error of a tenant whose partition was dropped meanwhile (undefined_table) into nil.
func (s *Sweeper) gone(id uuid.UUID, err error) error {
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == "42P01" {
		s.log.Debug("tenant deleted during its sweep", zap.String("tenant_id", id.String()))
		return nil
	}
	return fmt.Errorf("retention: messages of tenant %s: %w", id, err)
}

// RetentionMetrics are the retention sweeper's series.
type RetentionMetrics struct {
	perTenant bool
	deleted   *prometheus.CounterVec
	duration  prometheus.Histogram
	lag       prometheus.Gauge
	storage   *prometheus.GaugeVec
	locked    *prometheus.CounterVec
}

// NewRetentionMetrics registers the retention sweeper's series on reg; with perTenant false the tenant label is "all".
func NewRetentionMetrics(reg prometheus.Registerer, perTenant bool) *RetentionMetrics {
	m := &RetentionMetrics{perTenant: perTenant,
		deleted: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: metrics.Namespace, Name: "retention_deleted_total",
			Help: "Rows deleted by the retention sweep because they expired, by tenant and table (messages, dead_letters)."}, []string{"tenant", "table"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: metrics.Namespace, Name: "retention_sweep_duration_seconds",
			Help:    "Duration of one retention sweep of this replica's tenants.",
			Buckets: []float64{.01, .05, .1, .5, 1, 5, 10, 30, 60, 300}}),
		lag: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: metrics.Namespace, Name: "retention_lag_seconds",
			Help: "After the last sweep, how far past its age the oldest expired message not yet deleted is, over this replica's tenants (0: none left)."}),
		storage: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: metrics.Namespace, Name: "tenant_storage_bytes",
			Help: "Size of the tenant's partition with its indexes and TOAST, refreshed by each retention sweep, for the tenants this replica owns."}, []string{"tenant"}),
		locked: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: metrics.Namespace, Name: "retention_locked_total",
			Help: "Tenants' sweeps passed over until the next sweep because another session held their table (messages or dead_letters) longer than the sweep waits for a lock."}, []string{"table"}),
	}
	reg.MustRegister(m.deleted, m.duration, m.lag, m.storage, m.locked)
	return m
}

func (m *RetentionMetrics) tenant(id uuid.UUID) string { return metrics.TenantLabel(m.perTenant, id) }

func (m *RetentionMetrics) forget(id uuid.UUID) {
	if m.perTenant {
		m.deleted.DeleteLabelValues(id.String(), "messages")
		m.deleted.DeleteLabelValues(id.String(), "dead_letters")
		m.storage.DeleteLabelValues(id.String())
	}
}
