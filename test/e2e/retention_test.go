package e2e

import (
	"context"
	"fmt"
	"net/http"
	"regexp"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect/pgdialect"
	"go.uber.org/fx"
	"go.uber.org/zap"

	"github.com/acme/msgsvc/modules/messaging"
	"github.com/acme/msgsvc/platform/events"
	"github.com/acme/msgsvc/test/testenv"
)

// insertAged stores n messages of tenant created age ago, as if published then, and returns their ids.
func insertAged(t *testing.T, db *pgx.Conn, tenant string, n int, age time.Duration) []string {
	t.Helper()
	rows, err := db.Query(context.Background(), `INSERT INTO messages (id, tenant_id, payload, created_at)
SELECT gen_random_uuid(), $1, jsonb_build_object('aged', i), now() - make_interval(secs => $3) - i * interval '1 millisecond'
FROM generate_series(1, $2::int) AS i RETURNING id::text`, tenant, n, age.Seconds())
	require.NoError(t, err)
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	return ids
}

// listedIDs returns the ids of the tenant's messages the listing answers (one page of up to 100).
func listedIDs(t *testing.T, a *testenv.App, tenant string) []string {
	t.Helper()
	r := a.Do(http.MethodGet, "/api/v1/messages?limit=100&tenant_id="+tenant, nil)
	require.Equal(t, http.StatusOK, r.Status, string(r.Body))
	var page struct {
		Data []struct {
			ID string `json:"id"`
		} `json:"data"`
	}
	r.JSON(t, &page)
	ids := make([]string, len(page.Data))
	for i, m := range page.Data {
		ids[i] = m.ID
	}
	return ids
}

func getMessageStatus(a *testenv.App, tenant, id string) int {
	return a.Do(http.MethodGet, "/api/v1/messages/"+id+"?tenant_id="+tenant, nil).Status
}

func setRetention(t *testing.T, a *testenv.App, tenant string, body any) testenv.Response {
	t.Helper()
	return a.Do(http.MethodPut, "/api/v1/tenants/"+tenant+"/config/retention", body)
}

