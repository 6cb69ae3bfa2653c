package messaging

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/uptrace/bun"

	"github.com/acme/msgsvc/platform/metrics"
)

// Bounds of one grouped insert, and of a store that may join one (a larger store goes alone, at once).
const (
	maxStoreRows    = 2000
	maxStoreBytes   = 8 << 20
	maxGroupedRows  = 256
	maxGroupedBytes = 1 << 20
	// storeStmtBudget bounds a store that goes alone, from the moment it starts, unless the batcher is given
	// another bound (the consumers' retry budget; its caller's context may end it sooner): such a store holds a
	// connection of the shared pool, never a grouped insert's slot.
	storeStmtBudget = 30 * time.Second
	// groupLockTimeout and groupStmtTimeout bound a grouped insert, which serves several tenants, by the session
	// settings lock_timeout and statement_timeout of the connections it runs on: a lock on one tenant's partition
	// (a CREATE INDEX, an operator's transaction), or a partition that is slow, holds the others' stores that long
	// at most, and then the group is split.
	groupLockTimeout = 200 * time.Millisecond
	groupStmtTimeout = 2 * time.Second
	// maxAloneTenants is how many tenants may go alone before those not storing for a minute are forgotten (a
	// tenant deleted while its store failed would otherwise stay listed).
	maxAloneTenants = 1024
)

// storeBatcher is group commit for the consumers' inserts, across tenants: while maxRunning inserts run, the
// stores that come meanwhile, of any tenants, wait and then go together as one multi-row insert into the
// partitioned table (PostgreSQL routes each row to its tenant's partition). An idle service sends a store at
// once, alone, without a timer. Each statement costs PostgreSQL a round trip, a plan execution and a commit
// (a WAL flush where fsync is on) whatever its row count, so many tenants' deliveries of a few messages each
// cost as much as one tenant's batch.
//
// No tenant's store holds another's:
//   - A store too big to join a group (maxGroupedRows, maxGroupedBytes) goes alone, at once, so no tenant's
//     big batch holds the small ones back.
//   - The runner's statements (grouped, or one store when nothing else waits) run on their own small pool whose
//     sessions wait at most groupLockTimeout for a lock and run at most groupStmtTimeout. When such a statement
//     fails, for whatever reason, the group is split at once: every store in it goes alone, concurrently, each
//     bounded by its own caller's context (and alonePer), on the shared pool. So one tenant's locked or
//     slow partition, a refused value or a partition dropped by a deletion in flight fails or delays only that
//     tenant's stores; the others are stored a lock timeout later.
//   - A tenant whose store failed goes alone, one store at a time, until one succeeds: while its partition is
//     locked it never takes the grouped slot again, and it holds one connection of the shared pool, however
//     many workers it has. Its stores wait on its own turn, not on a shared queue. Tenants that go alone hold
//     at most aloneSlots connections together (half the pool), so that a lock on every partition at once (a
//     lock on messages itself) leaves the pool to reads, tenant changes and readiness.
type storeBatcher struct {
	db         *bun.DB // stores that go alone
	grouped    *sql.DB // the runner's statements: sessions with lock_timeout and statement_timeout
	maxRunning int
	alonePer   time.Duration // the longest a store that goes alone may take
	aloneSlots chan struct{} // connections that the stores of tenants that go alone may hold together
	perInsert  prometheus.Observer
	metrics    storeMetrics

	// linger is how long the runner waits, while stores come fast or after a grouped insert of several stores,
	// for more rows (lingerWant; 0: never); want and wake are that wait's (want under mu).
	linger time.Duration
	want   int
	wake   chan struct{}

	mu           sync.Mutex
	waiting      []*storeReq
	waitingRows  int
	waitingBytes int           // the waiting stores' payload bytes
	lastArrival  time.Time     // when the last store came
	gap          time.Duration // the stores' mean time apart, recent ones weighing most (an EWMA)
	running      int
	alone        map[uuid.UUID]*aloneTenant // tenants whose last store failed; they go alone until one succeeds
	conflicted   map[uuid.UUID]time.Time    // tenants whose rows were found already stored, and when (conflictMemory)
}

