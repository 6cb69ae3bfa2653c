// Command bench measures the service end to end on this machine: it starts the real server binary as a
// separate process against the local PostgreSQL and RabbitMQ (its own database and virtual host per scenario,
// dropped at the end), drives it over HTTP and prints one table of results beside their targets.
//
//	go tool task bench                                  # every scenario, full sizes (a few minutes)
//	go tool task bench -- -messages 5000 -scenarios 1,3  # a quick run
//
// Scenarios: 1 publish → stored (one message per request), 2 the same through the batch endpoint, 3 the raw
// RabbitMQ → PostgreSQL pipeline without the service (the ceiling 1 and 2 are compared with), 4 pagination
// depth in a 1,000,000-row partition, 5 tenant scale (1,000 tenants: consumers live, memory, restart), 6 light
// load (200 msg/s, open loop: the latency a message pays when nothing is busy).
// The table is also written as JSON to test/output/bench.json.
package main

import (
	"context"
	"crypto/rand"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/acme/msgsvc/platform/broker"

	"github.com/acme/msgsvc/test/bench/devenv"
)

type options struct {
	scenarios map[int]bool
	list      string

	messages     int
	tenants      int
	payload      int
	clients      int
	workers      int
	batch        int
	batchClients int

	rawPublishers int
	rawWindow     int
	rawConsumers  int
	rawBatch      int
	rawPrefetch   int

	rows         int
	pageRequests int
	sweepRows    int

	scaleTenants   int
	scaleClients   int
	scalePool      int
	scalePoolBatch int
	lightRate      float64
	lightDuration  time.Duration

	clientMix    string
	repeat       int
	storeTimeout time.Duration
	out          string
	serverPkg    string
	cpuprofile   bool
	strict       bool
	keep         bool
	serverEnv    []string
}

type envFlag struct{ vals *[]string }

func (f envFlag) String() string {
	if f.vals == nil {
		return ""
	}
	return strings.Join(*f.vals, ",")
}

func (f envFlag) Set(v string) error {
	if !strings.Contains(v, "=") {
		return fmt.Errorf("want KEY=VALUE, got %q", v)
	}
	*f.vals = append(*f.vals, v)
	return nil
}