// TestExpiredMessagesAreNeverServed: a tenant's messages older than its retention are neither listed nor
// found by id while they are still stored (no sweep ran: RETENTION_INTERVAL is an hour), nor after a shorter
// retention made the owner sweep at once; the newer ones stay. The retention is set at creation and changed
// by PUT, bad values are 400 naming the field, and the stats show it with the partition's oldest message and
// size.
func TestExpiredMessagesAreNeverServed(t *testing.T) {
	s := testenv.Get(t)
	cfg := s.Config(t)
	cfg.RetentionInterval = time.Hour
	a := testenv.Start(t, cfg)
	db := a.DB()

	r := a.Do(http.MethodPost, "/api/v1/tenants", map[string]any{"name": "ret", "concurrency_config": 1, "max_age_seconds": -1})
	require.Equal(t, http.StatusBadRequest, r.Status)
	require.Contains(t, string(r.Body), "max_age_seconds")
	r = a.Do(http.MethodPost, "/api/v1/tenants", map[string]any{"name": "ret", "concurrency_config": 1, "max_age_seconds": 3600})
	require.Equal(t, http.StatusCreated, r.Status, string(r.Body))
	tenant := r.Map(t)["id"].(string)
	require.Equal(t, 3600.0, a.Do(http.MethodGet, "/api/v1/tenants/"+tenant, nil).Map(t)["max_age_seconds"])

	old := insertAged(t, db, tenant, 5, 2*time.Hour)
	kept := insertAged(t, db, tenant, 3, 30*time.Minute)
	fresh := a.Publish(tenant, map[string]int{"fresh": 1})
	testenv.Eventually(t, 10*time.Second, func() bool { return getMessageStatus(a, tenant, fresh) == http.StatusOK }, "the fresh message is stored")

	require.ElementsMatch(t, append([]string{fresh}, kept...), listedIDs(t, a, tenant), "the listing serves exactly what is within the retention")
	for _, id := range old {
		require.Equal(t, http.StatusNotFound, getMessageStatus(a, tenant, id), "expired message %s found by id", id)
	}
	require.Equal(t, http.StatusOK, getMessageStatus(a, tenant, kept[0]))
	require.Equal(t, 5, testenv.Count(t, db, "SELECT count(*) FROM messages WHERE id = ANY($1::uuid[])", old), "the expired ones are still stored: no sweep ran")

	var st struct {
		OldestMessageAt  *time.Time `json:"oldest_message_at"`
		StorageBytes     int64      `json:"storage_bytes"`
		MaxAgeSeconds    int64      `json:"max_age_seconds"`
		RetentionDefault bool       `json:"retention_default"`
	}
	r = a.Do(http.MethodGet, "/api/v1/tenants/"+tenant+"/stats", nil)
	require.Equal(t, http.StatusOK, r.Status, string(r.Body))
	r.JSON(t, &st)
	require.NotNil(t, st.OldestMessageAt)
	require.WithinDuration(t, time.Now().Add(-2*time.Hour), *st.OldestMessageAt, 5*time.Minute)
	require.Positive(t, st.StorageBytes)
	require.Equal(t, int64(3600), st.MaxAgeSeconds)
	require.False(t, st.RetentionDefault)

	// Bad values name the field; nothing changes.
	for _, body := range []string{`{"max_age_seconds": -1}`, `{"max_age_seconds": 1e12}`, `{"max_age_seconds": "1h"}`, `{"max_age_seconds": 1.5}`} {
		r := setRetention(t, a, tenant, body)
		require.Equal(t, http.StatusBadRequest, r.Status, "%s: %s", body, r.Body)
		require.Equal(t, "application/problem+json", r.Header.Get("Content-Type"))
		require.Contains(t, string(r.Body), "max_age_seconds", body)
	}
	require.Equal(t, http.StatusNotFound, setRetention(t, a, uuid.NewString(), `{"max_age_seconds": 1}`).Status)
	require.Equal(t, http.StatusForbidden, a.Do(http.MethodPut, "/api/v1/tenants/"+tenant+"/config/retention", `{"max_age_seconds": 1}`,
		"Authorization", "Bearer "+a.Do(http.MethodPost, "/api/v1/tenants/"+tenant+"/api-keys", nil).Map(t)["api_key"].(string)).Status)

	// A shorter retention: the owner sweeps at once (not after the hour), deleting along the index.
	r = setRetention(t, a, tenant, `{"max_age_seconds": 600}`)
	require.Equal(t, http.StatusOK, r.Status, string(r.Body))
	require.Equal(t, 600.0, r.Map(t)["max_age_seconds"])
	testenv.Eventually(t, 10*time.Second, func() bool {
		return testenv.Count(t, db, "SELECT count(*) FROM messages WHERE tenant_id = $1", tenant) == 1
	}, "the expired messages deleted; the fresh one kept")
	require.Equal(t, []string{fresh}, listedIDs(t, a, tenant))
	for _, id := range append(old, kept...) {
		require.Equal(t, http.StatusNotFound, getMessageStatus(a, tenant, id))
	}
	scraped := scrape(t, a.URL)
	require.Equal(t, 8.0, metricValue(t, scraped, `msgsvc_retention_deleted_total{table="messages",tenant="`+tenant+`"}`))
	require.Contains(t, scraped, `msgsvc_tenant_storage_bytes{tenant="`+tenant+`"}`)

	// null: back to RETENTION_DEFAULT (0 here: forever).
	r = setRetention(t, a, tenant, `{"max_age_seconds": null}`)
	require.Equal(t, http.StatusOK, r.Status, string(r.Body))
	require.Nil(t, r.Map(t)["max_age_seconds"])
	again := insertAged(t, db, tenant, 1, 24*time.Hour)
	require.Equal(t, http.StatusOK, getMessageStatus(a, tenant, again[0]), "kept forever by the default")
}

