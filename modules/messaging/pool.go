package messaging

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/uptrace/bun"
	"go.uber.org/fx"
	"go.uber.org/zap"

	"github.com/acme/msgsvc/platform/events"
	"github.com/acme/msgsvc/platform/metrics"
	"github.com/acme/msgsvc/platform/periodic"
)

// dropLockTimeout bounds how long a batch drop waits for its lock on messages: inserts and reads queue behind
// the waiting drop, so the wait is kept short and the batch retried later.
const dropLockTimeout = 200 * time.Millisecond

// dropStatementTimeout bounds each statement of a batch drop's transaction, which does not end with the caller's
// context (DropDue): a drop of a batch took under a second at 7,900 partitions.
const dropStatementTimeout = time.Minute

// poolLockKey is the transaction-level advisory lock a refill takes first: one replica refills at a time, so
// that replicas refilling together do not overfill the pool (correctness does not depend on it: every refill
// makes fresh ids, and a claim deletes its row).
const poolLockKey = 0x6d7367706c // "msgpl"

// Pool keeps partitions of messages attached ahead of time, each for a tenant id allotted in advance, and
// drops deleted tenants' partitions in the background. It implements events.PartitionPool.
//
// Refill: one transaction takes poolLockKey (or leaves the refill to the replica holding it), counts the pool
// and attaches up to PoolOptions.Batch new partitions, inserting their rows in partition_pool; DDL is
// transactional in PostgreSQL, so a replica killed mid-refill leaves no partition and no row. Claim: a
// creation marks the oldest unclaimed row it can lock (FOR UPDATE SKIP LOCKED) with a token and a lease, in a
// statement of its own; it declares its queues with no transaction open, then deletes the row (Take, only
// while the token is still there) in the transaction that inserts the tenant.
//
// Drops: the transaction that deletes a tenant's row inserts a row in partition_drops, due after DueAfter
// (the consumers' drain) or as soon as the deleting replica saw every consumer of the tenant stop (Due).
// Every replica runs the dropper; one at a time (the detach advisory lock) takes up to DropBatch due rows and
// drops their partitions with one DROP TABLE, deleting the rows in the same transaction. A restart resumes what
// is pending.
type Pool struct {
	db   *bun.DB
	opt  PoolOptions
	log  *zap.Logger
	kick chan struct{} // a claim was made: refill

	claiming  periodic.Burst // this replica's claims: the refill and the catalogue vacuum make way for them
	dropping  periodic.Burst // this replica's drops of partitions: the catalogue vacuum makes way for them
	lastReady atomic.Int64   // the pool's size at the last refill's count
	churn     atomic.Int64   // partitions this replica attached or dropped since its last catalogue vacuum
	due       chan struct{}  // a drop became due: drop

	vacuumDenied bool // the role may not vacuum the catalogue: autovacuum does (the refill loop's only)

	ready   prometheus.Gauge
	claims  *prometheus.CounterVec
	pending prometheus.Gauge
	dropped prometheus.Counter
	vacuums prometheus.Counter
}

// PoolOptions configures a Pool.
type PoolOptions struct {
	// Size is how many ready partitions the pool keeps (PARTITION_POOL_SIZE); 0: no pool, every claim fails.
	Size int
	// Batch is how many partitions one refill transaction attaches (PARTITION_POOL_BATCH).
	Batch int
	// DropBatch is how many partitions one dropper run detaches and drops (PARTITION_DROP_BATCH).
	DropBatch int
	// DueAfter is how long after a tenant's deletion its partition is dropped when no replica said sooner
	// that its consumers drained.
	DueAfter time.Duration
	// Interval is how often the pool's size and the due drops are checked without a kick (other replicas'
	// claims, drops due by time).
	Interval time.Duration
	// ClaimLease is how long a claim holds an id for its creation (DefaultClaimLease when 0): far longer than
	// a creation takes, so that it lapses only when the creation's replica died between claim and take.
	ClaimLease time.Duration
	// VacuumAfter is how many partitions this replica attaches or drops before it vacuums the catalogue tables
	// they change, once the pool is full and quiet (PARTITION_CATALOGUE_VACUUM_AFTER; 0: never). See
	// vacuumIfDue.
	VacuumAfter int
}

// DefaultClaimLease is a claim's lease when PoolOptions.ClaimLease is 0. A creation holds its claim across the
// queues' declare (at most broker.AnswerTimeout, 10 s) and its transaction.
const DefaultClaimLease = 2 * time.Minute