func parseFlags() options {
	var o options
	flag.StringVar(&o.list, "scenarios", "1,2,3,4,5,6", "scenarios to run, comma separated (1 publish, 2 batch publish, 3 raw pipeline, 4 pagination, 5 tenant scale, 6 light load)")
	flag.Float64Var(&o.lightRate, "light-rate", 200, "messages per second in scenario 6, spread over -tenants")
	flag.DurationVar(&o.lightDuration, "light-duration", 15*time.Second, "how long scenario 6 publishes")
	flag.IntVar(&o.messages, "messages", 50000, "messages published in scenarios 1, 2 and 3")
	flag.IntVar(&o.tenants, "tenants", 10, "tenants (queues in scenario 3) the messages are spread over")
	flag.IntVar(&o.payload, "payload", 512, "payload size in bytes (a JSON object)")
	flag.IntVar(&o.clients, "clients", 64, "concurrent HTTP clients in scenario 1")
	flag.StringVar(&o.clientMix, "client-mix", "spread", "how scenario 1's clients pick tenants: spread (each request goes to the next tenant in turn) or tenant (each client publishes for one tenant, as an application of that tenant would)")
	flag.IntVar(&o.workers, "workers", 3, "concurrency_config of the tenants of scenarios 1 and 2 (store workers in scenario 3)")
	flag.IntVar(&o.batch, "batch", 100, "messages per batch request in scenario 2")
	flag.IntVar(&o.batchClients, "batch-clients", 16, "concurrent HTTP clients in scenario 2")
	flag.IntVar(&o.rawPublishers, "raw-publishers", 4, "publisher connections in scenario 3")
	flag.IntVar(&o.rawWindow, "raw-window", 256, "unconfirmed publishes in flight per publisher in scenario 3")
	flag.IntVar(&o.rawConsumers, "raw-consumers", 0, "consumer channels per queue in scenario 3 (default: -workers)")
	flag.IntVar(&o.rawBatch, "raw-batch", 100, "most rows per COPY in scenario 3")
	flag.IntVar(&o.rawPrefetch, "raw-prefetch", 200, "prefetch per consumer channel in scenario 3")
	flag.IntVar(&o.rows, "rows", 1_000_000, "rows in the tenant partition of scenario 4")
	flag.IntVar(&o.pageRequests, "page-requests", 50, "requests per page measured in scenario 4")
	flag.IntVar(&o.sweepRows, "sweep-rows", 0, "expired rows of one more tenant that the retention sweep deletes while scenario 1 runs (0: no sweep); compare with a run without")
	flag.IntVar(&o.scaleTenants, "scale-tenants", 1000, "tenants created in scenario 5")
	flag.IntVar(&o.scaleClients, "scale-clients", 16, "concurrent HTTP clients creating tenants in scenario 5")
	flag.IntVar(&o.scalePool, "scale-pool", -1, "PARTITION_POOL_SIZE the service fills before scenario 5 creates its tenants (-1: -scale-tenants; 0: the default pool, not filled ahead)")
	flag.IntVar(&o.scalePoolBatch, "scale-pool-batch", 100, "PARTITION_POOL_BATCH while scenario 5 fills the pool ahead")
	flag.IntVar(&o.repeat, "repeat", 1, "run scenarios 1-3 this many times and report the run with the median stored/s (the machine is noisy)")
	flag.DurationVar(&o.storeTimeout, "store-timeout", 60*time.Second, "give up waiting for storage after this long without progress")
	flag.StringVar(&o.out, "out", "test/output/bench.json", "JSON report path (relative to the module root)")
	flag.StringVar(&o.serverPkg, "server-pkg", "./cmd/server", "main package of the server to build and run (e.g. a build that adds net/http/pprof)")
	flag.BoolVar(&o.cpuprofile, "cpuprofile", false, "fetch a 20 s CPU profile from the service during scenario 1 (the server runs with PPROF_ADDR)")
	flag.BoolVar(&o.strict, "strict", false, "exit 1 when a target is missed (errors always exit 1)")
	flag.BoolVar(&o.keep, "keep", false, "keep the databases and virtual hosts for inspection")
	flag.Var(envFlag{&o.serverEnv}, "env", "extra KEY=VALUE for the server's environment (repeatable), e.g. -env METRICS_PER_TENANT=false")
	flag.Parse()
	if o.clientMix != "spread" && o.clientMix != "tenant" {
		fmt.Fprintf(os.Stderr, "bench: -client-mix: %q is neither spread nor tenant\n", o.clientMix)
		os.Exit(2)
	}
	if o.scalePool < 0 {
		o.scalePool = o.scaleTenants
	}
	if o.rawConsumers == 0 {
		o.rawConsumers = o.workers
	}
	o.scenarios = map[int]bool{}
	for _, f := range strings.Split(o.list, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 || n > 6 {
			fmt.Fprintf(os.Stderr, "bench: -scenarios: %q is not a scenario 1..6\n", f)
			os.Exit(2)
		}
		o.scenarios[n] = true
	}
	for name, v := range map[string]int{"messages": o.messages, "tenants": o.tenants, "clients": o.clients, "workers": o.workers,
		"batch": o.batch, "batch-clients": o.batchClients, "raw-publishers": o.rawPublishers, "raw-window": o.rawWindow,
		"raw-batch": o.rawBatch, "raw-prefetch": o.rawPrefetch, "rows": o.rows, "page-requests": o.pageRequests,
		"scale-tenants": o.scaleTenants, "scale-clients": o.scaleClients, "repeat": o.repeat} {
		if v < 1 {
			fmt.Fprintf(os.Stderr, "bench: -%s must be at least 1\n", name)
			os.Exit(2)
		}
	}
	if o.payload < 32 {
		fmt.Fprintln(os.Stderr, "bench: -payload must be at least 32 bytes")
		os.Exit(2)
	}
	return o
}

// runner holds what every scenario shares.
type runner struct {
	opt        options
	root       string
	svc        services
	admin      *pgxpool.Pool      // the dev server's msgsvc database, for CREATE/DROP DATABASE only
	mgmt       *broker.Management // RabbitMQ management API, for the virtual hosts
	client     *http.Client       // drives the service
	binary     string
	adminKey   string // ADMIN_API_KEYS of the server, fresh for every run
	beam       int
	postmaster int
	envs       []*benchEnv
	servers    []*server

	lastAttempt bool    // a scenario reports what it measured, failures included, instead of asking for a rerun
	pace        float64 // requests per second of an open-loop load (scenario 6); 0: closed loop
}

func main() {
	os.Exit(run())
}