// TestShortRetentionSweepsInTheBackground: with a retention of a few seconds and a short RETENTION_INTERVAL,
// a tenant loses its old messages and keeps its new ones; dead letters go by DEAD_LETTER_RETENTION, also for a
// tenant that keeps its messages forever.
func TestShortRetentionSweepsInTheBackground(t *testing.T) {
	s := testenv.Get(t)
	cfg := s.Config(t)
	cfg.RetentionInterval = 200 * time.Millisecond
	cfg.RetentionBatch = 2 // several batches per sweep
	cfg.DeadLetterRetention = 2 * time.Second
	a := testenv.Start(t, cfg)
	db := a.DB()
	r := a.Do(http.MethodPost, "/api/v1/tenants", map[string]any{"name": "short", "concurrency_config": 1, "max_age_seconds": 3})
	require.Equal(t, http.StatusCreated, r.Status, string(r.Body))
	short := r.Map(t)["id"].(string)
	forever := a.CreateTenant("forever", 1)

	var first []string
	for i := range 5 {
		first = append(first, a.Publish(short, map[string]int{"first": i}))
	}
	keep := a.Publish(forever, map[string]int{"keep": 1})
	poison := uuid.NewString()
	publishDirect(t, cfg.AMQPURL, cfg.AMQPExchange, forever, poison, []byte(`not json`), nil)
	testenv.Eventually(t, 10*time.Second, func() bool {
		return testenv.Count(t, db, "SELECT count(*) FROM messages WHERE id = ANY($1::uuid[])", first) == 5 &&
			testenv.Count(t, db, "SELECT count(*) FROM dead_letters WHERE id = $1", uuid.MustParse(poison)) == 1
	}, "the first messages stored and the poison dead-lettered")

	testenv.Eventually(t, 15*time.Second, func() bool {
		return testenv.Count(t, db, "SELECT count(*) FROM messages WHERE tenant_id = $1", short) == 0
	}, "the expired messages deleted in the background")
	testenv.Eventually(t, 10*time.Second, func() bool {
		return testenv.Count(t, db, "SELECT count(*) FROM dead_letters WHERE tenant_id = $1", forever) == 0
	}, "the dead letter deleted by DEAD_LETTER_RETENTION")
	require.Equal(t, 1, testenv.Count(t, db, "SELECT count(*) FROM messages WHERE id = $1", keep), "a tenant without retention keeps its messages")

	second := a.Publish(short, map[string]int{"second": 1})
	testenv.Eventually(t, 10*time.Second, func() bool { return getMessageStatus(a, short, second) == http.StatusOK }, "the new message stored and served")
	require.Equal(t, []string{second}, listedIDs(t, a, short))
	require.Equal(t, http.StatusNotFound, getMessageStatus(a, short, first[0]))
	require.Equal(t, http.StatusOK, getMessageStatus(a, forever, keep))
}

// TestRetentionChangeHoldsOnEveryReplica: a retention set through one replica holds on the other at once
// (each query reads it from the tenant's row).
func TestRetentionChangeHoldsOnEveryReplica(t *testing.T) {
	s := testenv.Get(t)
	cfg := s.Config(t)
	cfg.RetentionInterval = time.Hour
	cfg.ReplicaHeartbeatInterval = 300 * time.Millisecond
	cfg.ReplicaTTL = 3 * time.Second
	a := testenv.Start(t, cfg)
	cfgB := testenv.AnotherReplica(cfg, "b")
	b := testenv.Start(t, cfgB)
	db := a.DB()
	tenant := a.CreateTenant("replicated", 1)
	old := insertAged(t, db, tenant, 3, 10*time.Minute)
	testenv.Eventually(t, 5*time.Second, func() bool { return len(listedIDs(t, b, tenant)) == 3 }, "B serves the tenant's messages")

	require.Equal(t, http.StatusOK, setRetention(t, a, tenant, `{"max_age_seconds": 60}`).Status)
	require.Empty(t, listedIDs(t, b, tenant), "B still lists expired messages")
	require.Equal(t, http.StatusNotFound, getMessageStatus(b, tenant, old[0]))
	require.Equal(t, 60.0, b.Do(http.MethodGet, "/api/v1/tenants/"+tenant, nil).Map(t)["max_age_seconds"])
	// Whichever replica owns the tenant sweeps it now.
	testenv.Eventually(t, 10*time.Second, func() bool {
		return testenv.Count(t, db, "SELECT count(*) FROM messages WHERE tenant_id = $1", tenant) == 0
	}, "the owner swept the tenant after the change")
}