// storeMetrics are the batcher's series besides messages_per_insert.
type storeMetrics struct {
	split     prometheus.Counter // grouped inserts that failed and were split into stores that go alone
	alone     prometheus.Gauge   // tenants that go alone now
	conflicts prometheus.Counter // plain inserts that found a row already stored and ran again with ON CONFLICT
}

func newStoreMetrics() storeMetrics {
	return storeMetrics{
		split: prometheus.NewCounter(prometheus.CounterOpts{Namespace: metrics.Namespace, Name: "store_groups_split_total",
			Help: "Grouped inserts of the consumers that failed (a lock or statement timeout, an error) and were split: each store went alone."}),
		alone: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: metrics.Namespace, Name: "store_tenants_alone",
			Help: "Tenants whose last store failed: their stores go alone, one at a time, until one succeeds."}),
		conflicts: prometheus.NewCounter(prometheus.CounterOpts{Namespace: metrics.Namespace, Name: "store_conflicts_total",
			Help: "Inserts without ON CONFLICT that found a message already stored (a redelivery, a retried Idempotency-Key) and ran again with ON CONFLICT DO NOTHING; their tenants' rows go with it for a minute."}),
	}
}

type storeReq struct {
	tenantID uuid.UUID
	msgs     []Message
	bytes    int
	done     chan storeRes
}

type storeRes struct {
	inserted int64
	err      error
	alone    bool // not stored: go alone (the group failed, or the tenant goes alone)
}

// aloneTenant is the turn of a tenant that goes alone: one store at a time.
type aloneTenant struct {
	turn  chan struct{}
	since time.Time
}

// newStoreBatcher returns a batcher whose stores that go alone use db and take at most alonePer each
// (storeStmtBudget when 0), of which the tenants that go alone run at most aloneSlots at once, and whose
// runner's statements use grouped, a pool of at least maxRunning connections opened by openGroupedPool (db
// itself, unbounded, when nil).
func newStoreBatcher(db *bun.DB, grouped *sql.DB, maxRunning int, alonePer time.Duration, aloneSlots int,
	perInsert prometheus.Observer, m storeMetrics) *storeBatcher {
	if grouped == nil && db != nil {
		grouped = db.DB
	}
	if alonePer <= 0 {
		alonePer = storeStmtBudget
	}
	return &storeBatcher{db: db, grouped: grouped, maxRunning: max(maxRunning, 1), alonePer: alonePer, wake: make(chan struct{}, 1),
		aloneSlots: make(chan struct{}, max(aloneSlots, 1)), perInsert: perInsert, metrics: m, alone: map[uuid.UUID]*aloneTenant{},
		conflicted: map[uuid.UUID]time.Time{}}
}

// groupedRuntimeParams are the session settings of the grouped pool's connections, sent in the startup
// message, so that bounding a grouped insert costs no round trip (no BEGIN, SET LOCAL, COMMIT around it).
func groupedRuntimeParams() map[string]string {
	return map[string]string{
		"lock_timeout":      fmt.Sprintf("%dms", groupLockTimeout.Milliseconds()),
		"statement_timeout": fmt.Sprintf("%dms", groupStmtTimeout.Milliseconds()),
	}
}

// openGroupedPool opens the pool of the grouped inserts: size connections to url (DATABASE_URL) whose sessions
// have groupedRuntimeParams. It does not connect.
func openGroupedPool(url string, size int, lifetime time.Duration) (*sql.DB, error) {
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("open the grouped inserts' pool: parse DATABASE_URL: %w", err)
	}
	for k, v := range groupedRuntimeParams() {
		cfg.RuntimeParams[k] = v
	}
	db := stdlib.OpenDB(*cfg)
	db.SetMaxOpenConns(max(size, 1))
	db.SetMaxIdleConns(max(size, 1))
	db.SetConnMaxLifetime(lifetime)
	return db, nil
}