func run() int {
	opt := parseFlags()
	root, err := devenv.ModuleRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	r := &runner{opt: opt, root: root, adminKey: "bench-admin-" + rand.Text()}
	conns := max(opt.clients, opt.batchClients, opt.scaleClients) + 16
	r.client = &http.Client{
		Timeout: 60 * time.Second,
		Transport: &http.Transport{
			DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			MaxIdleConns:        conns,
			MaxIdleConnsPerHost: conns,
			IdleConnTimeout:     90 * time.Second,
			DisableCompression:  true,
		},
	}
	if r.svc, err = readServicesEnv(root); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	// Deleting a virtual host with thousands of queues takes minutes.
	if r.mgmt, err = broker.NewManagement(r.svc.ManagementURL, &http.Client{Timeout: 5 * time.Minute}); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	if r.admin, err = pgxpool.New(context.Background(), r.svc.DatabaseURL); err != nil {
		fmt.Fprintln(os.Stderr, "bench: connect to PostgreSQL:", err)
		return 1
	}
	defer r.admin.Close()
	r.beam, r.postmaster = beamPID(root), postmasterPID(root)
	if r.beam == 0 {
		fmt.Fprintln(os.Stderr, "bench: warning: RabbitMQ's beam.smp process not found; its CPU is not reported")
	}
	if r.postmaster == 0 {
		fmt.Fprintln(os.Stderr, "bench: warning: postmaster.pid not found under .dev/postgres/data; PostgreSQL CPU is not reported")
	}
	if err := os.MkdirAll(filepath.Join(root, ".dev", "bench"), 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	r.cleanLeftovers(ctx)
	r.warnForeignQueues(ctx)
	defer r.cleanup()

	needServer := opt.scenarios[1] || opt.scenarios[2] || opt.scenarios[4] || opt.scenarios[5] || opt.scenarios[6]
	if needServer {
		fmt.Printf("building the server (go build -o .dev/bench/server %s)\n", opt.serverPkg)
		if err := r.buildServer(ctx); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			return 1
		}
	}

	rep := &Report{Date: time.Now(), Machine: machine(), Commit: devenv.GitCommit(root), Options: strings.Join(os.Args[1:], " "),
		MgmtSampleSeconds: mgmtSampleSeconds(root)}
	ids := make([]int, 0, len(opt.scenarios))
	for id := range opt.scenarios {
		ids = append(ids, id)
	}
	// Light load (6) goes first, on a quiet machine: after the throughput and pagination scenarios RabbitMQ and
	// PostgreSQL keep busy for a while (their virtual hosts, queues and databases are being dropped), which
	// shows in its tail latency (p99 150-200 ms measured after them, 8-20 ms alone).
	sort.Slice(ids, func(i, j int) bool { return ids[i]%6 < ids[j]%6 })
	failed := false
	for _, id := range ids {
		if ctx.Err() != nil {
			break
		}
		runs := 1
		if id <= 3 {
			runs = opt.repeat
		}
		var tries []*Scenario
		for n := range runs {
			if ctx.Err() != nil {
				break
			}
			s := r.runScenario(ctx, id, n, runs)
			if s.Status == "error" {
				failed = true
			}
			tries = append(tries, s)
		}
		if len(tries) > 0 {
			rep.Scenarios = append(rep.Scenarios, medianRun(tries))
		}
	}
	compareWithRaw(rep)
	rep.countMissed()

	fmt.Println()
	fmt.Print(rep.Table())
	out := opt.out
	if !filepath.IsAbs(out) {
		out = filepath.Join(root, out)
	}
	if err := rep.writeJSON(out); err != nil {
		fmt.Fprintln(os.Stderr, "bench: write report:", err)
		failed = true
	} else {
		fmt.Printf("report: %s\n", out)
	}
	if ctx.Err() != nil {
		fmt.Fprintln(os.Stderr, "bench: interrupted")
		return 130
	}
	if failed || (opt.strict && rep.Missed > 0) {
		return 1
	}
	return 0
}