// sweepSetup starts a service that sweeps only when asked and creates the named tenants, each kept 60 s with 3
// messages an hour old; it returns the service's *bun.DB and tenant directory, for a Sweeper of the test's own.
func sweepSetup(t *testing.T, names ...string) (*testenv.App, *pgx.Conn, *bun.DB, events.TenantDirectory, []string) {
	t.Helper()
	s := testenv.Get(t)
	cfg := s.Config(t)
	cfg.RetentionInterval = time.Hour
	var bdb *bun.DB
	var dir events.TenantDirectory
	a := testenv.Start(t, cfg, fx.Populate(&bdb, &dir))
	db := a.DB()
	ids := make([]string, len(names))
	for i, name := range names {
		r := a.Do(http.MethodPost, "/api/v1/tenants", map[string]any{"name": name, "concurrency_config": 1, "max_age_seconds": 60})
		require.Equal(t, http.StatusCreated, r.Status, string(r.Body))
		ids[i] = r.Map(t)["id"].(string)
		insertAged(t, db, ids[i], 3, time.Hour)
	}
	return a, db, bdb, dir, ids
}

// deletingDirectory lists the tenants, then deletes one of them before the sweep gets to it.
type deletingDirectory struct {
	events.TenantDirectory
	del func()
}

func (d deletingDirectory) Tenants(ctx context.Context) ([]events.Tenant, error) {
	ts, err := d.TenantDirectory.Tenants(ctx)
	d.del()
	return ts, err
}

// TestSweepOfATenantDeletedMidwayIsNoError: a tenant deleted between the sweep's listing and its deletes is
// skipped without error, and the sweep goes on to the next tenant.
func TestSweepOfATenantDeletedMidwayIsNoError(t *testing.T) {
	a, db, bdb, dir, ids := sweepSetup(t, "gone", "kept")
	gone, kept := ids[0], ids[1]
	sw := messaging.NewSweeper(bdb, deletingDirectory{dir, func() {
		require.Equal(t, http.StatusNoContent, a.Do(http.MethodDelete, "/api/v1/tenants/"+gone, nil).Status)
		testenv.Eventually(t, 10*time.Second, func() bool { // dropped in the background
			return testenv.Count(t, db, "SELECT count(*) FROM pg_class WHERE relname = $1", messaging.PartitionName(uuid.MustParse(gone))) == 0
		}, "the partition is dropped before the sweep reaches it")
	}}, func(uuid.UUID) bool { return true }, messaging.SweeperOptions{Batch: 2},
		messaging.NewRetentionMetrics(prometheus.NewRegistry(), true), zap.NewNop())
	require.NoError(t, sw.Sweep(context.Background()))
	require.Zero(t, testenv.Count(t, db, "SELECT count(*) FROM messages WHERE tenant_id = $1", kept), "the next tenant swept")
}

// lockedFirstDirectory lists the first tenant before the others, whatever their order of creation.
type lockedFirstDirectory struct {
	events.TenantDirectory
	first uuid.UUID
}

func (d lockedFirstDirectory) Tenants(ctx context.Context) ([]events.Tenant, error) {
	ts, err := d.TenantDirectory.Tenants(ctx)
	sort.SliceStable(ts, func(i, j int) bool { return ts[i].ID == d.first && ts[j].ID != d.first })
	return ts, err
}

