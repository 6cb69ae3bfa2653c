package messaging

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/uptrace/bun"
)

// Bounds of one grouped insert, and of a store that may join one (a larger store goes alone, at once).
const (
	maxStoreRows    = 2000
	maxStoreBytes   = 8 << 20
	maxGroupedRows  = 256
	maxGroupedBytes = 1 << 20
	storeStmtBudget = 30 * time.Second // a grouped insert serves several callers, so no caller's context bounds it
)

// storeBatcher is group commit for the consumers' inserts, across tenants: while maxRunning inserts run, the
// stores that come meanwhile, of any tenants, wait and then go together as one multi-row insert into the
// partitioned table (PostgreSQL routes each row to its tenant's partition). An idle service sends a store at
// once, alone, without a timer. Each statement costs PostgreSQL a round trip, a plan execution and a commit
// (a WAL flush where fsync is on) whatever its row count, so many tenants' deliveries of a few messages each
// cost as much as one tenant's batch.
//
// Tenants stay apart where it matters: a store too big to join a group (maxGroupedRows, maxGroupedBytes) goes
// alone, at once, so no tenant's big batch holds the small ones back; and a grouped insert that fails is run
// again tenant by tenant, so that one tenant's failure (a refused value, a partition dropped by a deletion in
// flight) fails only that tenant's stores, which then take the single-tenant path they always had.
type storeBatcher struct {
	db         *bun.DB
	maxRunning int
	perInsert  prometheus.Observer

	mu      sync.Mutex
	waiting []*storeReq
	running int
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
}

func newStoreBatcher(db *bun.DB, maxRunning int, perInsert prometheus.Observer) *storeBatcher {
	return &storeBatcher{db: db, maxRunning: max(maxRunning, 1), perInsert: perInsert}
}

// insert stores msgs of a tenant, skipping those already stored, and returns how many rows it inserted.
func (b *storeBatcher) insert(ctx context.Context, tenantID uuid.UUID, msgs []Message) (int64, error) {
	r := &storeReq{tenantID: tenantID, msgs: msgs, done: make(chan storeRes, 1)}
	for _, m := range msgs {
		r.bytes += len(m.Payload)
	}
	if len(msgs) > maxGroupedRows || r.bytes > maxGroupedBytes {
		return b.insertOne(ctx, tenantID, msgs)
	}
	b.mu.Lock()
	b.waiting = append(b.waiting, r)
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
		return res.inserted, res.err
	case <-ctx.Done():
		return 0, context.Cause(ctx)
	}
}

// run sends what waits, one statement at a time, until nothing waits.
func (b *storeBatcher) run() {
	for {
		b.mu.Lock()
		n, rows, size := 0, 0, 0
		for n < len(b.waiting) {
			r := b.waiting[n]
			if n > 0 && (rows+len(r.msgs) > maxStoreRows || size+r.bytes > maxStoreBytes) {
				break
			}
			n++
			rows += len(r.msgs)
			size += r.bytes
		}
		if n == 0 {
			b.running--
			b.mu.Unlock()
			return
		}
		batch := b.waiting[:n:n]
		b.waiting = b.waiting[n:]
		b.mu.Unlock()
		b.exec(batch, rows)
	}
}

func (b *storeBatcher) exec(batch []*storeReq, rows int) {
	ctx, cancel := context.WithTimeout(context.Background(), storeStmtBudget)
	defer cancel()
	if len(batch) > 1 {
		counts, err := b.insertMany(ctx, batch, rows)
		if err == nil {
			b.perInsert.Observe(float64(rows))
			for _, r := range batch {
				n := min(counts[r.tenantID], int64(len(r.msgs))) // several stores of a tenant share its count
				counts[r.tenantID] -= n
				r.done <- storeRes{inserted: n}
			}
			return
		}
	}
	for _, r := range batch {
		n, err := b.insertOne(ctx, r.tenantID, r.msgs)
		r.done <- storeRes{inserted: n, err: err}
	}
}

// insertSQL stores a batch in one statement whose text does not depend on the batch: the rows travel as three
// array parameters, so pgx prepares it once per connection and PostgreSQL plans it once, and no payload is
// ever formatted into SQL text. Rows already stored (a redelivery) are skipped.
const insertSQL = `INSERT INTO messages (id, tenant_id, payload, created_at)
SELECT m.id::uuid, $1::uuid, m.payload::jsonb, m.created_at::timestamptz
FROM unnest($2::text[], $3::text[], $4::text[]) AS m(id, payload, created_at)
ON CONFLICT (tenant_id, id) DO NOTHING`

// rowArrays are the array parameters of insertSQL and insertManySQL, one element per message.
type rowArrays struct {
	ids, payloads, created []string
}

func newRowArrays(rows int) rowArrays {
	return rowArrays{ids: make([]string, 0, rows), payloads: make([]string, 0, rows), created: make([]string, 0, rows)}
}

func (a *rowArrays) add(msgs []Message) {
	for _, m := range msgs {
		a.ids = append(a.ids, m.ID.String())
		a.payloads = append(a.payloads, string(m.Payload))
		a.created = append(a.created, m.CreatedAt.UTC().Format(time.RFC3339Nano))
	}
}

// insertOne stores msgs of one tenant in one insert of their own.
func (b *storeBatcher) insertOne(ctx context.Context, tenantID uuid.UUID, msgs []Message) (int64, error) {
	b.perInsert.Observe(float64(len(msgs)))
	a := newRowArrays(len(msgs))
	a.add(msgs)
	res, err := b.db.DB.ExecContext(ctx, insertSQL, tenantID.String(), a.ids, a.payloads, a.created)
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

// insertManySQL is insertSQL for the rows of several tenants; it answers how many rows it inserted per tenant.
const insertManySQL = `WITH ins AS (
INSERT INTO messages (id, tenant_id, payload, created_at)
SELECT m.id::uuid, m.tenant_id::uuid, m.payload::jsonb, m.created_at::timestamptz
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS m(tenant_id, id, payload, created_at)
ON CONFLICT (tenant_id, id) DO NOTHING
RETURNING tenant_id)
SELECT tenant_id, count(*) FROM ins GROUP BY tenant_id`

func (b *storeBatcher) insertMany(ctx context.Context, batch []*storeReq, rows int) (map[uuid.UUID]int64, error) {
	tenants := make([]string, 0, rows)
	a := newRowArrays(rows)
	for _, r := range batch {
		t := r.tenantID.String()
		for range r.msgs {
			tenants = append(tenants, t)
		}
		a.add(r.msgs)
	}
	res, err := b.db.DB.QueryContext(ctx, insertManySQL, tenants, a.ids, a.payloads, a.created)
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