// runScenario runs one scenario in its own database and virtual host, and removes them afterwards. The
// servers are shared with other checkouts' tests, some of which stop them (test/faults): the scenario waits
// for them, and runs again (twice at most, said in its note) when it failed while they were down.
func (r *runner) runScenario(ctx context.Context, id, n, runs int) *Scenario {
	fn, name := r.scenario(id)
	if runs > 1 {
		fmt.Printf("\n== scenario %d (run %d of %d): %s\n", id, n+1, runs, name)
	} else {
		fmt.Printf("\n== scenario %d: %s\n", id, name)
	}
	var retried []string
	const attempts = 3
	for attempt := 0; ; attempt++ {
		s := newScenario(id, name)
		r.lastAttempt = attempt == attempts-1
		if err := r.waitHealthy(ctx, 5*time.Minute); err != nil {
			s.Status, s.Note = "error", err.Error()
			return s
		}
		// A restarted server has new processes: find them again.
		r.beam, r.postmaster = beamPID(r.root), postmasterPID(r.root)
		t0 := time.Now()
		err := fn(ctx, s)
		r.stopServers()
		r.dropEnvs()
		if err != nil && ctx.Err() == nil && !r.lastAttempt && (r.healthy(ctx) != nil || looksLikeOutage(err)) {
			fmt.Printf("   failed while the servers were down (%v); running it again\n", err)
			retried = append(retried, truncate(err.Error(), 120))
			continue
		}
		if err != nil {
			s.Status = "error"
			s.Note = strings.TrimSpace(strings.Join([]string{s.Note, err.Error()}, "\n"))
			fmt.Fprintf(os.Stderr, "scenario %d failed: %v\n", id, err)
		}
		for _, e := range retried {
			s.Note = strings.TrimSpace(s.Note + "\nran again after a server outage caused by another process: " + e)
		}
		fmt.Printf("   done in %s\n", time.Since(t0).Round(100*time.Millisecond))
		return s
	}
}