// insert stores msgs of a tenant, skipping those already stored, and returns how many rows it inserted.
func (b *storeBatcher) insert(ctx context.Context, tenantID uuid.UUID, msgs []Message) (int64, error) {
	r := &storeReq{tenantID: tenantID, msgs: msgs, done: make(chan storeRes, 1)}
	for _, m := range msgs {
		r.bytes += len(m.Payload)
	}
	b.mu.Lock()
	if len(msgs) > maxGroupedRows || r.bytes > maxGroupedBytes || b.alone[tenantID] != nil {
		b.mu.Unlock()
		return b.insertAlone(ctx, tenantID, msgs)
	}
	b.waiting = append(b.waiting, r)
	b.waitingRows += len(msgs)
	b.waitingBytes += r.bytes
	now := time.Now()
	b.gap, b.lastArrival = nextGap(b.gap, b.lastArrival, now), now
	// The linger ends once the rows it waits for, or a statement's bytes, wait: more rows would not fit.
	if b.want > 0 && (b.waitingRows >= b.want || b.waitingBytes >= maxStoreBytes) {
		b.want = 0
		select {
		case b.wake <- struct{}{}:
		default:
		}
	}
	start := b.running < b.maxRunning
	if start {
		b.running++
	}
	b.mu.Unlock()
	if start {
		go b.run()
	}
	select {
	case res := <-r.done:
		if res.alone {
			return b.insertAlone(ctx, tenantID, msgs)
		}
		return res.inserted, res.err
	case <-ctx.Done():
		return 0, context.Cause(ctx)
	}
}

// run sends what waits, one statement at a time, until nothing waits. A store of a tenant that goes alone is
// handed back to its caller instead.
func (b *storeBatcher) run() {
	lastStores, lastRows := 0, 0
	for {
		b.mu.Lock()
		// Stores come at least two per linger: waiting gathers more rows into the next statement.
		busy := b.gap > 0 && 2*b.gap <= b.linger
		if want := lingerWant(b.linger, lastStores, lastRows, len(b.waiting), b.waitingRows, b.waitingBytes, busy); want > 0 {
			b.want = want
			b.mu.Unlock()
			t := time.NewTimer(b.linger)
			select {
			case <-b.wake:
			case <-t.C:
			}
			t.Stop()
			b.mu.Lock()
			b.want = 0
			select {
			case <-b.wake:
			default:
			}
		}
		batch, rows := b.take()
		lastStores, lastRows = len(batch), rows
		if len(batch) == 0 {
			b.running--
			b.mu.Unlock()
			return
		}
		b.mu.Unlock()
		b.exec(batch, rows)
	}
}

// lingerWant is how many rows the runner waits for (up to linger) before its next statement, 0 for none. While
// stores come at least two per linger (busy: the stores' recent mean time apart), the whole linger, unless a
// full statement's rows wait already: a statement costs PostgreSQL a round trip, an execution and a commit
// whatever its rows, and at two thousand stores a second a statement that waits 1 ms carries half as many more
// (scenario 1: 19–23 messages per statement against 14–16, PostgreSQL 17 % less CPU per message). Otherwise,
// after a statement that carried the stores of several workers, as many rows as it had, unless they wait
// already. Nothing waiting means the runner stops, so an idle service's next store goes at once; a statement of
// one store while stores come less often means nobody else is storing, and its successor does not wait either.
// Nor does it wait once a statement's bytes (maxStoreBytes) wait, whatever their rows: large payloads fill a
// statement with fewer rows, and the rows it waited for would go in the next one.
func lingerWant(linger time.Duration, lastStores, lastRows, waiting, waitingRows, waitingBytes int, busy bool) int {
	if waitingBytes >= maxStoreBytes {
		return 0
	}
	if linger > 0 && busy && waiting > 0 && waitingRows < maxGroupedRows {
		return maxGroupedRows
	}
	if linger <= 0 || lastStores < 2 || waiting == 0 || waitingRows >= lastRows {
		return 0
	}
	return lastRows
}

