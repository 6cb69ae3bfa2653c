package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// loadResult is what a closed-loop load of HTTP requests produced.
type loadResult struct {
	requests  int             // answered with the expected status
	failed    int             // errors and other statuses
	firstErr  string          // the first failure, for the note
	latencies []time.Duration // of the successful requests
	ids       []uuid.UUID     // accepted message ids
	start     time.Time
	end       time.Time
}

// runPaced starts job i at start + i/rate, each on its own goroutine, whatever the earlier ones are doing (an
// open loop, as independent clients at a steady rate would).
func runPaced(ctx context.Context, n int, rate float64, job func(ctx context.Context, i int) ([]uuid.UUID, error)) loadResult {
	var mu sync.Mutex
	res := loadResult{start: time.Now()}
	var wg sync.WaitGroup
	for i := range n {
		at := res.start.Add(time.Duration(float64(i) / rate * float64(time.Second)))
		select {
		case <-ctx.Done():
		case <-time.After(time.Until(at)):
		}
		if ctx.Err() != nil {
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			t0 := time.Now()
			got, err := job(ctx, i)
			d := time.Since(t0)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				res.failed++
				if res.firstErr == "" {
					res.firstErr = err.Error()
				}
				return
			}
			res.requests++
			res.latencies = append(res.latencies, d)
			res.ids = append(res.ids, got...)
		}()
	}
	wg.Wait()
	res.end = time.Now()
	sortDurations(res.latencies)
	return res
}

