package messaging

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/uptrace/bun"
	"go.uber.org/zap"

	"github.com/acme/msgsvc/migrations"
	"github.com/acme/msgsvc/platform/database"
	"github.com/acme/msgsvc/test/testdb"
)

// value reads a counter's or gauge's value.
func value(c prometheus.Collector) float64 {
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	mfs, _ := reg.Gather()
	m := mfs[0].GetMetric()[0]
	return m.GetCounter().GetValue() + m.GetGauge().GetValue()
}

func req(tenant uuid.UUID, rows int) *storeReq {
	return &storeReq{tenantID: tenant, msgs: make([]Message, rows), done: make(chan storeRes, 1)}
}

// TestTakeHandsBackTheStoresOfTenantsThatGoAlone: a tenant that goes alone (its last store failed) is never
// put in a grouped insert; its waiting stores are answered "go alone" and leave the queue.
func TestTakeHandsBackTheStoresOfTenantsThatGoAlone(t *testing.T) {
	blocked, a, c := uuid.New(), uuid.New(), uuid.New()
	b := newStoreBatcher(nil, nil, 1, 0, 1, prometheus.NewHistogram(prometheus.HistogramOpts{Name: "x"}), newStoreMetrics())
	b.goAlone(blocked)
	r1, r2, r3, r4 := req(blocked, 1), req(a, 2), req(blocked, 3), req(c, 4)
	b.waiting = []*storeReq{r1, r2, r3, r4}
	batch, rows := b.take()
	if len(batch) != 2 || batch[0] != r2 || batch[1] != r4 || rows != 6 {
		t.Fatalf("take = %d stores, %d rows; want the two stores of the other tenants, 6 rows", len(batch), rows)
	}
	for _, r := range []*storeReq{r1, r3} {
		select {
		case res := <-r.done:
			if !res.alone {
				t.Fatalf("blocked tenant's store answered %+v, want alone", res)
			}
		default:
			t.Fatal("blocked tenant's store was not answered")
		}
	}
	if len(b.waiting) != 0 {
		t.Fatalf("%d stores still wait", len(b.waiting))
	}
}

// TestTakeStopsAtTheStatementBound: a grouped insert carries at most maxStoreRows rows; the rest wait.
func TestTakeStopsAtTheStatementBound(t *testing.T) {
	b := newStoreBatcher(nil, nil, 1, 0, 1, prometheus.NewHistogram(prometheus.HistogramOpts{Name: "x"}), newStoreMetrics())
	for range 10 {
		b.waiting = append(b.waiting, req(uuid.New(), maxGroupedRows))
	}
	batch, rows := b.take()
	if want := maxStoreRows / maxGroupedRows; len(batch) != want || rows != want*maxGroupedRows || len(b.waiting) != 10-want {
		t.Fatalf("take = %d stores, %d rows, %d left; want %d stores", len(batch), rows, len(b.waiting), want)
	}
}

// storeDB is a fresh migrated database on TEST_DATABASE_URL (testdb), or a skipped test (a failed one with
// TEST_REQUIRE_SERVICES=1).
func storeDB(t testing.TB) (*bun.DB, string) {
	t.Helper()
	_, dbURL := testdb.Create(t, testdb.AdminURL(t), "t_store_")
	db, err := database.Open(database.Options{URL: dbURL, MaxOpenConns: 10, MaxIdleConns: 10})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	if _, err := database.Migrate(context.Background(), db, migrations.FS, zap.NewNop()); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	return db, dbURL
}

// heldPartitionCase holds one tenant's partition (hold), and releases it (release, given the holding session).
type heldPartitionCase struct {
	name    string
	hold    func(t *testing.T, s *pgx.Conn, partition string)
	release func(t *testing.T, s *pgx.Conn)
}