// TestSweepPassesOverALockedPartition: one tenant's partition held against writes by another session (as a
// CREATE INDEX without CONCURRENTLY holds it) does not hold back the sweep of the replica's other tenants: the
// sweep passes it over at once, without an error, and deletes it the next time, once the lock is gone.
func TestSweepPassesOverALockedPartition(t *testing.T) {
	a, db, bdb, dir, ids := sweepSetup(t, "locked", "free")
	locked, free := ids[0], ids[1]
	cfg := a.Config

	holder := testenv.Connect(t, cfg.DatabaseURL)
	ctx := context.Background()
	tx, err := holder.Begin(ctx)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, `LOCK TABLE `+messaging.PartitionName(uuid.MustParse(locked))+` IN SHARE MODE`)
	require.NoError(t, err)

	reg := prometheus.NewRegistry()
	sw := messaging.NewSweeper(bdb, lockedFirstDirectory{dir, uuid.MustParse(locked)}, func(uuid.UUID) bool { return true },
		messaging.SweeperOptions{Batch: 2}, messaging.NewRetentionMetrics(reg, true), zap.NewNop())
	// Bounded as Run bounds a sweep by its interval: before, the sweep waited here on the lock until this ended.
	sctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	require.NoError(t, sw.Sweep(sctx), "a locked partition is passed over, not an error")
	require.Zero(t, testenv.Count(t, db, "SELECT count(*) FROM messages WHERE tenant_id = $1", free), "the other tenant swept")
	require.Equal(t, 3, testenv.Count(t, db, "SELECT count(*) FROM messages WHERE tenant_id = $1", locked))
	families, err := reg.Gather()
	require.NoError(t, err)
	var passed, lag float64
	for _, f := range families {
		for _, m := range f.GetMetric() {
			switch f.GetName() {
			case "msgsvc_retention_locked_total":
				passed += m.GetCounter().GetValue()
			case "msgsvc_retention_lag_seconds":
				lag = m.GetGauge().GetValue()
			}
		}
	}
	require.Equal(t, 1.0, passed, "the pass-over is counted")
	require.Greater(t, lag, 3000.0, "the lag shows the locked tenant's expired messages")

	require.NoError(t, tx.Rollback(ctx))
	require.NoError(t, sw.Sweep(sctx))
	require.Zero(t, testenv.Count(t, db, "SELECT count(*) FROM messages WHERE tenant_id = $1", locked), "swept once the lock is gone")
}

// TestRetentionQueriesPruneAndUseTheIndex: with the retention predicate the listing and the lookup still read
// one partition, through its indexes, and the sweep's batch walks the (created_at, id) index.
func TestRetentionQueriesPruneAndUseTheIndex(t *testing.T) {
	s := testenv.Get(t)
	a := testenv.Start(t, s.Config(t))
	tenant := a.CreateTenant("plan", 1)
	for i := range 3 {
		a.CreateTenant(fmt.Sprintf("filler-%d", i), 1)
	}
	db := a.DB()
	insertAged(t, db, tenant, 2000, time.Minute)
	_, err := db.Exec(context.Background(), "ANALYZE messages")
	require.NoError(t, err)
	part := messaging.PartitionName(uuid.MustParse(tenant))
	lit := "'" + tenant + "'"
	cut := messaging.RetentionCutoff(lit, "3600")
	explain := func(q string) string {
		rows, err := db.Query(context.Background(), "EXPLAIN "+q)
		require.NoError(t, err)
		lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
		require.NoError(t, err)
		text := strings.Join(lines, "\n")
		parts := map[string]bool{}
		for _, p := range regexp.MustCompile(`messages_tenant_[0-9a-f]{32}`).FindAllString(text, -1) {
			parts[p] = true
		}
		require.Len(t, parts, 1, "not one partition in the plan:\n%s", text)
		return text
	}
	text := explain(`SELECT payload, created_at, stored_at FROM messages WHERE tenant_id = ` + lit + ` AND id = '` + uuid.NewString() + `' AND created_at >= ` + cut)
	require.Contains(t, text, "Index Scan using "+part+"_pkey", text)
	text = explain(`SELECT id FROM messages WHERE tenant_id = ` + lit + ` AND created_at >= ` + cut + ` ORDER BY created_at DESC, id DESC LIMIT 21`)
	// The index's name is the partition's, cut to PostgreSQL's 63 characters.
	index := `messages_tenant_[0-9a-f]+_tenant_id_created_at_id_idx on ` + part
	require.Regexp(t, `Index (Only )?Scan using `+index, text)
	require.Contains(t, text, "Index Cond: ((tenant_id = ", text)
	require.Contains(t, text, "created_at >= ", text)
	text = explain(`DELETE FROM ` + part + ` WHERE ctid = ANY(ARRAY(SELECT ctid FROM ` + part + ` WHERE tenant_id = ` + lit +
		` AND created_at < now() - make_interval(secs => 30) ORDER BY created_at, id LIMIT 1000))`)
	require.Regexp(t, `Index Scan Backward using `+index, text)
	require.Contains(t, text, "Tid Scan", text)
}