// runLoad runs jobs 0..n-1 with clients concurrent workers; each job is one request returning the accepted ids.
// With groups > 1, job i belongs to group i % groups (a tenant, for publishJob) and client c works through its
// own group c % groups (each client is one tenant's), then helps the other groups when its own is done; with
// groups <= 1, every client takes the next job, whatever its group.
func runLoad(ctx context.Context, n, clients, groups int, job func(ctx context.Context, i int) ([]uuid.UUID, error)) loadResult {
	var next atomic.Int64
	groups = max(groups, 1)
	nexts := make([]atomic.Int64, groups) // the next job of each group, as a multiple of groups
	take := func(c int) int {
		if groups == 1 {
			return int(next.Add(1) - 1)
		}
		for k := range groups {
			g := (c + k) % groups
			if i := int(nexts[g].Add(1)-1)*groups + g; i < n {
				return i
			}
		}
		return n
	}
	var mu sync.Mutex
	res := loadResult{start: time.Now()}
	var wg sync.WaitGroup
	for c := range min(clients, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var lat []time.Duration
			var ids []uuid.UUID
			failed, firstErr := 0, ""
			for {
				i := take(c)
				if i >= n || ctx.Err() != nil {
					break
				}
				t0 := time.Now()
				got, err := job(ctx, i)
				d := time.Since(t0)
				if err != nil {
					failed++
					if firstErr == "" {
						firstErr = err.Error()
					}
					continue
				}
				lat = append(lat, d)
				ids = append(ids, got...)
			}
			mu.Lock()
			res.requests += len(lat)
			res.failed += failed
			if res.firstErr == "" {
				res.firstErr = firstErr
			}
			res.latencies = append(res.latencies, lat...)
			res.ids = append(res.ids, ids...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	res.end = time.Now()
	sortDurations(res.latencies)
	return res
}

// serviceRun is the common part of scenarios 1 and 2: a server with its tenants, ready to take messages.
type serviceRun struct {
	env     *benchEnv
	srv     *server
	tenants []uuid.UUID
	// table is what the measurement counts: messages, or those of the measured tenants when another one's
	// expired rows are being swept (-sweep-rows).
	table string
}

func (r *runner) prepareService(ctx context.Context, id int, s *Scenario) (*serviceRun, error) {
	env, err := r.newEnv(ctx, id)
	if err != nil {
		return nil, err
	}
	srv, err := r.startServer(ctx, env, fmt.Sprintf("s%d", id))
	if err != nil {
		return nil, err
	}
	tenants, _, err := r.createTenants(ctx, srv, "bench", r.opt.tenants, r.opt.workers, r.opt.tenants, nil)
	if err != nil {
		return nil, err
	}
	if _, err := r.waitConsumers(ctx, srv, r.opt.tenants, time.Now(), time.Minute); err != nil {
		return nil, err
	}
	// The partition pool fills at the service's first start and refills what the tenants claimed: attaches that
	// would otherwise run during the measurement (until 2026-12-05 they did: about 1.8 s of PostgreSQL's time in
	// scenario 1's window, counted in its CPU per message). Then the machine settles.
	if r.hasPool(ctx, env) {
		if _, _, err := r.waitPool(ctx, env, r.poolSize(), 5*time.Minute); err != nil {
			return nil, err
		}
	}
	r.settle(ctx, srv)
	s.param("tenants", r.opt.tenants)
	s.param("payload", fmt.Sprintf("%d B", r.opt.payload))
	s.param("messages", fmtInt(float64(r.opt.messages)))
	return &serviceRun{env: env, srv: srv, tenants: tenants, table: "messages"}, nil
}

// poolSize is the PARTITION_POOL_SIZE the service runs with: the server environment's (-env), or the default.
func (r *runner) poolSize() int {
	size := 200 // platform/config's default
	for _, kv := range r.opt.serverEnv {
		if v, ok := strings.CutPrefix(kv, "PARTITION_POOL_SIZE="); ok {
			if n, err := strconv.Atoi(v); err == nil {
				size = n
			}
		}
	}
	return size
}

// waitConsumers polls msgsvc_consumers_running until it reaches want, and returns the time from since.
func (r *runner) waitConsumers(ctx context.Context, srv *server, want int, since time.Time, timeout time.Duration) (time.Duration, error) {
	deadline := time.Now().Add(timeout)
	last := -1.0
	said := time.Now()
	for {
		m, err := srv.metrics(ctx, r.client)
		if err == nil {
			last = m["msgsvc_consumers_running"]
			if last >= float64(want) {
				return time.Since(since), nil
			}
		}
		if want > 100 && time.Since(said) >= 5*time.Second {
			fmt.Printf("   %5.1f s: %v of %d consumers running\n", time.Since(since).Seconds(), last, want)
			said = time.Now()
		}
		if !srv.Alive() {
			return 0, srv.Exited()
		}
		if time.Now().After(deadline) {
			return time.Since(since), fmt.Errorf("msgsvc_consumers_running = %v after %s, want %d", last, timeout, want)
		}
		// /metrics grows with per-tenant series: scrape a large service less often. A scrape at 9,000 tenants costs
		// the service some 35 ms of CPU and this process as much to parse: every 500 ms, that was 0.3 ms of the
		// service's CPU per creation in the last blocks of scenario 5, against 0.04 ms in the first, which made the
		// blocks' rates fall with the tenant count for a reason no user has (Prometheus scrapes every 15-60 s).
		every := 100 * time.Millisecond
		switch {
		case want > 1000:
			every = 2 * time.Second
		case want > 100:
			every = 500 * time.Millisecond
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(every):
		}
	}
}

func (r *runner) publishScenario(ctx context.Context, s *Scenario) error {
	run, err := r.prepareService(ctx, 1, s)
	if err != nil {
		return err
	}
	s.param("clients", r.opt.clients)
	if r.opt.clientMix == "tenant" {
		s.param("clients", fmt.Sprintf("%d (each one tenant's)", r.opt.clients))
	}
	s.param("workers/tenant", r.opt.workers)
	job := r.publishJob(run, r.opt.messages)
	var sweep func() error
	if r.opt.sweepRows > 0 {
		if sweep, err = r.sweepDuringLoad(ctx, s, run); err != nil {
			return err
		}
	}
	profile := r.startProfile(ctx, run.srv, s)
	err = r.measurePipeline(ctx, s, run, r.opt.messages, r.opt.clients, job)
	profile()
	if err != nil {
		return err
	}
	if sweep != nil {
		if err := sweep(); err != nil {
			return err
		}
	}
	s.metric("stored_rate").atLeast(3000, "3,000 /s")
	s.metric("publish_p99").atMost(50, "50 ms")
	s.metric("cpu_service").atMost(0.10, "0.10 ms")
	return nil
}

// publishJob prepares n single-message publishes spread over the run's tenants; job i sends the i-th and
// returns the accepted id.
func (r *runner) publishJob(run *serviceRun, n int) func(ctx context.Context, i int) ([]uuid.UUID, error) {
	payloads := make([][]byte, n)
	for i := range payloads {
		var b bytes.Buffer
		b.WriteString(`{"tenant_id":"` + run.tenants[i%len(run.tenants)].String() + `","payload":`)
		b.Write(makePayload(i, r.opt.payload))
		b.WriteString(`}`)
		payloads[i] = b.Bytes()
	}
	return func(ctx context.Context, i int) ([]uuid.UUID, error) {
		status, out, err := r.do(ctx, http.MethodPost, run.srv.URL+"/api/v1/messages", payloads[i])
		if err != nil {
			return nil, err
		}
		if status != http.StatusAccepted {
			return nil, fmt.Errorf("HTTP %d: %s", status, bytes.TrimSpace(out))
		}
		var a struct{ ID uuid.UUID }
		if err := json.Unmarshal(out, &a); err != nil {
			return nil, err
		}
		return []uuid.UUID{a.ID}, nil
	}
}

// lightScenario publishes at a fixed, light rate (open loop: each request at its scheduled time, whatever the
// answers) to see what a message costs in latency when nothing is busy: batching must not add waiting.
func (r *runner) lightScenario(ctx context.Context, s *Scenario) error {
	run, err := r.prepareService(ctx, 6, s)
	if err != nil {
		return err
	}
	n := int(r.opt.lightRate * r.opt.lightDuration.Seconds())
	s.param("rate", fmt.Sprintf("%.0f msg/s", r.opt.lightRate))
	s.param("messages", fmtInt(float64(n)))
	job := r.publishJob(run, n)
	r.pace = r.opt.lightRate
	defer func() { r.pace = 0 }()
	if err := r.measurePipeline(ctx, s, run, n, 64, job); err != nil {
		return err
	}
	s.metric("publish_p50").atMost(3, "3 ms")
	s.metric("e2e_p99").atMost(25, "25 ms")
	return nil
}

func (r *runner) batchScenario(ctx context.Context, s *Scenario) error {
	run, err := r.prepareService(ctx, 2, s)
	if err != nil {
		return err
	}
	s.param("batch", r.opt.batch)
	s.param("clients", r.opt.batchClients)
	s.param("workers/tenant", r.opt.workers)
	// Probe the endpoint with an empty body: an existing endpoint answers 400, a missing one 404 or 405.
	status, _, err := r.do(ctx, http.MethodPost, run.srv.URL+"/api/v1/messages/batch", []byte(`{}`))
	if err != nil {
		return err
	}
	if status == http.StatusNotFound || status == http.StatusMethodNotAllowed {
		s.Status = "endpoint missing"
		s.Note = fmt.Sprintf("POST /api/v1/messages/batch answered %d: the batch endpoint is not in this build", status)
		return nil
	}
	jobs := (r.opt.messages + r.opt.batch - 1) / r.opt.batch
	bodies := make([][]byte, jobs)
	for j := range bodies {
		var b bytes.Buffer
		b.WriteString(`{"tenant_id":"` + run.tenants[j%len(run.tenants)].String() + `","messages":[`)
		for i := j * r.opt.batch; i < min(r.opt.messages, (j+1)*r.opt.batch); i++ {
			if i > j*r.opt.batch {
				b.WriteByte(',')
			}
			b.WriteString(`{"payload":`)
			b.Write(makePayload(i, r.opt.payload))
			b.WriteByte('}')
		}
		b.WriteString(`]}`)
		bodies[j] = b.Bytes()
	}
	job := func(ctx context.Context, j int) ([]uuid.UUID, error) {
		status, out, err := r.do(ctx, http.MethodPost, run.srv.URL+"/api/v1/messages/batch", bodies[j])
		if err != nil {
			return nil, err
		}
		if status != http.StatusAccepted {
			return nil, fmt.Errorf("HTTP %d: %s", status, bytes.TrimSpace(out))
		}
		var a struct{ IDs []uuid.UUID }
		if err := json.Unmarshal(out, &a); err != nil {
			return nil, err
		}
		return a.IDs, nil
	}
	return r.measurePipeline(ctx, s, run, jobs, r.opt.batchClients, job)
}

// measurePipeline runs the load, waits until every accepted message is stored and records the results.
func (r *runner) measurePipeline(ctx context.Context, s *Scenario, run *serviceRun, jobs, clients int,
	job func(ctx context.Context, i int) ([]uuid.UUID, error)) error {
	before, _ := run.srv.metrics(ctx, r.client)
	cpu0 := r.snapCPU(run.srv.PID())
	var res loadResult
	if r.pace > 0 {
		res = runPaced(ctx, jobs, r.pace, job)
	} else {
		groups := 1
		if r.opt.clientMix == "tenant" && s.ID == 1 {
			groups = len(run.tenants)
		}
		res = runLoad(ctx, jobs, clients, groups, job)
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	fmt.Printf("   published: %d requests ok, %d failed, %d messages accepted in %s\n",
		res.requests, res.failed, len(res.ids), res.end.Sub(res.start).Round(time.Millisecond))
	if res.failed > 0 && !r.lastAttempt && looksLikeOutage(errors.New(res.firstErr)) {
		// Most likely another process stopped the shared broker: measure again rather than report the outage.
		return fmt.Errorf("%d of %d requests failed: %s", res.failed, jobs, truncate(res.firstErr, 200))
	}
	if _, err := r.awaitRows(ctx, run.env.pool, run.table, len(res.ids)); err != nil {
		return err
	}
	cpu1 := r.snapCPU(run.srv.PID())
	after, err := run.srv.metrics(ctx, r.client)
	if err != nil {
		return err
	}
	st, err := storageStats(ctx, run.env.pool, run.table, res.ids)
	if err != nil {
		return err
	}

	elapsed := res.end.Sub(res.start)
	perMsg := len(res.ids) > res.requests
	s.add("publish_rate", "publish requests/s", float64(res.requests)/elapsed.Seconds(), "1/s",
		fmtRate(float64(res.requests)/elapsed.Seconds()))
	if perMsg {
		s.add("accept_rate", "messages accepted/s", float64(len(res.ids))/elapsed.Seconds(), "1/s",
			fmtRate(float64(len(res.ids))/elapsed.Seconds()))
	}
	name := "publish latency"
	if perMsg {
		name = "batch request latency"
	}
	p50, p99 := percentile(res.latencies, 0.50), percentile(res.latencies, 0.99)
	s.add("publish_p50", name+" p50", ms(p50), "ms", fmtMS(p50))
	s.add("publish_p99", name+" p99", ms(p99), "ms", fmtMS(p99))
	if res.failed > 0 {
		s.add("publish_failed", "failed requests", float64(res.failed), "", fmtInt(float64(res.failed)))
		s.Note = "first failure: " + truncate(res.firstErr, 200)
	}
	r.recordStorage(s, st, res.start, cpu0, cpu1)
	skipped := after["msgsvc_messages_duplicates_total"] - before["msgsvc_messages_duplicates_total"]
	s.add("dup_skipped", "redeliveries skipped (duplicates_total)", skipped, "", fmtInt(skipped))
	if pubs := after["msgsvc_messages_per_publish_count"] - before["msgsvc_messages_per_publish_count"]; pubs > 0 {
		per := (after["msgsvc_messages_per_publish_sum"] - before["msgsvc_messages_per_publish_sum"]) / pubs
		s.add("per_publish", "mean messages per AMQP publish (envelope size)", per, "", fmt.Sprintf("%.1f", per))
	}
	if ins := after["msgsvc_messages_per_insert_count"] - before["msgsvc_messages_per_insert_count"]; ins > 0 {
		per := (after["msgsvc_messages_per_insert_sum"] - before["msgsvc_messages_per_insert_sum"]) / ins
		s.add("per_insert", "mean messages per insert statement (the service's count)", per, "", fmt.Sprintf("%.1f", per))
	}
	return nil
}

// storeStats describes what reached the table.
type storeStats struct {
	rows, distinct int64
	txs            int64 // store transactions: rows of one share stored_at = now(), the transaction's start
	lastStored     time.Time
	p50, p99       float64 // publish→stored, seconds
	lost, extra    int     // accepted but not stored; stored but never accepted
}

// awaitRows polls the row count of table until it reaches want, or until it made no progress for
// -store-timeout.
func (r *runner) awaitRows(ctx context.Context, pool *pgxpool.Pool, table string, want int) (int64, error) {
	var last int64 = -1
	progress := time.Now()
	for {
		var n int64
		if err := pool.QueryRow(ctx, "SELECT count(*) FROM "+table).Scan(&n); err != nil {
			return n, err
		}
		if n >= int64(want) {
			return n, nil
		}
		if n != last {
			last, progress = n, time.Now()
		} else if time.Since(progress) > r.opt.storeTimeout {
			fmt.Printf("   storage stalled at %d of %d rows for %s; counting the rest as lost\n", n, want, r.opt.storeTimeout)
			return n, nil
		}
		select {
		case <-ctx.Done():
			return n, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func storageStats(ctx context.Context, pool *pgxpool.Pool, table string, accepted []uuid.UUID) (storeStats, error) {
	var st storeStats
	var last *time.Time
	var p50, p99 *float64
	err := pool.QueryRow(ctx, `SELECT count(*), count(DISTINCT id), count(DISTINCT (tenant_id, stored_at)), max(stored_at),
		percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM stored_at - created_at))::float8,
		percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM stored_at - created_at))::float8
		FROM `+table).Scan(&st.rows, &st.distinct, &st.txs, &last, &p50, &p99)
	if err != nil {
		return st, fmt.Errorf("storage stats: %w", err)
	}
	if last != nil {
		st.lastStored = *last
	}
	if p50 != nil {
		st.p50, st.p99 = *p50, *p99
	}
	rows, err := pool.Query(ctx, "SELECT DISTINCT id FROM "+table)
	if err != nil {
		return st, err
	}
	stored, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
	if err != nil {
		return st, err
	}
	set := make(map[uuid.UUID]struct{}, len(stored))
	for _, id := range stored {
		set[id] = struct{}{}
	}
	acc := make(map[uuid.UUID]struct{}, len(accepted))
	for _, id := range accepted {
		acc[id] = struct{}{}
		if _, ok := set[id]; !ok {
			st.lost++
		}
	}
	for _, id := range stored {
		if _, ok := acc[id]; !ok {
			st.extra++
		}
	}
	return st, nil
}

// recordStorage adds the storage and CPU results shared by scenarios 1, 2 and 3.
func (r *runner) recordStorage(s *Scenario, st storeStats, start time.Time, cpu0, cpu1 cpuSnap) {
	span := st.lastStored.Sub(start)
	if st.distinct > 0 && span > 0 {
		rate := float64(st.distinct) / span.Seconds()
		s.add("stored_rate", "stored messages/s (first publish → last stored)", rate, "1/s", fmtRate(rate))
		s.add("stored_span", "first publish → last stored", span.Seconds(), "s", fmtSeconds(span))
	} else {
		s.na("stored_rate", "stored messages/s (first publish → last stored)", "nothing stored")
	}
	s.add("e2e_p50", "publish→stored latency p50", st.p50*1000, "ms", fmtMSf(st.p50*1000))
	s.add("e2e_p99", "publish→stored latency p99", st.p99*1000, "ms", fmtMSf(st.p99*1000))
	s.add("lost", "lost (accepted, not stored)", float64(st.lost), "", fmtInt(float64(st.lost))).zero()
	s.add("dup_rows", "duplicate rows (rows − distinct ids)", float64(st.rows-st.distinct), "",
		fmtInt(float64(st.rows-st.distinct))).zero()
	if st.txs > 0 {
		s.add("rows_per_tx", "mean rows per store transaction", float64(st.rows)/float64(st.txs), "",
			fmt.Sprintf("%.1f", float64(st.rows)/float64(st.txs)))
	}
	if st.extra > 0 {
		s.add("extra", "stored but never accepted", float64(st.extra), "", fmtInt(float64(st.extra)))
	}
	use := cpuBetween(cpu0, cpu1)
	n := float64(st.distinct)
	per := func(key, name string, v float64, ok bool) {
		if !ok || n == 0 {
			s.na(key, name, "n/a")
			return
		}
		s.add(key, name, v/n, "ms", fmt.Sprintf("%.3f ms", v/n))
	}
	if s.ID != 3 {
		per("cpu_service", "CPU per stored message: service", use.service, use.okService)
	}
	per("cpu_rabbitmq", "CPU per stored message: RabbitMQ", use.beam, use.okBeam)
	per("cpu_postgres", "CPU per stored message: PostgreSQL", use.pg, use.okP)
	per("cpu_harness", "CPU per stored message: harness (client)", use.own, true)
	s.add("machine_busy", fmt.Sprintf("machine CPU busy (%s window)", use.elapsed.Round(100*time.Millisecond)),
		100*use.machineBusy, "%", fmt.Sprintf("%.0f %%", 100*use.machineBusy))
	if use.machineMS > 0 {
		other := max(0, use.machineMS-use.service-use.beam-use.pg-use.own)
		s.add("cpu_other", "  of it outside the pipeline (other processes)", 100*other/use.machineAll, "%",
			fmt.Sprintf("%.0f %%", 100*other/use.machineAll))
	}
}

// startProfile fetches a 20 s CPU profile from the service while the load runs, when asked and available.
// The returned function waits for it.
func (r *runner) startProfile(ctx context.Context, srv *server, s *Scenario) func() {
	if !r.opt.cpuprofile {
		return func() {}
	}
	status, _, err := r.do(ctx, http.MethodGet, srv.PprofURL+"/debug/pprof/", nil)
	if err != nil || status != http.StatusOK {
		s.Note = strings.TrimSpace(s.Note + "\n-cpuprofile: the service exposes no /debug/pprof; skipped")
		return func() {}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		status, out, err := r.do(ctx, http.MethodGet, srv.PprofURL+"/debug/pprof/profile?seconds=20", nil)
		path := filepath.Join(r.root, "test", "output", "bench-cpu.pprof")
		switch {
		case err != nil:
			err = fmt.Errorf("fetch profile: %w", err)
		case status != http.StatusOK:
			err = fmt.Errorf("fetch profile: HTTP %d", status)
		default:
			err = errors.Join(os.MkdirAll(filepath.Dir(path), 0o755), os.WriteFile(path, out, 0o644))
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench: -cpuprofile:", err)
			return
		}
		fmt.Printf("   CPU profile: %s (go tool pprof %s %s)\n", path, r.binary, path)
		// The allocations since the start, most of them the load's.
		status, out, err = r.do(ctx, http.MethodGet, srv.PprofURL+"/debug/pprof/allocs", nil)
		if err == nil && status == http.StatusOK {
			path = filepath.Join(r.root, "test", "output", "bench-allocs.pprof")
			if err := os.WriteFile(path, out, 0o644); err == nil {
				fmt.Printf("   allocation profile: %s (go tool pprof -sample_index=alloc_space %s %s)\n", path, r.binary, path)
			}
		}
	}()
	return func() { <-done }
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// sweepDuringLoad gives one more tenant -sweep-rows messages two hours old, then sets its retention to one hour
// so that the service's retention sweep deletes them while the load runs (the change starts a sweep at once).
// The returned func waits for the sweep to finish and records how long it took.
func (r *runner) sweepDuringLoad(ctx context.Context, s *Scenario, run *serviceRun) (func() error, error) {
	tenant, err := r.createTenant(ctx, run.srv, "bench-expired", 1)
	if err != nil {
		return nil, err
	}
	part := pgx.Identifier{partitionName(tenant)}.Sanitize()
	run.table = "(SELECT * FROM messages WHERE tenant_id <> '" + tenant.String() + "') measured"
	t0 := time.Now()
	if _, err := run.env.pool.Exec(ctx, `INSERT INTO `+part+` (id, tenant_id, payload, created_at)
		SELECT gen_random_uuid(), $1, jsonb_build_object('seq', g, 'pad', repeat('x', 400)), now() - interval '2 hours' - make_interval(secs => g / 1000.0)
		FROM generate_series(1, $2::int) g`, tenant, r.opt.sweepRows); err != nil {
		return nil, fmt.Errorf("seed expired rows: %w", err)
	}
	if _, err := run.env.pool.Exec(ctx, "VACUUM (ANALYZE) "+part); err != nil {
		return nil, fmt.Errorf("vacuum: %w", err)
	}
	fmt.Printf("   seeded %s expired rows in %s\n", fmtInt(float64(r.opt.sweepRows)), time.Since(t0).Round(100*time.Millisecond))
	s.param("expired rows swept during the load", fmtInt(float64(r.opt.sweepRows)))
	status, out, err := r.do(ctx, http.MethodPut, run.srv.URL+"/api/v1/tenants/"+tenant.String()+"/config/retention", []byte(`{"max_age_seconds": 3600}`))
	if err != nil {
		return nil, err
	}
	if status != http.StatusOK {
		return nil, fmt.Errorf("set retention: HTTP %d: %s", status, bytes.TrimSpace(out))
	}
	began := time.Now()
	return func() error {
		for {
			m, err := run.srv.metrics(ctx, r.client)
			if err == nil && m["msgsvc_retention_deleted_total"] >= float64(r.opt.sweepRows) {
				break
			}
			if time.Since(began) > 10*time.Minute {
				return fmt.Errorf("the sweep did not finish in 10 minutes")
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(200 * time.Millisecond):
			}
		}
		d := time.Since(began)
		s.add("sweep_seconds", "sweep of the expired rows (until seen done, from the load's start)", d.Seconds(), "s", d.Round(100*time.Millisecond).String())
		return nil
	}, nil
}