// TestGroupedStoresGoOnWhileOnePartitionIsHeld: while one tenant's partition is locked (as a CREATE INDEX without
// CONCURRENTLY would), or slow, other tenants' stores, grouped with its own, are all stored while it is held;
// the held tenant's stores wait (holding at most one connection) and are all stored once it is released.
func TestGroupedStoresGoOnWhileOnePartitionIsHeld(t *testing.T) {
	cases := []heldPartitionCase{{
		name: "locked",
		hold: func(t *testing.T, s *pgx.Conn, partition string) {
			execSQL(t, s, "BEGIN")
			execSQL(t, s, fmt.Sprintf(`LOCK TABLE %q IN SHARE MODE`, partition))
		},
		release: func(t *testing.T, s *pgx.Conn) { execSQL(t, s, "COMMIT") },
	}, {
		// Each row into the partition takes as long as the flag is down: slow, without waiting on any lock.
		name: "slow",
		hold: func(t *testing.T, s *pgx.Conn, partition string) {
			execSQL(t, s, `CREATE TABLE slow_flag (up boolean)`)
			execSQL(t, s, `CREATE FUNCTION slow_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	WHILE NOT EXISTS (SELECT 1 FROM slow_flag) LOOP PERFORM pg_sleep(0.02); END LOOP;
	RETURN NEW;
END $$`)
			execSQL(t, s, fmt.Sprintf(`CREATE TRIGGER slow BEFORE INSERT ON %q FOR EACH ROW EXECUTE FUNCTION slow_row()`, partition))
		},
		release: func(t *testing.T, s *pgx.Conn) { execSQL(t, s, `INSERT INTO slow_flag VALUES (true)`) },
	}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) { testHeldPartition(t, tc) })
	}
}