// nextGap is the stores' mean time apart after one came at now, the last before it at last (zero: none yet):
// each new gap weighs an eighth, so a few fast stores after an idle spell do not count as a busy service, and
// one idle spell ends a busy one.
func nextGap(gap time.Duration, last, now time.Time) time.Duration {
	if last.IsZero() {
		return gap
	}
	return gap + (now.Sub(last)-gap)/8
}

// take removes the next statement's stores from the waiting ones and returns them with their row count; the
// stores of tenants that go alone are answered so. b.mu is held.
func (b *storeBatcher) take() ([]*storeReq, int) {
	n, rows, size := 0, 0, 0
	var batch []*storeReq
	for n < len(b.waiting) {
		r := b.waiting[n]
		if len(b.alone) > 0 && b.alone[r.tenantID] != nil {
			r.done <- storeRes{alone: true}
			n++
			continue
		}
		if len(batch) > 0 && (rows+len(r.msgs) > maxStoreRows || size+r.bytes > maxStoreBytes) {
			break
		}
		batch = append(batch, r)
		n++
		rows += len(r.msgs)
		size += r.bytes
	}
	b.waiting = b.waiting[n:]
	b.waitingRows, b.waitingBytes = 0, 0
	for _, r := range b.waiting {
		b.waitingRows += len(r.msgs)
		b.waitingBytes += r.bytes
	}
	return batch, rows
}

// exec runs one statement for batch on the grouped pool; when it fails, every store of the batch goes alone.
func (b *storeBatcher) exec(batch []*storeReq, rows int) {
	ctx, cancel := context.WithTimeout(context.Background(), groupStmtTimeout+time.Second) // the server's bound, and the network's
	defer cancel()
	// One store goes through insertMany too: its plain insert is the grouped one's, encoded by the service.
	counts, err := b.insertMany(ctx, batch, rows)
	if err == nil {
		for _, r := range batch {
			n := min(counts[r.tenantID], int64(len(r.msgs))) // several stores of a tenant share its count
			counts[r.tenantID] -= n
			r.done <- storeRes{inserted: n}
		}
		return
	}
	b.metrics.split.Inc()
	b.mu.Lock()
	for _, r := range batch {
		b.goAlone(r.tenantID)
	}
	b.mu.Unlock()
	for _, r := range batch {
		r.done <- storeRes{alone: true}
	}
}

// goAlone lists tenantID among the tenants that go alone. b.mu is held.
func (b *storeBatcher) goAlone(tenantID uuid.UUID) {
	if b.alone[tenantID] != nil {
		return
	}
	now := time.Now()
	if len(b.alone) >= maxAloneTenants {
		for id, a := range b.alone {
			if len(a.turn) == 0 && now.Sub(a.since) > time.Minute {
				delete(b.alone, id)
			}
		}
	}
	b.alone[tenantID] = &aloneTenant{turn: make(chan struct{}, 1), since: now}
	b.metrics.alone.Set(float64(len(b.alone)))
}