// looksLikeOutage tells errors that a server outage causes (the servers may be back by the time we look).
func looksLikeOutage(err error) bool {
	msg := err.Error()
	for _, s := range []string{"connection refused", "connection reset", "HTTP 503", "unavailable", "EOF", "broken pipe"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

// medianRun keeps, of repeated runs, the one with the median storage rate (the first error, if any).
func medianRun(tries []*Scenario) *Scenario {
	if len(tries) == 1 {
		return tries[0]
	}
	rates := make([]string, 0, len(tries))
	for _, s := range tries {
		if s.Status != "ok" {
			return s
		}
		m := s.metric("stored_rate")
		if m == nil || m.Value == nil {
			return s
		}
		rates = append(rates, m.Text)
	}
	sorted := append([]*Scenario(nil), tries...)
	sort.Slice(sorted, func(i, j int) bool {
		return *sorted[i].metric("stored_rate").Value < *sorted[j].metric("stored_rate").Value
	})
	med := sorted[(len(sorted)-1)/2]
	med.runs = tries
	med.param("runs", len(tries))
	med.Note = strings.TrimSpace(fmt.Sprintf("median of %d runs by stored/s (%s)\n%s", len(tries), strings.Join(rates, ", "), med.Note))
	return med
}

func (r *runner) scenario(id int) (func(context.Context, *Scenario) error, string) {
	switch id {
	case 1:
		return r.publishScenario, "publish → stored (POST /api/v1/messages, one message per request)"
	case 2:
		return r.batchScenario, "batch publish → stored (POST /api/v1/messages/batch)"
	case 3:
		return r.rawScenario, "raw pipeline: amqp091-go → quorum queues → COPY into PostgreSQL, no HTTP, no service"
	case 4:
		return r.paginationScenario, "pagination depth (GET /api/v1/messages)"
	case 6:
		return r.lightScenario, "light load (POST /api/v1/messages at a steady low rate)"
	default:
		return r.tenantScaleScenario, "tenant scale (POST /api/v1/tenants, consumers, memory, restart)"
	}
}

// compareWithRaw expresses the service's storage rate as a share of the raw pipeline measured in the same run.
func compareWithRaw(rep *Report) {
	var raw *float64
	for _, s := range rep.Scenarios {
		if s.ID == 3 {
			if m := s.metric("stored_rate"); m != nil && m.Value != nil && *m.Value > 0 {
				raw = m.Value
			}
		}
	}
	for _, s := range rep.Scenarios {
		if s.ID != 1 && s.ID != 2 || s.Status != "ok" {
			continue
		}
		rate := s.metric("stored_rate")
		var m *Metric
		if raw == nil || rate == nil || rate.Value == nil {
			m = s.na("raw_share", "stored/s as share of raw pipeline", "n/a (run scenario 3)")
		} else {
			m = s.add("raw_share", "stored/s as share of raw pipeline", 100**rate.Value / *raw, "%",
				fmt.Sprintf("%.0f %%", 100**rate.Value / *raw))
		}
		if s.ID == 2 {
			m.atLeast(85, "85 %")
		}
	}
	// What the broker and the database spend per stored message, against the raw pipeline's in the same run.
	var rawCPU float64
	for _, s := range rep.Scenarios {
		if s.ID == 3 {
			rawCPU = cpuPair(s)
		}
	}
	for _, s := range rep.Scenarios {
		if s.ID != 1 || s.Status != "ok" {
			continue
		}
		if c := cpuPair(s); rawCPU > 0 && c > 0 {
			s.add("cpu_vs_raw", "RabbitMQ + PostgreSQL CPU per message vs raw", c/rawCPU, "×",
				fmt.Sprintf("%.2f ×", c/rawCPU)).atMost(1.5, "1.5 ×")
		} else {
			s.na("cpu_vs_raw", "RabbitMQ + PostgreSQL CPU per message vs raw", "n/a (run scenario 3)")
		}
	}
	// Every round of a repeated scenario on a line of the note: the goals hold for each round, not the median.
	var rawRuns []*Scenario
	for _, s := range rep.Scenarios {
		if s.ID == 3 {
			rawRuns = s.runs
		}
	}
	for _, s := range rep.Scenarios {
		if s.ID > 3 || len(s.runs) < 2 {
			continue
		}
		var lines []string
		for i, run := range s.runs {
			line := fmt.Sprintf("run %d: %s stored/s", i+1, metricText(run, "stored_rate"))
			if s.ID != 3 {
				line += fmt.Sprintf(", publish p99 %s, service %s", metricText(run, "publish_p99"), metricText(run, "cpu_service"))
			}
			line += fmt.Sprintf(", RabbitMQ %s, PostgreSQL %s, lost %s, stored twice %s", metricText(run, "cpu_rabbitmq"),
				metricText(run, "cpu_postgres"), metricText(run, "lost"), metricText(run, "dup_rows"))
			if s.ID == 1 {
				line += fmt.Sprintf(", envelope %s, rows/tx %s", metricText(run, "per_publish"), metricText(run, "rows_per_tx"))
				if rawCPU > 0 {
					line += fmt.Sprintf(", vs raw median %.2f ×", cpuPair(run)/rawCPU)
				}
				if i < len(rawRuns) && cpuPair(rawRuns[i]) > 0 {
					line += fmt.Sprintf(", vs raw run %d %.2f ×", i+1, cpuPair(run)/cpuPair(rawRuns[i]))
				}
			}
			lines = append(lines, line)
		}
		s.Note = strings.TrimSpace(s.Note + "\n" + strings.Join(lines, "\n"))
	}
}

// metricText is a metric's text, "–" when it was not measured.
func metricText(s *Scenario, key string) string {
	if m := s.metric(key); m != nil && m.Text != "" {
		return strings.TrimSpace(m.Text)
	}
	return "–"
}

// cpuPair is a scenario's RabbitMQ plus PostgreSQL CPU per stored message, 0 when not measured.
func cpuPair(s *Scenario) float64 {
	b, p := s.metric("cpu_rabbitmq"), s.metric("cpu_postgres")
	if b == nil || p == nil || b.Value == nil || p.Value == nil {
		return 0
	}
	return *b.Value + *p.Value
}

func (r *runner) stopServers() {
	for _, s := range r.servers {
		if _, err := s.Stop(time.Minute); err != nil {
			fmt.Fprintln(os.Stderr, "bench: stop server:", err)
		}
	}
	r.servers = nil
}

// dropEnvs removes the scenarios' databases and virtual hosts; what cannot be removed now (a server is down)
// is tried again later.
func (r *runner) dropEnvs() {
	var left []*benchEnv
	for _, e := range r.envs {
		if err := r.dropEnv(e); err != nil {
			fmt.Fprintln(os.Stderr, "bench: will retry:", err)
			left = append(left, e)
		}
	}
	r.envs = left
}

func (r *runner) cleanup() {
	r.stopServers()
	r.dropEnvs()
	if len(r.envs) > 0 {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if r.waitHealthy(ctx, 2*time.Minute) == nil {
			r.dropEnvs()
		}
	}
}

// mgmtSampleSeconds reads how often the local RabbitMQ node samples its management statistics from the
// configuration services.sh wrote for it; 0 when it cannot tell.
func mgmtSampleSeconds(root string) int {
	b, err := os.ReadFile(filepath.Join(root, ".dev", "rabbitmq", "rabbitmq.conf"))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "management.sample_retention_policies.basic.minute"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), "=")))
			return n
		}
	}
	return 5 // RabbitMQ's default
}

func machine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), GoVersion: runtime.Version()}
	if out, err := exec.Command("nproc").Output(); err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(out))); err == nil {
			m.CPUs = n
		}
	}
	if out, err := exec.Command("lscpu").Output(); err == nil {
		for _, l := range strings.Split(string(out), "\n") {
			if v, ok := strings.CutPrefix(l, "Model name:"); ok {
				m.Model = strings.TrimSpace(v)
				break
			}
		}
	}
	if out, err := exec.Command("uname", "-r").Output(); err == nil {
		m.Kernel = strings.TrimSpace(string(out))
	}
	return m
}