// TestSweepOfTenantsWithoutRetention: the tenants without a retention are swept a thousand at a time (their dead
// letters in one statement, their partitions' sizes in another), not with statements of their own: each still
// gets its storage figure and loses exactly its expired dead letters, counted under its own label, batch after
// batch. At 10,000 tenants the sweep's 50,000 round trips a minute halved the rate of the creations beside it.
func TestSweepOfTenantsWithoutRetention(t *testing.T) {
	s := testenv.Get(t)
	cfg := s.Config(t)
	cfg.RetentionInterval = time.Hour
	var dir events.TenantDirectory
	a := testenv.Start(t, cfg, fx.Populate(&dir))
	db := a.DB()
	ctx := context.Background()
	var ids []string
	for _, name := range []string{"plain-a", "plain-b", "plain-c"} {
		ids = append(ids, a.CreateTenant(name, 1))
	}
	// Four dead letters each: for the first two tenants three of them expired.
	for i, id := range ids {
		for j := range 4 {
			age := time.Minute
			if j < 3 && i < 2 {
				age = 2 * time.Hour
			}
			_, err := db.Exec(ctx, `INSERT INTO dead_letters (tenant_id, id, reason, body, dead_lettered_at)
				VALUES ($1, $2, 'test', '\x7b7d', now() - make_interval(secs => $3))`, id, uuid.Must(uuid.NewV7()), age.Seconds())
			require.NoError(t, err)
		}
	}
	stored := a.Publish(ids[2], map[string]string{"kept": "forever"})
	testenv.Eventually(t, 20*time.Second, func() bool {
		return testenv.Count(t, db, "SELECT count(*) FROM messages WHERE id = $1", stored) == 1
	}, "a message stored")

	for i := range 27 { // 30 tenants in all
		a.CreateTenant(fmt.Sprintf("plain-%d", i), 1)
	}

	// The sweep on a database handle of its own that counts the statements it sends (begin, lock timeout, the
	// statement, commit): eight per tenant before (240 here), now a few dozen whatever the tenant count.
	sent := &countingTracer{}
	reg := prometheus.NewRegistry()
	sw := messaging.NewSweeper(countedDB(t, cfg.DatabaseURL, sent), dir, func(uuid.UUID) bool { return true },
		messaging.SweeperOptions{DeadLetters: time.Hour, Batch: 2}, messaging.NewRetentionMetrics(reg, true), zap.NewNop())
	require.NoError(t, sw.Sweep(ctx))
	require.Less(t, sent.n.Load(), int64(60), "the sweep of 30 tenants sent %d statements", sent.n.Load())

	families, err := reg.Gather()
	require.NoError(t, err)
	deleted, storage := map[string]float64{}, storageFigures(t, reg)
	for _, f := range families {
		if f.GetName() != "msgsvc_retention_deleted_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["table"] == "dead_letters" {
				deleted[labels["tenant"]] += m.GetCounter().GetValue()
			}
		}
	}
	for i, id := range ids {
		left := 4
		if i < 2 {
			left = 1
			require.Equal(t, 3.0, deleted[id], "tenant %d's expired dead letters counted", i)
		} else {
			require.Zero(t, deleted[id], "tenant %d has no expired dead letter", i)
		}
		require.Equal(t, left, testenv.Count(t, db, "SELECT count(*) FROM dead_letters WHERE tenant_id = $1", id),
			"tenant %d keeps its recent dead letters only", i)
		require.Greater(t, storage[id], 0.0, "tenant %d's storage figure", i)
	}
	require.Equal(t, 1, testenv.Count(t, db, "SELECT count(*) FROM messages WHERE id = $1", stored), "no retention: the message stays")
}