// insertAlone stores msgs of a tenant in a statement of its own on the shared pool, bounded by ctx and
// b.alonePer. A tenant that goes alone waits for its turn first (one store at a time), then for one of
// b.aloneSlots; a failure makes the tenant go alone, a success ends it.
func (b *storeBatcher) insertAlone(ctx context.Context, tenantID uuid.UUID, msgs []Message) (int64, error) {
	b.mu.Lock()
	a := b.alone[tenantID]
	b.mu.Unlock()
	if a != nil {
		select {
		case a.turn <- struct{}{}:
			defer func() { <-a.turn }()
		case <-ctx.Done():
			return 0, context.Cause(ctx)
		}
		select {
		case b.aloneSlots <- struct{}{}:
			defer func() { <-b.aloneSlots }()
		case <-ctx.Done():
			return 0, context.Cause(ctx)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, b.alonePer)
	defer cancel()
	n, err := b.insertOne(ctx, b.db.DB, tenantID, msgs)
	b.mu.Lock()
	if err != nil {
		b.goAlone(tenantID)
	} else if b.alone[tenantID] != nil {
		delete(b.alone, tenantID)
		b.metrics.alone.Set(float64(len(b.alone)))
	}
	b.mu.Unlock()
	return n, err
}

// insertSQL stores a batch in one statement whose text does not depend on the batch: the rows travel as three
// array parameters, so pgx prepares it once per connection and PostgreSQL plans it once, and no payload is
// ever formatted into SQL text. The ids and times travel in PostgreSQL's binary form (uuid[], timestamptz[]),
// which neither side formats or parses as text. Rows already stored (a redelivery) are skipped.
const insertSQL = `INSERT INTO messages (id, tenant_id, payload, created_at)
SELECT m.id, $1::uuid, m.payload::jsonb, m.created_at
FROM unnest($2::uuid[], $3::text[], $4::timestamptz[]) AS m(id, payload, created_at)
ON CONFLICT (tenant_id, id) DO NOTHING`

// insertPlainSQL is insertSQL without ON CONFLICT: a row already stored fails the statement
// (unique_violation), and nothing of it is inserted. ON CONFLICT makes PostgreSQL insert every row
// speculatively (a look into the primary key first, a second WAL record to confirm the row), which cost it
// 0.025–0.030 ms of CPU per row against 0.013–0.018 without, in inserts of 14 rows of 512 bytes, and 0.018–0.020
// against 0.013–0.015 in inserts of 50 (go run ./test/bench/insertcost), while nearly every row a consumer
// stores is new.
const insertPlainSQL = `INSERT INTO messages (id, tenant_id, payload, created_at)
SELECT m.id, $1::uuid, m.payload::jsonb, m.created_at
FROM unnest($2::uuid[], $3::text[], $4::timestamptz[]) AS m(id, payload, created_at)`

// conflictMemory is how long a tenant whose rows were found already stored has its rows inserted with ON
// CONFLICT DO NOTHING at once, with those of any store grouped with them: redeliveries come in runs (a
// consumer restarted, a handover, a client retrying with its Idempotency-Key), and each plain insert that
// meets one costs a failed statement before the careful one.
const conflictMemory = time.Minute

// rowArrays are the array parameters of the inserts, one element per message: pgx writes each in binary, an id
// as its 16 bytes ([16]byte, not uuid.UUID, which pgx would encode through its driver.Valuer's string), a
// payload as its bytes without a copy, a time as microseconds.
type rowArrays struct {
	ids      [][16]byte
	payloads [][]byte
	created  []time.Time
}

func newRowArrays(rows int) rowArrays {
	return rowArrays{ids: make([][16]byte, 0, rows), payloads: make([][]byte, 0, rows), created: make([]time.Time, 0, rows)}
}

func (a *rowArrays) add(msgs []Message) {
	for _, m := range msgs {
		a.ids = append(a.ids, m.ID)
		a.payloads = append(a.payloads, m.Payload)
		a.created = append(a.created, m.CreatedAt)
	}
}

// careful reports whether the rows of tenants must be inserted with ON CONFLICT DO NOTHING: one of them had
// rows found already stored within conflictMemory.
func (b *storeBatcher) careful(tenants ...uuid.UUID) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.conflicted) == 0 {
		return false
	}
	now := time.Now()
	for _, id := range tenants {
		if at, ok := b.conflicted[id]; ok {
			if now.Sub(at) < conflictMemory {
				return true
			}
			delete(b.conflicted, id)
		}
	}
	return false
}

// conflict notes that a plain insert of the rows of tenants found one already stored: their rows go careful
// for conflictMemory. Tenants not seen since are forgotten as the map grows.
func (b *storeBatcher) conflict(tenants ...uuid.UUID) {
	b.metrics.conflicts.Inc()
	b.mu.Lock()
	defer b.mu.Unlock()
	now := time.Now()
	if len(b.conflicted) >= maxAloneTenants {
		for id, at := range b.conflicted {
			if now.Sub(at) >= conflictMemory {
				delete(b.conflicted, id)
			}
		}
	}
	for _, id := range tenants {
		b.conflicted[id] = now
	}
}