// NewPool returns a Pool; Run keeps it filled and drops what is due.
func NewPool(db *bun.DB, opt PoolOptions, reg prometheus.Registerer, log *zap.Logger) *Pool {
	if opt.Batch < 1 {
		opt.Batch = 1
	}
	if opt.DropBatch < 1 {
		opt.DropBatch = 1
	}
	if opt.Interval <= 0 {
		opt.Interval = 2 * time.Second
	}
	if opt.ClaimLease <= 0 {
		opt.ClaimLease = DefaultClaimLease
	}
	p := &Pool{db: db, opt: opt, log: log.Named("partition_pool"), kick: make(chan struct{}, 1), due: make(chan struct{}, 1),
		ready: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: metrics.Namespace, Name: "partition_pool_ready",
			Help: "Partitions attached ahead of time and not taken by a creation yet, at this replica's last look."}),
		claims: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: metrics.Namespace, Name: "partition_pool_claims_total",
			Help: "Tenant creations by where their partition came from: pool (claimed) or inline (attached by the creation, the pool being empty)."}, []string{"source"}),
		pending: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: metrics.Namespace, Name: "partition_drops_pending",
			Help: "Deleted tenants' partitions waiting to be dropped, at this replica's last look."}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{Namespace: metrics.Namespace, Name: "partition_drops_total",
			Help: "Deleted tenants' partitions dropped in the background by this replica."}),
		vacuums: prometheus.NewCounter(prometheus.CounterOpts{Namespace: metrics.Namespace, Name: "partition_catalogue_vacuums_total",
			Help: "Vacuums of PostgreSQL's catalogue tables this replica ran after attaching or dropping PARTITION_CATALOGUE_VACUUM_AFTER partitions."}),
	}
	if reg != nil {
		reg.MustRegister(p.ready, p.claims, p.pending, p.dropped, p.vacuums)
	}
	return p
}

// Claim implements events.PartitionPool: one statement, committed on its own, marks the oldest unclaimed row
// (or one whose claim lapsed) with a fresh token for ClaimLease.
func (p *Pool) Claim(ctx context.Context) (events.Claim, bool, error) {
	if p.opt.Size == 0 {
		return events.Claim{}, false, nil
	}
	c := events.Claim{Token: uuid.New()}
	err := p.db.QueryRowContext(ctx, `UPDATE partition_pool SET claim = ?, claimed_until = now() + ? * interval '1 millisecond'
		WHERE tenant_id = (SELECT tenant_id FROM partition_pool WHERE claimed_until IS NULL OR claimed_until < now()
			ORDER BY made_at LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING tenant_id`, c.Token, p.opt.ClaimLease.Milliseconds()).Scan(&c.ID)
	p.claiming.Mark()
	p.lastReady.Add(-1)
	p.wake(p.kick)
	if errors.Is(err, sql.ErrNoRows) {
		return events.Claim{}, false, nil
	}
	if err != nil {
		return events.Claim{}, false, fmt.Errorf("claim a pooled partition: %w", err)
	}
	return c, true, nil
}