// TestBatchedSweepPassesOverAHeldPartition: a partition of a tenant without a retention held against reads (an
// ACCESS EXCLUSIVE lock, as a drop holds it) makes the size read of its thousand wait 200 ms and pass them over,
// counted; it holds back neither the sweep nor the other tenants' dead letters.
func TestBatchedSweepPassesOverAHeldPartition(t *testing.T) {
	s := testenv.Get(t)
	cfg := s.Config(t)
	cfg.RetentionInterval = time.Hour
	var bdb *bun.DB
	var dir events.TenantDirectory
	a := testenv.Start(t, cfg, fx.Populate(&bdb, &dir))
	db := a.DB()
	ctx := context.Background()
	held, other := a.CreateTenant("held", 1), a.CreateTenant("other", 1)
	_, err := db.Exec(ctx, `INSERT INTO dead_letters (tenant_id, id, reason, body, dead_lettered_at)
		VALUES ($1, $2, 'test', '\x7b7d', now() - interval '2 hours')`, other, uuid.Must(uuid.NewV7()))
	require.NoError(t, err)

	holder := testenv.Connect(t, cfg.DatabaseURL)
	tx, err := holder.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(ctx) }()
	_, err = tx.Exec(ctx, `LOCK TABLE `+messaging.PartitionName(uuid.MustParse(held))+` IN ACCESS EXCLUSIVE MODE`)
	require.NoError(t, err)

	reg := prometheus.NewRegistry()
	sw := messaging.NewSweeper(bdb, dir, func(uuid.UUID) bool { return true },
		messaging.SweeperOptions{DeadLetters: time.Hour, Batch: 10}, messaging.NewRetentionMetrics(reg, true), zap.NewNop())
	sctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	require.NoError(t, sw.Sweep(sctx), "a held partition is passed over, not an error")
	require.Zero(t, testenv.Count(t, db, "SELECT count(*) FROM dead_letters WHERE tenant_id = $1", other),
		"the other tenant's expired dead letter deleted")
	families, err := reg.Gather()
	require.NoError(t, err)
	var passed float64
	for _, f := range families {
		if f.GetName() == "msgsvc_retention_locked_total" {
			for _, m := range f.GetMetric() {
				passed += m.GetCounter().GetValue()
			}
		}
	}
	require.Equal(t, 1.0, passed, "the pass-over is counted")
}

// countingTracer counts the statements a pgx connection sends, and the partition sizes they read (the rows of
// the statements that call pg_total_relation_size).
type countingTracer struct{ n, sizes atomic.Int64 }

type sizeQuery struct{}

func (c *countingTracer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	c.n.Add(1)
	if strings.Contains(d.SQL, "pg_total_relation_size") {
		return context.WithValue(ctx, sizeQuery{}, true)
	}
	return ctx
}

func (c *countingTracer) TraceQueryEnd(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryEndData) {
	if ctx.Value(sizeQuery{}) != nil {
		c.sizes.Add(d.CommandTag.RowsAffected())
	}
}