func execSQL(t *testing.T, c *pgx.Conn, sql string) {
	t.Helper()
	if _, err := c.Exec(context.Background(), sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// groupedBatcher returns a batcher on a database of its own with a partition for each of tenants, a grouped pool
// of one connection and two slots for the tenants that go alone, as the service runs it; and the database.
func groupedBatcher(t testing.TB, m storeMetrics, tenants ...uuid.UUID) (*storeBatcher, *bun.DB, string) {
	t.Helper()
	db, dbURL := storeDB(t)
	for _, id := range tenants {
		if err := CreatePartition(context.Background(), db, id); err != nil {
			t.Fatal(err)
		}
	}
	grouped, err := openGroupedPool(dbURL, 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = grouped.Close() })
	return newStoreBatcher(db, grouped, 1, 0, 2, prometheus.NewHistogram(prometheus.HistogramOpts{Name: "x"}), m), db, dbURL
}

func testHeldPartition(t *testing.T, tc heldPartitionCase) {
	ctx := context.Background()
	held, others := uuid.New(), []uuid.UUID{uuid.New(), uuid.New(), uuid.New()}
	b, db, dbURL := groupedBatcher(t, newStoreMetrics(), append([]uuid.UUID{held}, others...)...)

	holder, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close(ctx)
	tc.hold(t, holder, PartitionName(held))
	released := false
	defer func() {
		if !released {
			tc.release(t, holder)
		}
	}()

	msgs := func(n int) []Message {
		ms := make([]Message, n)
		for i := range ms {
			ms[i] = Message{ID: uuid.Must(uuid.NewV7()), Payload: []byte(`{"n":1}`), CreatedAt: time.Now()}
		}
		return ms
	}
	// The held tenant's three workers store (as the consumers do, without a deadline), together with the
	// others' stores: every grouped insert of the first round holds rows of both.
	const heldStores, rounds, perStore = 3, 10, 4
	heldDone := make(chan error, heldStores)
	for range heldStores {
		go func() {
			_, err := b.insert(context.Background(), held, msgs(perStore))
			heldDone <- err
		}()
	}
	// The others' stores must all be stored while the held partition is still held: on the old code they waited
	// behind a grouped insert for its 30 s budget.
	othersCtx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	for round := range rounds {
		var wg sync.WaitGroup
		errs := make(chan error, len(others))
		for _, id := range others {
			wg.Add(1)
			go func() {
				defer wg.Done()
				n, err := b.insert(othersCtx, id, msgs(perStore))
				if err == nil && n != perStore {
					err = fmt.Errorf("inserted %d rows, want %d", n, perStore)
				}
				errs <- err
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatalf("round %d: another tenant's store while %s's partition is %s: %v", round, held, tc.name, err)
			}
		}
	}
	select {
	case err := <-heldDone:
		t.Fatalf("the held tenant's store returned while its partition is held: %v", err)
	default:
	}
	// The held tenant goes alone, one store at a time: it holds one connection, whatever its workers.
	var busy int
	if err := db.QueryRowContext(ctx, `SELECT count(*) FROM pg_stat_activity
		WHERE datname = current_database() AND pid <> pg_backend_pid() AND state = 'active' AND query LIKE 'INSERT INTO messages%'`).Scan(&busy); err != nil {
		t.Fatal(err)
	}
	if busy > 1 {
		t.Fatalf("%d connections run the held tenant's inserts, want at most 1", busy)
	}

	tc.release(t, holder)
	released = true
	for range heldStores {
		if err := <-heldDone; err != nil {
			t.Fatalf("the held tenant's store after its partition was released: %v", err)
		}
	}
	// And it joins the grouped inserts again.
	if _, err := b.insert(ctx, held, msgs(perStore)); err != nil {
		t.Fatal(err)
	}
	b.mu.Lock()
	alone := len(b.alone)
	b.mu.Unlock()
	if alone != 0 || value(b.metrics.alone) != 0 {
		t.Fatalf("%d tenants still go alone after every store succeeded (gauge %v)", alone, value(b.metrics.alone))
	}
	if split := value(b.metrics.split); split < 1 {
		t.Fatalf("store_groups_split_total = %v, want the held tenant's groups counted", split)
	}
	for _, id := range append([]uuid.UUID{held}, others...) {
		want := rounds * perStore
		if id == held {
			want = (heldStores + 1) * perStore
		}
		var n int
		if err := db.QueryRowContext(ctx, "SELECT count(*) FROM messages WHERE tenant_id = ?", id).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != want {
			t.Fatalf("tenant %s: %d rows stored, want %d", id, n, want)
		}
	}
}

// TestTenantsThatGoAloneHoldAtMostTheirSlots locks messages itself, so that every tenant's store waits: the
// grouped insert is split, every tenant goes alone, and together they hold no more connections than their
// slots (the rest of the pool stays free); once the lock ends, every store completes.
func TestTenantsThatGoAloneHoldAtMostTheirSlots(t *testing.T) {
	db, dbURL := storeDB(t)
	ctx := context.Background()
	tenants := []uuid.UUID{uuid.New(), uuid.New(), uuid.New(), uuid.New()}
	for _, id := range tenants {
		if err := CreatePartition(ctx, db, id); err != nil {
			t.Fatal(err)
		}
	}
	grouped, err := openGroupedPool(dbURL, 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = grouped.Close() })
	const slots = 2
	b := newStoreBatcher(db, grouped, 1, 0, slots, prometheus.NewHistogram(prometheus.HistogramOpts{Name: "x"}), newStoreMetrics())

	holder, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close(ctx)
	execSQL(t, holder, "BEGIN")
	execSQL(t, holder, "LOCK TABLE messages IN SHARE MODE")
	done := make(chan error, 2*len(tenants))
	for _, id := range tenants {
		for range 2 {
			go func() {
				_, err := b.insert(context.Background(), id, []Message{{ID: uuid.New(), Payload: []byte(`{}`), CreatedAt: time.Now()}})
				done <- err
			}()
		}
	}
	waiting := func() (n int) { // asked outside the holder's transaction, which would see a snapshot
		if err := db.QueryRowContext(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE 'INSERT INTO messages%'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	// PostgreSQL says nothing when a store reaches its lock: look until every tenant goes alone.
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		b.mu.Lock()
		alone := len(b.alone)
		b.mu.Unlock()
		if alone == len(tenants) && len(b.aloneSlots) == slots && waiting() == slots {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d tenants go alone, %d slots taken, %d inserts wait on the lock", alone, len(tenants), len(b.aloneSlots), waiting())
		}
	}
	// The stores that wait for a slot hold no connection.
	if n := waiting(); n > slots {
		t.Fatalf("%d inserts wait on the lock, want at most %d", n, slots)
	}
	execSQL(t, holder, "COMMIT")
	for range 2 * len(tenants) {
		if err := <-done; err != nil {
			t.Fatalf("a store after the lock ended: %v", err)
		}
	}
	var n int
	if err := db.QueryRowContext(ctx, "SELECT count(*) FROM messages").Scan(&n); err != nil || n != 2*len(tenants) {
		t.Fatalf("%d rows stored (%v), want %d", n, err, 2*len(tenants))
	}
}

// TestLingerWant: the runner waits for more rows only while busy (its last statement carried several workers'
// stores and fewer rows wait than it had), never when idle or when enough wait already.
func TestLingerWant(t *testing.T) {
	for _, c := range []struct {
		name                                       string
		linger                                     time.Duration
		lastStores, lastRows, waiting, waitingRows int
		waitingBytes                               int
		fast                                       bool // stores come at least two per linger
		want                                       int
	}{
		{"several workers stored: wait for as many rows as the last statement", time.Millisecond, 3, 12, 1, 4, 0, false, 12},
		{"several workers stored, and enough rows wait already", time.Millisecond, 3, 12, 4, 12, 0, false, 0},
		{"the last statement was one store: nobody else stores", time.Millisecond, 1, 12, 1, 4, 0, false, 0},
		{"nothing waits: the runner stops, the next store goes at once", time.Millisecond, 3, 12, 0, 0, 0, false, 0},
		{"the first statement of a runner", time.Millisecond, 0, 0, 1, 4, 0, false, 0},
		{"STORE_LINGER=0", 0, 3, 12, 1, 4, 0, false, 0},
		{"stores come fast: the whole linger, for a full statement", time.Millisecond, 1, 4, 1, 4, 0, true, maxGroupedRows},
		{"stores come fast, even after one store alone", time.Millisecond, 1, 1, 1, 1, 0, true, maxGroupedRows},
		{"stores come fast, and a full statement waits", time.Millisecond, 3, 12, 40, maxGroupedRows, 0, true, 0},
		{"stores come fast, and nothing waits: the runner stops", time.Millisecond, 3, 12, 0, 0, 0, true, 0},
		{"stores come fast, STORE_LINGER=0", 0, 3, 12, 1, 4, 0, true, 0},
		{"stores come fast, and a statement's bytes wait", time.Millisecond, 1, 4, 9, 9, maxStoreBytes, true, 0},
		{"several workers stored, and a statement's bytes wait", time.Millisecond, 3, 12, 9, 9, maxStoreBytes, false, 0},
		{"stores come fast, and fewer than a statement's bytes wait", time.Millisecond, 1, 4, 8, 8, maxStoreBytes - 1, true, maxGroupedRows},
	} {
		if got := lingerWant(c.linger, c.lastStores, c.lastRows, c.waiting, c.waitingRows, c.waitingBytes, c.fast); got != c.want {
			t.Errorf("%s: lingerWant = %d, want %d", c.name, got, c.want)
		}
	}
}

// TestABusyLingerEndsOnceAStatementsBytesWait: while stores come fast, the runner lingers for a full statement's
// rows (maxGroupedRows). Large payloads fill a statement's bytes (maxStoreBytes) with far fewer rows, and then the
// linger ends at once: the rows it waited for would not fit. STORE_LINGER is 3 s here, so that a wait shows.
func TestABusyLingerEndsOnceAStatementsBytesWait(t *testing.T) {
	ctx := context.Background()
	tenant := uuid.New()
	b, db, _ := groupedBatcher(t, newStoreMetrics(), tenant)
	b.linger = 3 * time.Second
	b.gap, b.lastArrival = time.Millisecond, time.Now() // stores come fast
	// 8 stores of 1 MiB each (the most a store that joins a group may carry): a statement's bytes, 8 rows.
	payload := json.RawMessage(`"` + strings.Repeat("x", maxGroupedBytes-2) + `"`)
	n := maxStoreBytes / len(payload)
	began := time.Now()
	errs := make(chan error, n)
	for range n {
		go func() {
			_, err := b.insert(ctx, tenant, []Message{{ID: uuid.Must(uuid.NewV7()), TenantID: tenant, Payload: payload,
				CreatedAt: time.Now()}})
			errs <- err
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	took := time.Since(began)
	var stored int
	if err := db.NewSelect().Table("messages").ColumnExpr("count(*)").Where("tenant_id = ?", tenant).Scan(ctx, &stored); err != nil {
		t.Fatal(err)
	}
	if stored != n {
		t.Fatalf("%d of %d rows stored", stored, n)
	}
	if took >= 2*time.Second {
		t.Fatalf("%d stores of 1 MiB took %s: they waited for the linger (3 s), though a statement's bytes waited", n, took)
	}
	t.Logf("%d stores of 1 MiB stored in %s", n, took.Round(time.Millisecond))
}

// The stores' mean time apart decides whether the runner lingers while only one worker stores at a time: stores
// 0.4 ms apart make a busy service (2 × 0.4 ms within STORE_LINGER's 1 ms), a few fast ones after an idle
// spell do not, and one idle spell ends it.
func TestNextGap(t *testing.T) {
	linger := time.Millisecond
	busy := func(gap time.Duration) bool { return gap > 0 && 2*gap <= linger }
	at := time.Now()
	gap := nextGap(0, time.Time{}, at)
	if gap != 0 {
		t.Fatalf("the first store has no gap: %s", gap)
	}
	next := func(d time.Duration) {
		gap, at = nextGap(gap, at, at.Add(d)), at.Add(d)
	}
	next(time.Minute) // an idle spell
	for range 3 {
		next(400 * time.Microsecond)
	}
	if busy(gap) {
		t.Fatalf("three fast stores after a minute's idle are no busy service: %s", gap)
	}
	for range 100 {
		next(400 * time.Microsecond)
	}
	if !busy(gap) {
		t.Fatalf("stores 0.4 ms apart: %s", gap)
	}
	next(time.Second)
	if busy(gap) {
		t.Fatalf("one idle second ends it: %s", gap)
	}
	for range 100 {
		next(700 * time.Microsecond)
	}
	if busy(gap) {
		t.Fatalf("stores 0.7 ms apart are fewer than two per linger: %s", gap)
	}
}

// TestRowsAlreadyStoredAreSkippedWithoutFailingTheGroup: a grouped insert that meets rows already stored (a
// redelivery) stores the new rows of every tenant in it and skips the old ones, answering each store's own
// count; the tenant whose rows conflicted goes careful (ON CONFLICT at once) for a while, the others not.
func TestRowsAlreadyStoredAreSkippedWithoutFailingTheGroup(t *testing.T) {
	ctx := context.Background()
	redelivered, other := uuid.New(), uuid.New()
	m := newStoreMetrics()
	b, db, _ := groupedBatcher(t, m, redelivered, other)
	msgs := func(n int) []Message {
		ms := make([]Message, n)
		for i := range ms {
			ms[i] = Message{ID: uuid.Must(uuid.NewV7()), Payload: []byte(`{"n":1}`), CreatedAt: time.Now()}
		}
		return ms
	}
	count := func(id uuid.UUID) int {
		var n int
		if err := db.QueryRowContext(ctx, "SELECT count(*) FROM messages WHERE tenant_id = ?", id).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	first := msgs(3)
	if n, err := b.insertOne(ctx, b.grouped, redelivered, first); err != nil || n != 3 {
		t.Fatalf("first store: %d, %v", n, err)
	}
	if b.careful(redelivered) || value(m.conflicts) != 0 {
		t.Fatal("new rows made the tenant careful")
	}

	// Two stores in one grouped insert: the redelivery of two stored rows with a new one, and another tenant's.
	again := append(append([]Message{}, first[:2]...), msgs(1)...)
	fresh := msgs(4)
	done := make(chan storeRes, 2)
	batch := []*storeReq{
		{tenantID: redelivered, msgs: again, done: make(chan storeRes, 1)},
		{tenantID: other, msgs: fresh, done: make(chan storeRes, 1)},
	}
	b.exec(batch, len(again)+len(fresh))
	for _, r := range batch {
		done <- <-r.done
	}
	if got := (<-done); got.err != nil || got.alone || got.inserted != 1 {
		t.Fatalf("the redelivered tenant's store: %+v, want 1 inserted", got)
	}
	if got := (<-done); got.err != nil || got.alone || got.inserted != 4 {
		t.Fatalf("the other tenant's store: %+v, want 4 inserted", got)
	}
	if count(redelivered) != 4 || count(other) != 4 {
		t.Fatalf("stored %d and %d rows, want 4 and 4", count(redelivered), count(other))
	}
	if value(m.conflicts) != 1 || value(m.split) != 0 {
		t.Fatalf("conflicts %v, splits %v: want one conflict and no split", value(m.conflicts), value(m.split))
	}
	if !b.careful(redelivered) || !b.careful(other) {
		t.Fatal("the tenants of the conflicting insert are not careful")
	}

	// Careful now: another redelivery costs no failed statement.
	if n, err := b.insert(ctx, redelivered, first); err != nil || n != 0 {
		t.Fatalf("a careful store of stored rows: %d, %v", n, err)
	}
	if value(m.conflicts) != 1 {
		t.Fatal("a careful store counted a conflict")
	}
	// Forgotten after conflictMemory.
	b.mu.Lock()
	b.conflicted[redelivered] = time.Now().Add(-conflictMemory)
	b.mu.Unlock()
	if b.careful(redelivered) {
		t.Fatal("still careful after conflictMemory")
	}

	// A grouped insert of one store meets a stored row the same way: one conflict, the new row stored.
	alone := &storeReq{tenantID: redelivered, msgs: append([]Message{first[2]}, msgs(1)...), done: make(chan storeRes, 1)}
	b.exec([]*storeReq{alone}, len(alone.msgs))
	if got := <-alone.done; got.err != nil || got.alone || got.inserted != 1 {
		t.Fatalf("a one-store group with a stored row: %+v, want 1 inserted", got)
	}
	if count(redelivered) != 5 || value(m.conflicts) != 2 || value(m.split) != 0 {
		t.Fatalf("stored %d rows, conflicts %v, splits %v: want 5, 2 and none", count(redelivered),
			value(m.conflicts), value(m.split))
	}
}

// BenchmarkGroupedInsert is one grouped insert of 14 rows of 512-byte payloads spread over 10 tenants, as scenario
// 1 of test/bench makes them, on the grouped pool: what the service allocates and spends to encode and send it
// (allocs/op and B/op do not depend on the machine's noise; ns/op includes PostgreSQL's work).
func BenchmarkGroupedInsert(b *testing.B) {
	tenants := make([]uuid.UUID, 10)
	for i := range tenants {
		tenants[i] = uuid.New()
	}
	sb, _, _ := groupedBatcher(b, newStoreMetrics(), tenants...)
	payload := []byte(`{"data":"` + strings.Repeat("x", 492) + `","n":1}`)
	const rows = 14
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		batch := make([]*storeReq, 0, rows)
		for j := range rows {
			batch = append(batch, &storeReq{tenantID: tenants[j%len(tenants)], msgs: []Message{{
				ID: uuid.Must(uuid.NewV7()), Payload: payload, CreatedAt: time.Now().UTC().Truncate(time.Microsecond)}}})
		}
		if _, err := sb.insertMany(ctx, batch, rows); err != nil {
			b.Fatal(err)
		}
	}
}

// The grouped insert sends its rows in PostgreSQL's binary form, encoded by the service (insertwire.go): what is
// stored must be what was given, to the microsecond, for times on both sides of PostgreSQL's epoch and at the ends
// of what the API can answer, and payloads of every kind of text.
func TestGroupedInsertStoresExactlyWhatItIsGiven(t *testing.T) {
	tenants := []uuid.UUID{uuid.New(), uuid.New()}
	b, db, _ := groupedBatcher(t, newStoreMetrics(), tenants...)
	times := []time.Time{
		time.Date(1999, 12, 31, 23, 59, 59, 999999000, time.UTC),
		time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(1, 1, 1, 0, 0, 0, 1000, time.UTC),
		time.Date(9999, 12, 31, 23, 59, 59, 999999000, time.UTC),
		time.Date(1969, 7, 20, 20, 17, 40, 123456000, time.FixedZone("x", -5*3600)),
		time.Now().Truncate(time.Microsecond),
	}
	payloads := []string{`{"a":1}`, `[]`, `{"é":"ü","emoji":"😀","esc":"\n\t\"\\"}`, `{"n":1e308}`, `[null,true,{"x":[]}]`,
		`{"data":"` + strings.Repeat("y", 4000) + `"}`}
	want := map[uuid.UUID]Message{}
	batch := []*storeReq{}
	for i := range times {
		m := Message{ID: uuid.Must(uuid.NewV7()), TenantID: tenants[i%2], Payload: []byte(payloads[i]), CreatedAt: times[i]}
		want[m.ID] = m
		batch = append(batch, &storeReq{tenantID: m.TenantID, msgs: []Message{m}})
	}
	counts, err := b.insertMany(context.Background(), batch, len(batch))
	if err != nil {
		t.Fatal(err)
	}
	if counts[tenants[0]] != 3 || counts[tenants[1]] != 3 {
		t.Fatalf("counts %v, want 3 each", counts)
	}
	rows, err := db.QueryContext(context.Background(), `SELECT id, tenant_id, payload::text, created_at FROM messages`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	seen := 0
	for rows.Next() {
		var id, tenant uuid.UUID
		var payload string
		var created time.Time
		if err := rows.Scan(&id, &tenant, &payload, &created); err != nil {
			t.Fatal(err)
		}
		w, ok := want[id]
		if !ok {
			t.Fatalf("stored an id never given: %s", id)
		}
		seen++
		if tenant != w.TenantID || !created.Equal(w.CreatedAt) {
			t.Errorf("message %s stored for %s at %s, want %s at %s", id, tenant, created, w.TenantID, w.CreatedAt)
		}
		var got, exp any
		if err := json.Unmarshal([]byte(payload), &got); err != nil {
			t.Fatal(err)
		}
		_ = json.Unmarshal(w.Payload, &exp)
		if !reflect.DeepEqual(got, exp) {
			t.Errorf("message %s stored %s, want %s", id, payload, w.Payload)
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if seen != len(want) {
		t.Fatalf("%d rows stored, want %d", seen, len(want))
	}

	// Stored again: the plain insert meets a stored row, and the careful one skips them all.
	counts, err = b.insertMany(context.Background(), batch, len(batch))
	if err != nil {
		t.Fatal(err)
	}
	if counts[tenants[0]] != 0 || counts[tenants[1]] != 0 {
		t.Fatalf("a second insert of the same rows inserted %v", counts)
	}
}

func TestInsertParamsAreReusedAndMatchTheirLengths(t *testing.T) {
	var p insertParams
	a := newRowArrays(2)
	a.add([]Message{{ID: uuid.New(), Payload: []byte(`{}`), CreatedAt: time.Unix(0, 0)},
		{ID: uuid.New(), Payload: []byte(`[1]`), CreatedAt: time.Date(2000, 1, 1, 0, 0, 0, 1000, time.UTC)}})
	tenants := [][16]byte{uuid.New(), uuid.New()}
	vals := p.encode(tenants, a)
	if len(vals) != 4 || len(vals[0]) != 20+2*20 || len(vals[1]) != 20+2*20 || len(vals[2]) != 20+4+2+4+3 || len(vals[3]) != 20+2*12 {
		t.Fatalf("lengths %d %d %d %d", len(vals[0]), len(vals[1]), len(vals[2]), len(vals[3]))
	}
	if total := len(vals[0]) + len(vals[1]) + len(vals[2]) + len(vals[3]); cap(p.buf) != total {
		t.Fatalf("a first encoding of %d bytes made a buffer of %d: its size is computed wrong", total, cap(p.buf))
	}
	if got := int64(binary.BigEndian.Uint64(vals[3][len(vals[3])-8:])); got != 1 {
		t.Fatalf("2000-01-01 00:00:00.000001 UTC encoded as %d µs after PostgreSQL's epoch, want 1", got)
	}
	if got := int64(binary.BigEndian.Uint64(vals[3][20+4 : 20+12])); got != -postgresEpochMicros {
		t.Fatalf("the Unix epoch encoded as %d, want %d", got, int64(-postgresEpochMicros))
	}
	first := &p.buf[:1][0]
	p.encode(tenants, a)
	if &p.buf[:1][0] != first {
		t.Fatal("the second encoding did not reuse the buffer")
	}
}