// Take implements events.PartitionPool.
func (p *Pool) Take(ctx context.Context, tx bun.IDB, c events.Claim) error {
	res, err := tx.ExecContext(ctx, "DELETE FROM partition_pool WHERE tenant_id = ? AND claim = ?", c.ID, c.Token)
	if err != nil {
		return fmt.Errorf("take the claimed partition: %w", err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return fmt.Errorf("take the claimed partition: %w", err)
	} else if n == 0 {
		return fmt.Errorf("partition of tenant %s: %w", c.ID, events.ErrClaimLost)
	}
	return nil
}

// Release implements events.PartitionPool.
func (p *Pool) Release(ctx context.Context, c events.Claim) error {
	if _, err := p.db.ExecContext(ctx, "UPDATE partition_pool SET claim = NULL, claimed_until = NULL WHERE tenant_id = ? AND claim = ?",
		c.ID, c.Token); err != nil {
		return fmt.Errorf("release the claimed partition of tenant %s: %w", c.ID, err)
	}
	return nil
}

// created counts a creation by where its partition came from.
func (p *Pool) created(pooled bool) {
	if pooled {
		p.claims.WithLabelValues("pool").Inc()
	} else {
		p.claims.WithLabelValues("inline").Inc()
	}
}

// ScheduleDrop implements events.PartitionPool.
func (p *Pool) ScheduleDrop(ctx context.Context, tx bun.IDB, id uuid.UUID) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO partition_drops (tenant_id, due_at) VALUES (?, now() + ?::interval)
		ON CONFLICT (tenant_id) DO NOTHING`, id, fmt.Sprintf("%d microseconds", p.opt.DueAfter.Microseconds()))
	if err != nil {
		return fmt.Errorf("schedule the drop of partition %s: %w", PartitionName(id), err)
	}
	return nil
}

// Due makes the tenant's partition due for dropping now (its consumers drained everywhere) and wakes the
// dropper. A tenant whose deletion scheduled no drop (an older replica) gets its row here.
func (p *Pool) Due(ctx context.Context, id uuid.UUID) error {
	_, err := p.db.ExecContext(ctx, `INSERT INTO partition_drops (tenant_id, due_at) VALUES (?, now())
		ON CONFLICT (tenant_id) DO UPDATE SET due_at = least(partition_drops.due_at, now())`, id)
	if err != nil {
		return fmt.Errorf("make the drop of partition %s due: %w", PartitionName(id), err)
	}
	p.wake(p.due)
	return nil
}

func (p *Pool) wake(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// Refill runs one refill transaction and returns how many partitions it attached: 0 when the pool is full,
// off, or another replica is refilling.
func (p *Pool) Refill(ctx context.Context) (int, error) {
	if p.opt.Size == 0 {
		return 0, nil
	}
	made, ready := 0, -1
	err := p.db.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		var locked bool
		if err := tx.QueryRowContext(ctx, "SELECT pg_try_advisory_xact_lock(?)", poolLockKey).Scan(&locked); err != nil {
			return fmt.Errorf("lock the partition pool: %w", err)
		}
		if !locked {
			return nil
		}
		if err := tx.QueryRowContext(ctx, "SELECT count(*) FROM partition_pool").Scan(&ready); err != nil {
			return fmt.Errorf("count the partition pool: %w", err)
		}
		k := min(p.opt.Batch, p.opt.Size-ready)
		if k <= 0 {
			return nil
		}
		ids := make([]uuid.UUID, k)
		for i := range ids {
			ids[i] = uuid.Must(uuid.NewV7())
			if err := CreatePartition(ctx, tx, ids[i]); err != nil {
				return err
			}
		}
		if _, err := tx.ExecContext(ctx, "INSERT INTO partition_pool (tenant_id) SELECT unnest(?::uuid[])", uuidArray(ids)); err != nil {
			return fmt.Errorf("insert pooled partitions: %w", err)
		}
		made = k
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("refill the partition pool: %w", err)
	}
	p.churn.Add(int64(made))
	if ready >= 0 {
		p.ready.Set(float64(ready + made))
		p.lastReady.Store(int64(ready + made))
	}
	return made, nil
}

// DropDue drops up to DropBatch partitions whose drop is due and returns how many; 0 when none is due or
// another replica is dropping.
func (p *Pool) DropDue(ctx context.Context) (int, error) {
	detachMu.Lock()
	defer detachMu.Unlock()
	conn, err := p.db.Conn(ctx)
	if err != nil {
		return 0, fmt.Errorf("drop partitions: %w", err)
	}
	defer conn.Close()
	var locked bool
	if err := conn.QueryRowContext(ctx, "SELECT pg_try_advisory_lock(?)", detachLockKey).Scan(&locked); err != nil {
		return 0, fmt.Errorf("drop partitions: lock: %w", err)
	}
	if !locked {
		return 0, nil
	}
	defer func() {
		_, _ = conn.ExecContext(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock(?)", detachLockKey)
	}()
	var pending int
	if err := conn.QueryRowContext(ctx, "SELECT count(*) FROM partition_drops").Scan(&pending); err != nil {
		return 0, fmt.Errorf("count pending drops: %w", err)
	}
	p.pending.Set(float64(pending))
	var ids []uuid.UUID
	rows, err := conn.QueryContext(ctx, "SELECT tenant_id FROM partition_drops WHERE due_at <= now() ORDER BY due_at LIMIT ?", p.opt.DropBatch)
	if err != nil {
		return 0, fmt.Errorf("read due drops: %w", err)
	}
	for rows.Next() {
		var id uuid.UUID
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return 0, fmt.Errorf("read due drops: %w", err)
		}
		ids = append(ids, id)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, fmt.Errorf("read due drops: %w", err)
	}
	if len(ids) == 0 {
		return 0, nil
	}
	// A concurrent detach that an older version left unfinished is finished first, so that the drop never
	// depends on how a PostgreSQL version treats a partition pending detach (15 drops it as it is: checked by
	// hand; TestADropFinishesADetachLeftPending passes either way). One statement finds them for the batch: one
	// per partition was the dropper's largest share of statements (and the dropper a quarter of the service's CPU
	// while 1,000 tenants were deleted at 10,000).
	detaching, err := pendingDetaches(ctx, conn, ids)
	if err != nil {
		return 0, fmt.Errorf("drop partitions: %w", err)
	}
	var errs []error
	var ready []uuid.UUID
	for _, id := range ids {
		if detaching[id] {
			if err := finishDetach(ctx, conn, id); err != nil {
				errs = append(errs, err)
				continue
			}
		}
		ready = append(ready, id)
	}
	if len(ready) == 0 {
		return 0, errors.Join(errs...)
	}
	names := make([]string, len(ready))
	for i, id := range ready {
		names[i] = partitionIdent(id)
	}
	// One DROP TABLE for the batch: one ACCESS EXCLUSIVE lock on messages and one invalidation of its partition
	// descriptor, where a DETACH … CONCURRENTLY per partition costs two invalidations each (after each, every
	// connection's next query on messages rebuilds the descriptor: 0.25 s at 7,900 partitions here) and
	// 10–20 times the time per partition. The lock holds every insert and read on messages while the statement
	// runs (5–7 ms a partition at 7,900 partitions, 1–1.6 ms at 1,000, measured on this 2-core machine under
	// load) and while it waits for it, which dropLockTimeout bounds: then the batch is tried again later.
	//
	// The transaction does not end with ctx: database/sql rolls back a transaction whose context ended from
	// another goroutine and, a connection it discards, closes the *sql.Conn there, which raced the deferred
	// unlock on the same Conn (a nil driver connection: a panic at a shutdown in CI). The lock timeout and a
	// statement timeout bound it instead.
	txCtx := context.WithoutCancel(ctx)
	tx, err := conn.BeginTx(txCtx, nil)
	if err != nil {
		return 0, errors.Join(append(errs, fmt.Errorf("drop partitions: %w", err))...)
	}
	defer func() { _ = tx.Rollback() }()
	for _, set := range []string{
		fmt.Sprintf("SET LOCAL lock_timeout = '%dms'", dropLockTimeout.Milliseconds()),
		fmt.Sprintf("SET LOCAL statement_timeout = '%dms'", dropStatementTimeout.Milliseconds()),
	} {
		if _, err := tx.ExecContext(txCtx, set); err != nil {
			return 0, errors.Join(append(errs, fmt.Errorf("drop partitions: %w", err))...)
		}
	}
	if _, err := tx.ExecContext(txCtx, "DROP TABLE IF EXISTS "+strings.Join(names, ", ")); err != nil {
		return 0, errors.Join(append(errs, fmt.Errorf("drop %d partitions of deleted tenants: %w", len(names), err))...)
	}
	if _, err := tx.ExecContext(txCtx, "DELETE FROM partition_drops WHERE tenant_id = ANY(?::uuid[])", uuidArray(ready)); err != nil {
		return 0, errors.Join(append(errs, fmt.Errorf("forget dropped partitions: %w", err))...)
	}
	if err := tx.Commit(); err != nil {
		return 0, errors.Join(append(errs, fmt.Errorf("drop %d partitions of deleted tenants: commit: %w", len(names), err))...)
	}
	detached := ready
	p.churn.Add(int64(len(detached)))
	p.dropping.Mark()
	p.dropped.Add(float64(len(detached)))
	p.pending.Set(float64(pending - len(detached)))
	return len(detached), errors.Join(errs...)
}

// Run keeps the pool filled and drops what is due until ctx ends: a refill or drop run follows another at
// once while there is work, and otherwise waits for a kick (a claim, a drop made due) or the interval.
func (p *Pool) Run(ctx context.Context) {
	refill, drop := make(chan struct{}, 1), make(chan struct{}, 1)
	done := make(chan struct{}, 2)
	loop := func(work func(context.Context) (int, error), kick, self chan struct{}, what string) {
		defer func() { done <- struct{}{} }()
		t := time.NewTimer(0)
		defer t.Stop()
		var locked lockedOut
		for {
			select {
			case <-ctx.Done():
				return
			case <-kick:
			case <-self:
			case <-t.C:
			}
			rctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
			n, err := work(rctx)
			cancel()
			if err != nil && ctx.Err() == nil {
				locked.log(p.log, what, err, time.Now())
			} else if err == nil {
				locked = lockedOut{}
			}
			if n > 0 && err == nil {
				p.wake(self) // more may be needed: go on at once
			}
			t.Reset(p.opt.Interval)
		}
	}
	// The refill yields to a burst of creations (refillYield).
	yielding := func(ctx context.Context) (int, error) {
		wait := refillYield(p.claiming.QuietIn(), p.lastReady.Load())
		if wait > 0 {
			if sleepCtx(ctx, wait) != nil {
				return 0, nil
			}
			return 1, nil // look again at once
		}
		n, err := p.Refill(ctx)
		if n == 0 && err == nil {
			err = p.vacuumIfDue(ctx)
		}
		return n, err
	}
	go loop(yielding, p.kick, refill, "partition pool refill")
	go loop(p.DropDue, p.due, drop, "dropping deleted tenants' partitions")
	<-done
	<-done
}

// lockedOut tells a background loop's lock waits that ran out (dropLockTimeout: inserts and reads busy on
// messages while 1,000 tenants were deleted, several a second) from its failures: the first of a series is said
// at info, and a warning only once the series lasted lockedOutWarn (then every lockedOutWarn), where each retry
// used to log a warning.
type lockedOut struct{ since, said time.Time }

// lockedOutWarn is how long a background loop's lock waits keep running out before it warns.
const lockedOutWarn = time.Minute

// log says err, a failure of the loop doing what at now.
func (l *lockedOut) log(log *zap.Logger, what string, err error, now time.Time) {
	if !lockTimedOut(err) {
		*l = lockedOut{}
		log.Warn(what+" failed; retrying", zap.Error(err))
		return
	}
	switch {
	case l.since.IsZero():
		l.since, l.said = now, now
		log.Info(what+": its wait for a lock ran out (the table is busy); retrying", zap.Error(err))
	case now.Sub(l.said) >= lockedOutWarn:
		l.said = now
		log.Warn(what+": its waits for a lock keep running out; retrying", zap.Duration("for", now.Sub(l.since)), zap.Error(err))
	}
}

// refillYield is how long the refill waits before it looks again, quietIn before the burst of this replica's
// claims ends (periodic.Burst.QuietIn), with ready partitions left in the pool (at its last count, less the
// claims since); 0: refill now. During a burst of creations (a claim within periodic.BurstQuiet) it waits while
// the pool holds any partition. An attach costs
// PostgreSQL about as much in the refill as in a creation (each rebuilds the partition descriptor of messages:
// tens of milliseconds of CPU at 10,000 partitions), so a refill during the burst would take from the creations
// the CPU the pool exists to spare them, and it cannot keep up with a burst anyway (100 attaches took about 4 s
// at 10,000 partitions, while creations from the pool ran at 250–300 a second). It tops the pool up once the
// burst ends, or once the pool ran out. Until 2026-12-06 it started when one refill's worth was left: at 10,000
// tenants that refill ran beside the last hundred creations from the pool, and the bench's last block of 1,000
// creations went at 0.57–0.69 × the first, for a head start of a few tenths of a second on a refill of seconds.
func refillYield(quietIn time.Duration, ready int64) time.Duration {
	if quietIn > 0 && ready > 0 {
		return quietIn
	}
	return 0
}

// catalogueTables are the catalogue tables whose rows attaching or dropping a partition inserts or deletes: per
// partition 5 in pg_class (the table, its TOAST table and index, its two indexes), some 27 in pg_attribute, and
// its types, dependencies, constraints, indexes, inheritance and column default.
const catalogueTables = "pg_catalog.pg_class, pg_catalog.pg_attribute, pg_catalog.pg_type, pg_catalog.pg_depend, " +
	"pg_catalog.pg_constraint, pg_catalog.pg_index, pg_catalog.pg_inherits, pg_catalog.pg_attrdef"

// vacuumIfDue vacuums and analyzes the catalogue tables once this replica attached or dropped VacuumAfter
// partitions since it last did, when no claim or drop of its own came within periodic.BurstQuiet (the pool is full and
// quiet: it runs only when a refill found nothing to do).
//
// Why: autovacuum takes up the catalogue tables once their changed rows pass a share of their size (10 % to
// analyze, 20 % to vacuum), at the next round of its launcher, a minute apart per database. After the pool was
// filled with 10,000 partitions, that round came seconds into the burst of creations the pool exists for:
// some 1.2 s of PostgreSQL's CPU on pg_attribute, pg_class, pg_constraint and pg_depend, and that block of 1,000
// creations ran at 0.74–0.88 × the first (bench runs of 2026-12-07, caught by a pg_stat_activity sampler). Done
// here, at the end of the fill, the work is the same, at a moment the service knows to be quiet, and
// autovacuum finds nothing left to do. A role that is neither a superuser nor the database's owner may not
// vacuum the catalogue: then it is left to autovacuum, said once.
func (p *Pool) vacuumIfDue(ctx context.Context) error {
	churn := p.churn.Load()
	if p.opt.VacuumAfter <= 0 || churn < int64(p.opt.VacuumAfter) || p.vacuumDenied {
		return nil
	}
	if p.claiming.Busy() || p.dropping.Busy() {
		return nil
	}
	var allowed bool
	if err := p.db.QueryRowContext(ctx, `SELECT r.rolsuper OR d.datdba = r.oid FROM pg_roles r, pg_database d
		WHERE r.rolname = current_user AND d.datname = current_database()`).Scan(&allowed); err != nil {
		return fmt.Errorf("vacuum the catalogue: may this role: %w", err)
	}
	if !allowed {
		p.vacuumDenied = true
		p.log.Info("the database role is neither a superuser nor the database's owner, so it may not vacuum the catalogue " +
			"after the partition pool's attaches and drops; autovacuum does it, at its own time")
		return nil
	}
	began := time.Now()
	// SKIP_LOCKED: a table another vacuum holds (autovacuum's own, an operator's) is left to it rather than
	// waited for, so the refill loop never waits on one. TRUNCATE false: no ACCESS EXCLUSIVE lock on a catalogue
	// table to cut its empty tail, which every query's catalogue lookups would queue behind; the next partitions
	// reuse that space.
	if _, err := p.db.ExecContext(ctx, "VACUUM (ANALYZE, SKIP_LOCKED, TRUNCATE false) "+catalogueTables); err != nil {
		return fmt.Errorf("vacuum the catalogue: %w", err)
	}
	p.churn.Add(-churn)
	p.vacuums.Inc()
	p.log.Info("vacuumed the catalogue tables after the partition pool's attaches and drops",
		zap.Int64("partitions", churn), zap.Duration("took", time.Since(began)))
	return nil
}

// uuidArray renders ids as a PostgreSQL uuid[] literal (hex digits and dashes only).
func uuidArray(ids []uuid.UUID) string {
	s := make([]string, len(ids))
	for i, id := range ids {
		s[i] = id.String()
	}
	return arrayLiteral(s)
}

// arrayLiteral renders items as a PostgreSQL array literal; they must need no quoting (no comma, brace, quote,
// backslash or space: ids, partition names).
func arrayLiteral(items []string) string { return "{" + strings.Join(items, ",") + "}" }

// SubscribePartitions registers the partitions' part of the tenant lifecycle: a creation whose id did not come
// from the pool attaches its partition inside its transaction (the pool was empty or off); a deletion's
// partition becomes due for the background dropper once no replica consumes the tenant any more. The pool's
// refill and the dropper run with the lifecycle.
func SubscribePartitions(lc fx.Lifecycle, bus *events.Bus, pool *Pool, consumers Consumers) {
	events.Subscribe(bus, "messaging.partition", func(ctx context.Context, e events.TenantCreating) error {
		pool.created(e.PartitionReady)
		if e.PartitionReady {
			return nil
		}
		return CreatePartition(ctx, e.Tx, e.Tenant.ID)
	})
	events.Subscribe(bus, "messaging.partition", func(ctx context.Context, e events.TenantDeleted) error {
		if events.IsRemote(ctx) {
			return nil
		}
		// The replica that owns the tenant learns of the deletion through the relay and drains its consumer
		// after this replica's own consumer drained: a store it still runs must find the partition, or it
		// fails (and is retried or dead-lettered) for a tenant that is going anyway.
		consumers.AwaitNoConsumers(ctx, e.TenantID)
		return pool.Due(ctx, e.TenantID)
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	lc.Append(fx.Hook{
		OnStart: func(context.Context) error {
			go func() { defer close(done); pool.Run(ctx) }()
			return nil
		},
		OnStop: func(context.Context) error { cancel(); <-done; return nil },
	})
}