// countedDB opens a database handle whose statements tracer counts.
func countedDB(t *testing.T, url string, tracer *countingTracer) *bun.DB {
	t.Helper()
	pcfg, err := pgx.ParseConfig(url)
	require.NoError(t, err)
	pcfg.Tracer = tracer
	db := bun.NewDB(stdlib.OpenDB(*pcfg), pgdialect.New())
	t.Cleanup(func() { _ = db.Close() })
	return db
}

// storageFigures gathers msgsvc_tenant_storage_bytes by tenant from reg.
func storageFigures(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	families, err := reg.Gather()
	require.NoError(t, err)
	out := map[string]float64{}
	for _, f := range families {
		if f.GetName() != "msgsvc_tenant_storage_bytes" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "tenant" {
					out[l.GetValue()] = m.GetGauge().GetValue()
				}
			}
		}
	}
	return out
}

// TestASweepReadsOnlyTheSizesThatChanged: a sweep reads the size of a partition only when PostgreSQL counted a
// write into it (or a vacuum of it) since its last read, or never read it. Reading every size every minute cost
// PostgreSQL 3–6 s of CPU at 10,000 tenants. The first sweep reads every partition; one with nothing written since
// reads none and keeps every figure; new tenants are read at most FirstReads a sweep; a tenant written to is read
// again, alone, and its figure grows.
func TestASweepReadsOnlyTheSizesThatChanged(t *testing.T) {
	s := testenv.Get(t)
	cfg := s.Config(t)
	cfg.RetentionInterval = time.Hour
	var dir events.TenantDirectory
	a := testenv.Start(t, cfg, fx.Populate(&dir))
	ctx := context.Background()
	var ids []string
	for i := range 4 {
		ids = append(ids, a.CreateTenant(fmt.Sprintf("sized-%d", i), 1))
	}
	sent := &countingTracer{}
	reg := prometheus.NewRegistry()
	sw := messaging.NewSweeper(countedDB(t, cfg.DatabaseURL, sent), dir, func(uuid.UUID) bool { return true },
		messaging.SweeperOptions{FirstReads: 2}, messaging.NewRetentionMetrics(reg, true), zap.NewNop())
	sweep := func() int64 {
		t.Helper()
		before := sent.sizes.Load()
		require.NoError(t, sw.Sweep(ctx))
		return sent.sizes.Load() - before
	}

	require.Equal(t, int64(4), sweep(), "the first sweep reads every partition")
	first := storageFigures(t, reg)
	for _, id := range ids {
		require.Greater(t, first[id], 0.0, "tenant %s's storage figure", id)
	}
	require.Zero(t, sweep(), "a sweep with nothing written since read partition sizes")
	require.Equal(t, first, storageFigures(t, reg), "the figures kept")

	var later []string
	for i := range 3 {
		later = append(later, a.CreateTenant(fmt.Sprintf("later-%d", i), 1))
	}
	require.Equal(t, int64(2), sweep(), "new tenants are read FirstReads at a time")
	require.Equal(t, int64(1), sweep(), "the last new tenant is read at the next sweep")
	figures := storageFigures(t, reg)
	for _, id := range later {
		require.Greater(t, figures[id], 0.0, "new tenant %s's storage figure", id)
	}

	db := a.DB()
	stored := a.Publish(ids[0], map[string]string{"grows": strings.Repeat("x", 4096)})
	testenv.Eventually(t, 20*time.Second, func() bool {
		return testenv.Count(t, db, "SELECT count(*) FROM messages WHERE id = $1", stored) == 1
	}, "the message stored")
	var read int64
	testenv.Eventually(t, 30*time.Second, func() bool {
		read += sweep()
		return storageFigures(t, reg)[ids[0]] > first[ids[0]]
	}, "the written tenant's figure did not grow")
	require.Equal(t, int64(1), read, "only the written tenant's partition was read again")
	figures = storageFigures(t, reg)
	for _, id := range ids[1:] {
		require.Equal(t, first[id], figures[id], "tenant %s's figure kept", id)
	}
}