// isUniqueViolation reports whether err is PostgreSQL refusing a row whose key is already stored.
func isUniqueViolation(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "23505"
}

// insertOne stores msgs of one tenant in one insert of their own, on db: a plain one unless the tenant is
// careful, and a careful one when the plain one finds a row already stored. Only a tenant that goes alone uses it
// (on the shared pool); the grouped pool's inserts, of one store or several, are insertMany's.
func (b *storeBatcher) insertOne(ctx context.Context, db *sql.DB, tenantID uuid.UUID, msgs []Message) (int64, error) {
	b.perInsert.Observe(float64(len(msgs)))
	a := newRowArrays(len(msgs))
	a.add(msgs)
	if !b.careful(tenantID) {
		_, err := db.ExecContext(ctx, insertPlainSQL, tenantID.String(), a.ids, a.payloads, a.created)
		if !isUniqueViolation(err) {
			if err != nil {
				return 0, err
			}
			return int64(len(msgs)), nil
		}
		b.conflict(tenantID)
	}
	res, err := db.ExecContext(ctx, insertSQL, tenantID.String(), a.ids, a.payloads, a.created)
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

// InsertManySQL is insertSQL for the rows of several tenants; it answers how many rows it inserted per tenant.
// Exported for test/bench/insertcost, which measures what PostgreSQL spends on exactly this statement.
const InsertManySQL = `WITH ins AS (
INSERT INTO messages (id, tenant_id, payload, created_at)
SELECT m.id, m.tenant_id, m.payload::jsonb, m.created_at
FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::timestamptz[]) AS m(tenant_id, id, payload, created_at)
ON CONFLICT (tenant_id, id) DO NOTHING
RETURNING tenant_id)
SELECT tenant_id, count(*) FROM ins GROUP BY tenant_id`

// InsertManyPlainSQL is InsertManySQL without ON CONFLICT (insertPlainSQL): it inserts every row or none.
const InsertManyPlainSQL = `INSERT INTO messages (id, tenant_id, payload, created_at)
SELECT m.id, m.tenant_id, m.payload::jsonb, m.created_at
FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::timestamptz[]) AS m(tenant_id, id, payload, created_at)`

// insertMany stores the stores of batch (rows in all, one store or more) in one insert on the grouped pool,
// plain or careful as insertOne decides, and answers how many rows it inserted per tenant.
func (b *storeBatcher) insertMany(ctx context.Context, batch []*storeReq, rows int) (map[uuid.UUID]int64, error) {
	tenants := make([][16]byte, 0, rows)
	ids := make([]uuid.UUID, len(batch))
	a := newRowArrays(rows)
	for i, r := range batch {
		ids[i] = r.tenantID
		for range r.msgs {
			tenants = append(tenants, r.tenantID)
		}
		a.add(r.msgs)
	}
	b.perInsert.Observe(float64(rows))
	if !b.careful(ids...) {
		err := execGroupedPlain(ctx, b.grouped, tenants, a)
		if !isUniqueViolation(err) {
			if err != nil {
				return nil, err
			}
			counts := make(map[uuid.UUID]int64, len(batch))
			for _, r := range batch {
				counts[r.tenantID] += int64(len(r.msgs))
			}
			return counts, nil
		}
		// Which tenant's row it was, the error does not say reliably (its detail may be hidden): all of them.
		b.conflict(ids...)
	}
	res, err := b.grouped.QueryContext(ctx, InsertManySQL, tenants, a.ids, a.payloads, a.created)
	if err != nil {
		return nil, err
	}
	defer res.Close()
	counts := map[uuid.UUID]int64{}
	for res.Next() {
		var id uuid.UUID
		var n int64
		if err := res.Scan(&id, &n); err != nil {
			return nil, fmt.Errorf("read inserted counts: %w", err)
		}
		counts[id] = n
	}
	return counts, res.Err()
}
