package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
)

// tenantScaleScenario creates many tenants, waits for every consumer, measures the idle service's memory,
// then restarts the service and times the reconciliation that brings every consumer back.
func (r *runner) tenantScaleScenario(ctx context.Context, s *Scenario) error {
	o := r.opt
	env, err := r.newEnv(ctx, 5)
	if err != nil {
		return err
	}
	srv, err := r.startServer(ctx, env, "s5")
	if err != nil {
		return err
	}
	s.param("tenants", fmtInt(float64(o.scaleTenants)))
	s.param("concurrency_config", 1)
	s.param("clients", o.scaleClients)
	rssEmpty, _ := rssBytes(srv.PID())
	beamEmpty, _ := rssBytes(r.beam)

	// At 10 tenants: publish and read latencies of the probe tenants, then 1,000 tenants created and deleted.
	probes, _, err := r.createTenants(ctx, srv, "bench-probe", 10, 1, o.scaleClients, nil)
	if err != nil {
		return err
	}
	settled10 := r.settle(ctx, srv)
	pub10, get10, err := r.probeWatched(ctx, srv, probes)
	if err != nil {
		return err
	}
	fmt.Printf("   at 10 tenants (settled after %s): publish p50 %s, GET /api/v1/messages p50 %s\n",
		settled10.Round(100*time.Millisecond), fmtMS(pub10), fmtMS(get10))
	gone, _, err := r.createTenants(ctx, srv, "bench-gone", 1000, 1, o.scaleClients, nil)
	if err != nil {
		return err
	}
	parts1k := r.partitionCount(ctx, env)
	delHTTP1k, delDrop1k, cpuDel1k, err := r.deleteTenants(ctx, srv, env, gone, o.scaleClients)
	if err != nil {
		return err
	}
	fmt.Printf("   1,000 tenants deleted at 1,010 (%d partitions): answered in %s, partitions dropped in %s%s\n", parts1k,
		delHTTP1k.Round(time.Millisecond), delDrop1k.Round(time.Millisecond), cpuPer(cpuDel1k, len(gone), "deletion"))

	// The pool is filled ahead of the creations (partitions attached in the background, before the burst).
	total := o.scaleTenants + len(probes)
	if o.scalePool > 0 && r.hasPool(ctx, env) {
		if _, err := srv.Stop(time.Minute); err != nil {
			return err
		}
		saved := r.opt.serverEnv
		r.opt.serverEnv = append(append([]string(nil), saved...), fmt.Sprintf("PARTITION_POOL_SIZE=%d", o.scalePool),
			fmt.Sprintf("PARTITION_POOL_BATCH=%d", o.scalePoolBatch))
		srv, err = r.startServer(ctx, env, "s5")
		r.opt.serverEnv = saved
		if err != nil {
			return err
		}
		if _, err := r.waitConsumers(ctx, srv, len(probes), time.Now(), 5*time.Minute); err != nil {
			return err
		}
		filled, n, err := r.waitPool(ctx, env, o.scalePool, 60*time.Minute)
		if err != nil {
			return err
		}
		s.add("pool_fill", fmt.Sprintf("partition pool filled to %s ahead of the creations", fmtInt(float64(o.scalePool))), filled.Seconds(), "s", fmtSeconds(filled))
		s.add("pool_fill_rate", "partitions attached ahead of time /s (refill rate)", float64(n)/filled.Seconds(), "1/s",
			fmt.Sprintf("%.1f /s", float64(n)/filled.Seconds()))
		fmt.Printf("   pool filled with %d partitions in %s\n", n, filled.Round(time.Millisecond))
		// The service vacuums the catalogue tables once the full pool is quiet (PARTITION_CATALOGUE_VACUUM_AFTER):
		// the creations start after it, as they would a while after a fill (autovacuum's catch-up came seconds
		// into them otherwise). A service without the metric (main before it) is not waited for.
		if _, ok := r.sample(ctx, srv, "msgsvc_partition_catalogue_vacuums_total"); ok {
			began := time.Now()
			for {
				if v, _ := r.sample(ctx, srv, "msgsvc_partition_catalogue_vacuums_total"); v >= 1 {
					fmt.Printf("   the service vacuumed the catalogue %s after the fill\n", time.Since(began).Round(100*time.Millisecond))
					break
				}
				if time.Since(began) > 2*time.Minute {
					fmt.Printf("   the service did not vacuum the catalogue within 2 minutes of the fill\n")
					break
				}
				time.Sleep(250 * time.Millisecond)
			}
		}
	}

	cpu0 := r.snapCPU(srv.PID())
	start := time.Now()
	// In blocks of 1,000, to see whether creation slows as tenants grow.
	var (
		lat     []time.Duration
		retried atomic.Int64
	)
	var (
		scaled     []uuid.UUID
		firstBlock float64
		firstProbe [2]float64 // the host's probe in the first block: pointer chasing, arithmetic
	)
	probe := startHostProbe(200 * time.Millisecond)
	defer probe.close()
	for from := 0; from < o.scaleTenants; from += 1000 {
		n := min(1000, o.scaleTenants-from)
		b0 := time.Now()
		c0 := r.snapCPU(srv.PID())
		ids, l, err := r.createTenants(ctx, srv, fmt.Sprintf("bench-scale-%d", from/1000), n, 1, o.scaleClients, &retried)
		if err != nil {
			return err
		}
		scaled = append(scaled, ids...)
		lat = append(lat, l...)
		d := time.Since(b0)
		rate := float64(n) / d.Seconds()
		b1 := time.Now()
		mem, compute, probeSpent := probe.between(b0, b1)
		if from == 0 {
			firstBlock, firstProbe = rate, [2]float64{mem, compute}
		}
		// How much slower the host itself ran than in the first block (other guests of a virtual machine slow
		// every process at once): a block whose CPU per creation rose with it was the host's, not the pipeline's.
		host := ""
		if mem > 0 && firstProbe[0] > 0 && firstProbe[1] > 0 {
			host = fmt.Sprintf("; the host's probe: pointer chasing %.2f ×, arithmetic %.2f × the first block's CPU time",
				mem/firstProbe[0], compute/firstProbe[1])
		}
		sortDurations(l)
		// The machine is shared: what other processes took during the block tells a slow block's cause.
		cu := cpuBetween(c0, r.snapCPU(srv.PID()))
		others := 0.0
		if cu.machineAll > 0 {
			others = 100 * max(0, cu.machineMS-cu.service-cu.beam-cu.pg-cu.own) / cu.machineAll
		}
		// The bench's own clients do the same work for every creation (a request, an answer to read): a host that
		// runs every process slower shows in their CPU per creation too (the host's probe taken out).
		clients := max(0, cu.own-probeSpent) / float64(n)
		// Which part paid for a slow block: CPU per creation of each, and whether the machine was busy at all.
		fmt.Printf("   tenants %d–%d created at %.1f /s (%.2f × the first block; p50 %s, p99 %s; other processes %.0f %% of the machine%s; "+
			"the bench's clients %.2f ms per creation%s)\n",
			from+1, from+n, rate, rate/firstBlock, fmtMS(percentile(l, 0.5)), fmtMS(percentile(l, 0.99)), others,
			cpuPer(cu, n, "creation"), clients, host)
		s.add(fmt.Sprintf("create_rate_%d", from/1000+1), fmt.Sprintf("tenants %s–%s created/s", fmtInt(float64(from+1)), fmtInt(float64(from+n))),
			rate, "1/s", fmt.Sprintf("%.1f /s", rate))
		if from > 0 {
			s.add(fmt.Sprintf("create_ratio_%d", from/1000+1), fmt.Sprintf("tenants %s–%s: rate ÷ the first block's", fmtInt(float64(from+1)), fmtInt(float64(from+n))),
				rate/firstBlock, "", fmt.Sprintf("%.2f ×", rate/firstBlock)).atLeast(0.8, "0.8 ×")
		}
	}
	created := time.Since(start)
	cpuCreate := cpuBetween(cpu0, r.snapCPU(srv.PID()))
	s.add("create_503", "creations answered 503 and retried (no tenant is left half made)", float64(retried.Load()), "", fmtInt(float64(retried.Load())))
	fmt.Printf("   created %d tenants in %s\n", o.scaleTenants, created.Round(time.Millisecond))
	sortDurations(lat)
	rate := float64(o.scaleTenants) / created.Seconds()
	s.add("create_rate", "tenants created/s", rate, "1/s", fmt.Sprintf("%.1f /s", rate))
	s.add("create_p50", "create latency p50", ms(percentile(lat, 0.5)), "ms", fmtMS(percentile(lat, 0.5)))
	s.add("create_p99", "create latency p99", ms(percentile(lat, 0.99)), "ms", fmtMS(percentile(lat, 0.99))).atMost(250, "250 ms")
	if pooled, ok := r.sample(ctx, srv, `msgsvc_partition_pool_claims_total{source="pool"}`); ok {
		inline, _ := r.sample(ctx, srv, `msgsvc_partition_pool_claims_total{source="inline"}`)
		s.add("create_pooled", "creations that claimed a pooled partition / attached their own (this server's)", pooled, "",
			fmt.Sprintf("%s / %s", fmtInt(pooled), fmtInt(inline)))
	}
	// Polled once the creations are done, not beside them: a scrape of /metrics grows with the tenants' series
	// (some 35 ms of the service's CPU and as much of this process's at 9,000: waitConsumers), and one every 2 s
	// during the blocks took from the later blocks' rate a share the first block did not pay (about 2 % of the
	// machine at the end). The consumers start with their creations, so the figure is the same to within the
	// poll's period.
	live, err := r.waitConsumers(ctx, srv, total, start, 30*time.Minute)
	if err != nil {
		s.na("live", "first create → all consumers running", "not reached").atMost(60, "60 s")
		return err
	}
	s.add("live", "first create → all consumers running", live.Seconds(), "s", fmtSeconds(live)).atMost(60, "60 s")
	s.add("live_lag", "last create answered → all consumers running", (live - created).Seconds(), "s", fmtSeconds(live-created))
	per := func(key, name string, v float64, ok bool) {
		if ok {
			s.add(key, name, v/float64(o.scaleTenants), "ms", fmtMSf(v/float64(o.scaleTenants)))
		}
	}
	per("cpu_create_service", "CPU per tenant created: service", cpuCreate.service, cpuCreate.okService)
	per("cpu_create_rabbitmq", "CPU per tenant created: RabbitMQ", cpuCreate.beam, cpuCreate.okBeam)
	per("cpu_create_postgres", "CPU per tenant created: PostgreSQL", cpuCreate.pg, cpuCreate.okP)
	s.add("create_busy", "machine CPU busy while creating", 100*cpuCreate.machineBusy, "%", fmt.Sprintf("%.0f %%", 100*cpuCreate.machineBusy))

	// Idle: let the creation's garbage be collected before reading resident memory.
	time.Sleep(10 * time.Second)
	rss, ok := rssBytes(srv.PID())
	if !ok {
		return fmt.Errorf("read VmRSS of the service")
	}
	m, _ := srv.metrics(ctx, r.client)
	s.add("rss", fmt.Sprintf("service RSS, %s idle tenants", fmtInt(float64(o.scaleTenants))), rss, "B", fmtMB(rss))
	s.add("rss_empty", "service RSS, no tenants (after start)", rssEmpty, "B", fmtMB(rssEmpty))
	// Issue 20's goal for an idle tenant's memory: at most 40 MB of RSS per 1,000 (about 70 MB before).
	perK := (rss - rssEmpty) * 1000 / float64(o.scaleTenants)
	s.add("rss_per_1k", "service RSS over the empty service, per 1,000 idle tenants", perK, "B", fmtMB(perK)).atMost(40<<20, "40 MB")
	s.add("goroutines", "service goroutines (go_goroutines)", m["go_goroutines"], "", fmtInt(m["go_goroutines"]))
	s.add("amqp_connections", "service AMQP consumer connections", m["msgsvc_amqp_connections"], "", fmtInt(m["msgsvc_amqp_connections"]))
	s.add("amqp_channels", "service AMQP consumer channels", m["msgsvc_amqp_channels"], "", fmtInt(m["msgsvc_amqp_channels"]))
	// What reconciliation did meanwhile: a pass that inspects or repairs many queues costs the broker too.
	s.add("reconcile_runs", "reconciliation passes so far", m["msgsvc_reconcile_runs_total"], "", fmtInt(m["msgsvc_reconcile_runs_total"]))
	s.add("reconcile_inspections", "queues inspected by passive declare in those passes", m["msgsvc_reconcile_queue_inspections_total"], "",
		fmtInt(m["msgsvc_reconcile_queue_inspections_total"]))
	s.add("reconcile_repairs", "repairs in those passes (every kind)", m["msgsvc_reconcile_repairs_total"], "", fmtInt(m["msgsvc_reconcile_repairs_total"]))
	s.add("consumer_starts", "consumer starts (every reason) / start failures", m["msgsvc_consumer_restarts_total"], "",
		fmt.Sprintf("%s / %s", fmtInt(m["msgsvc_consumer_restarts_total"]), fmtInt(m["msgsvc_consumer_start_failures_total"])))
	if b, ok := rssBytes(r.beam); ok {
		s.add("rss_rabbitmq", "RabbitMQ RSS (whole node)", b, "B", fmtMB(b))
		s.add("rss_rabbitmq_per_1k", "RabbitMQ RSS over the empty node, per 1,000 tenants", (b-beamEmpty)*1000/float64(o.scaleTenants), "B",
			fmtMB((b-beamEmpty)*1000/float64(o.scaleTenants)))
	}
	idle0 := r.snapCPU(srv.PID())
	time.Sleep(20 * time.Second)
	idle := cpuBetween(idle0, r.snapCPU(srv.PID()))
	share := 100 * idle.service / float64(idle.elapsed.Milliseconds())
	s.add("idle_cpu", "service CPU while idle (20 s)", share, "%", fmt.Sprintf("%.2f %% of a core", share))
	if idle.okBeam {
		b := 100 * idle.beam / float64(idle.elapsed.Milliseconds())
		s.add("idle_cpu_rabbitmq", "RabbitMQ CPU while idle (20 s)", b, "%", fmt.Sprintf("%.1f %% of a core", b))
		s.add("idle_cpu_rabbitmq_per_1k", "RabbitMQ idle CPU per 1,000 tenants", b*1000/float64(o.scaleTenants), "%",
			fmt.Sprintf("%.1f %% of a core", b*1000/float64(o.scaleTenants)))
	}

	shutdown, err := srv.Stop(time.Minute)
	if err != nil {
		return err
	}
	s.add("shutdown", "shutdown after SIGTERM", shutdown.Seconds(), "s", fmtSeconds(shutdown))
	fmt.Printf("   stopped in %s; restarting\n", shutdown.Round(time.Millisecond))

	srv, err = r.spawnServer(env, "s5")
	if err != nil {
		return err
	}
	restart := srv.Started()
	if err := srv.WaitReady(ctx, 5*time.Minute); err != nil {
		return err
	}
	ready := time.Since(restart)
	back, err := r.waitConsumers(ctx, srv, total, restart, 5*time.Minute)
	s.add("restart_ready", "restart → /readyz 200", ready.Seconds(), "s", fmtSeconds(ready))
	if err != nil {
		s.na("restart_live", "restart → all consumers running", "not reached").atMost(30, "30 s")
		return err
	}
	s.add("restart_live", "restart → all consumers running", back.Seconds(), "s", fmtSeconds(back)).atMost(60, "60 s")

	// At N tenants: the same probe tenants' publish and read latencies, once the restart has settled, as the
	// probe at 10 tenants did: the goal is about the steady state at N, not a restart's aftermath.
	settled := r.settle(ctx, srv)
	fmt.Printf("   settled %s after all consumers ran\n", settled.Round(100*time.Millisecond))
	pubN, getN, err := r.probeWatched(ctx, srv, probes)
	if err != nil {
		return err
	}
	partsN := r.partitionCount(ctx, env)
	fmt.Printf("   at %d tenants (%d partitions): publish p50 %s, GET /api/v1/messages p50 %s\n", total, partsN, fmtMS(pubN), fmtMS(getN))
	s.add("publish_p50_10", "publish p50 at 10 tenants", ms(pub10), "ms", fmtMS(pub10))
	s.add("publish_p50_n", fmt.Sprintf("publish p50 at %s tenants (%s partitions)", fmtInt(float64(total)), fmtInt(float64(partsN))), ms(pubN), "ms", fmtMS(pubN))
	s.add("publish_p50_ratio", "publish p50: N tenants ÷ 10 tenants", float64(pubN)/float64(pub10), "", fmt.Sprintf("%.2f ×", float64(pubN)/float64(pub10))).atMost(1.5, "1.5 ×")
	s.add("list_p50_10", "GET /api/v1/messages (cursor page) p50 at 10 tenants", ms(get10), "ms", fmtMS(get10))
	s.add("list_p50_n", fmt.Sprintf("GET /api/v1/messages (cursor page) p50 at %s tenants", fmtInt(float64(total))), ms(getN), "ms", fmtMS(getN))
	s.add("list_p50_ratio", "GET /api/v1/messages p50: N tenants ÷ 10 tenants", float64(getN)/float64(get10), "", fmt.Sprintf("%.2f ×", float64(getN)/float64(get10))).atMost(1.5, "1.5 ×")

	// A second replica joins: the tenants are shared (each consumed by its owner only), the first replica drains
	// and hands over about half.
	joined := time.Now()
	b, err := r.startServer(ctx, env, "s5b")
	if err != nil {
		return err
	}
	var ma, mb map[string]float64
	for {
		ma, _ = srv.metrics(ctx, r.client)
		mb, _ = b.metrics(ctx, r.client)
		ra, rb := ma["msgsvc_consumers_running"], mb["msgsvc_consumers_running"]
		if rb > 0 && ra+rb == float64(total) && ma["msgsvc_tenants_owned"] == ra && mb["msgsvc_tenants_owned"] == rb {
			break
		}
		if time.Since(joined) > 5*time.Minute {
			s.na("join", "second replica starts → tenants shared", "not reached")
			return fmt.Errorf("tenants not shared 5 min after the second replica started: running %v + %v", ra, rb)
		}
		time.Sleep(500 * time.Millisecond)
	}
	join := time.Since(joined)
	s.add("join", "second replica starts → tenants shared, each consumed once", join.Seconds(), "s", fmtSeconds(join))
	time.Sleep(10 * time.Second)
	ma, _ = srv.metrics(ctx, r.client)
	mb, _ = b.metrics(ctx, r.client)
	for _, rep := range []struct {
		key string
		srv *server
		m   map[string]float64
	}{{"a", srv, ma}, {"b", b, mb}} {
		rss, _ := rssBytes(rep.srv.PID())
		s.add("two_"+rep.key+"_owned", "two replicas: "+rep.key+" tenants owned", rep.m["msgsvc_tenants_owned"], "", fmtInt(rep.m["msgsvc_tenants_owned"]))
		s.add("two_"+rep.key+"_rss", "two replicas: "+rep.key+" RSS", rss, "B", fmtMB(rss))
		s.add("two_"+rep.key+"_goroutines", "two replicas: "+rep.key+" goroutines", rep.m["go_goroutines"], "", fmtInt(rep.m["go_goroutines"]))
		s.add("two_"+rep.key+"_channels", "two replicas: "+rep.key+" AMQP consumer connections / channels",
			rep.m["msgsvc_amqp_channels"], "", fmt.Sprintf("%s / %s", fmtInt(rep.m["msgsvc_amqp_connections"]), fmtInt(rep.m["msgsvc_amqp_channels"])))
	}
	// The second replica stops: its tenants go back to the first one.
	left := time.Now()
	if _, err := b.Stop(time.Minute); err != nil {
		return err
	}
	back, err = r.waitConsumers(ctx, srv, total, left, 2*time.Minute)
	if err != nil {
		s.na("leave", "second replica stops (SIGTERM) → first consumes all", "not reached").atMost(30, "30 s")
		return err
	}
	s.add("leave", "second replica stops (SIGTERM) → first consumes all", back.Seconds(), "s", fmtSeconds(back)).atMost(30, "30 s")

	// 1,000 tenants deleted at N, against 1,000 deleted at 1,010.
	partsDel := r.partitionCount(ctx, env)
	deleted := scaled[len(scaled)-min(1000, len(scaled)):]
	delHTTPN, delDropN, cpuDelN, err := r.deleteTenants(ctx, srv, env, deleted, o.scaleClients)
	if err != nil {
		return err
	}
	fmt.Printf("   1,000 tenants deleted at %d (%d partitions): answered in %s, partitions dropped in %s%s\n", total, partsDel,
		delHTTPN.Round(time.Millisecond), delDropN.Round(time.Millisecond), cpuPer(cpuDelN, len(deleted), "deletion"))
	s.add("delete_1k_http_1k", fmt.Sprintf("1,000 tenants deleted at 1,010 (%s partitions): all answered", fmtInt(float64(parts1k))), delHTTP1k.Seconds(), "s", fmtSeconds(delHTTP1k))
	s.add("delete_1k_1k", "… and their partitions dropped", delDrop1k.Seconds(), "s", fmtSeconds(delDrop1k))
	s.add("delete_1k_http_n", fmt.Sprintf("1,000 tenants deleted at %s (%s partitions): all answered", fmtInt(float64(total)), fmtInt(float64(partsDel))), delHTTPN.Seconds(), "s", fmtSeconds(delHTTPN))
	s.add("delete_1k_n", "… and their partitions dropped", delDropN.Seconds(), "s", fmtSeconds(delDropN))
	s.add("delete_ratio", "deleting 1,000 (partitions dropped): at N ÷ at 1,010", delDropN.Seconds()/delDrop1k.Seconds(), "",
		fmt.Sprintf("%.2f ×", delDropN.Seconds()/delDrop1k.Seconds())).atMost(2, "2 ×")
	return nil
}

// settle waits until the service, RabbitMQ and PostgreSQL each used under a tenth of a core over half a second
// (60 s at most: the partition pool's refill, a restart's reconciliation) and returns how long that took.
func (r *runner) settle(ctx context.Context, srv *server) time.Duration {
	began := time.Now()
	limit := uint64(clockTicks * 0.5 * 0.1) // a tenth of a core over half a second, in clock ticks
	for time.Since(began) < time.Minute && ctx.Err() == nil {
		a := r.busy(srv)
		time.Sleep(500 * time.Millisecond)
		b := r.busy(srv)
		if b[0]-a[0] <= limit && b[1]-a[1] <= limit && b[2]-a[2] <= limit {
			break
		}
	}
	return time.Since(began)
}

// busy returns the CPU time so far, in clock ticks, of the service, RabbitMQ and PostgreSQL.
func (r *runner) busy(srv *server) [3]uint64 {
	svc, _ := cpuTicks(srv.PID())
	beam, _ := cpuTicks(r.beam)
	pg, _ := clusterTicks(r.postmaster)
	return [3]uint64{svc, beam, pg}
}

// probeRounds is how many times probeWatched probes: a round lasts about 0.6 s (200 reads), so that one piece of
// background work in it moved a round's p50 by up to two thirds (1.66 × in two of some 25 runs, 2026-12-07, with
// nothing found running); the p50 of the three rounds' samples together is the figure.
const probeRounds = 3

// probeWatched runs probeLatency probeRounds times, the processes settled before each, and returns the p50s of
// all the rounds' samples together. For each round it says what else ran meanwhile: each process's CPU over the
// round, and the reconciliation passes, retention sweeps, view refreshes, partition reconciliations and garbage
// collections that started in it (one scrape of /metrics before and one after, outside the round: the processes
// settle again after the first, which at 10,000 tenants costs the service tens of milliseconds), and the round's
// own p50s, so that a round off the others can be told from the work beside it.
func (r *runner) probeWatched(ctx context.Context, srv *server, probes []uuid.UUID) (pub, get time.Duration, err error) {
	var pubs, gets []time.Duration
	for round := 1; round <= probeRounds; round++ {
		before, _ := srv.metrics(ctx, r.client)
		r.settle(ctx, srv)
		began, cpu := time.Now(), r.busy(srv)
		p, g, err := r.probeLatency(ctx, srv, probes)
		if err != nil {
			return 0, 0, err
		}
		took, cpuAfter := time.Since(began), r.busy(srv)
		pubs, gets = append(pubs, p...), append(gets, g...)
		after, _ := srv.metrics(ctx, r.client)
		if before == nil || after == nil {
			continue
		}
		share := func(i int) float64 { return float64(cpuAfter[i]-cpu[i]) / clockTicks / took.Seconds() * 100 }
		var started []string
		for _, c := range []struct{ what, metric string }{
			{"passes", "msgsvc_reconcile_runs_total"},
			{"sweeps", "msgsvc_retention_sweep_duration_seconds_count"},
			{"view refreshes", "msgsvc_view_refreshes_total"},
			{"partition reconciliations", "msgsvc_partition_reconcile_runs_total"},
			{"garbage collections", "go_gc_duration_seconds_count"},
		} {
			started = append(started, fmt.Sprintf("%s %.0f", c.what, after[c.metric]-before[c.metric]))
		}
		sortDurations(p)
		sortDurations(g)
		fmt.Printf("   probe %d of %d, %s: publish p50 %s, GET p50 %s; CPU service %.0f %%, RabbitMQ %.0f %%, PostgreSQL %.0f %% "+
			"of a core; %s started in it or by the scrape after it\n", round, probeRounds, took.Round(10*time.Millisecond),
			fmtMS(percentile(p, 0.5)), fmtMS(percentile(g, 0.5)), share(0), share(1), share(2), strings.Join(started, ", "))
	}
	sortDurations(pubs)
	sortDurations(gets)
	return percentile(pubs, 0.5), percentile(gets, 0.5), nil
}

// probeLatency publishes 40 messages to each probe tenant (4 clients, one message per request) and then reads
// the second page (with the first page's cursor) of each 20 times; it returns every publish's and read's latency.
func (r *runner) probeLatency(ctx context.Context, srv *server, probes []uuid.UUID) (pubs, gets []time.Duration, err error) {
	const each = 40
	payload := makePayload(0, 512)
	var (
		mu   sync.Mutex
		next atomic.Int64
		wg   sync.WaitGroup
		errs = make(chan error, 4)
	)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= each*len(probes) {
					return
				}
				body, _ := json.Marshal(map[string]any{"tenant_id": probes[i%len(probes)], "payload": json.RawMessage(payload)})
				t0 := time.Now()
				st, out, err := r.do(ctx, http.MethodPost, srv.URL+"/api/v1/messages", body)
				d := time.Since(t0)
				if err == nil && st != http.StatusAccepted {
					err = fmt.Errorf("publish: HTTP %d: %s", st, out)
				}
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				pubs = append(pubs, d)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	select {
	case err := <-errs:
		return nil, nil, err
	default:
	}
	for _, id := range probes {
		var cursor string
		for try := 0; cursor == ""; try++ {
			st, out, err := r.do(ctx, http.MethodGet, fmt.Sprintf("%s/api/v1/messages?tenant_id=%s&limit=20", srv.URL, id), nil)
			if err != nil || st != http.StatusOK {
				return nil, nil, fmt.Errorf("list messages: HTTP %d: %s: %v", st, out, err)
			}
			var page struct {
				NextCursor *string `json:"next_cursor"`
			}
			_ = json.Unmarshal(out, &page)
			if page.NextCursor != nil {
				cursor = *page.NextCursor
			} else if try > 300 {
				return nil, nil, fmt.Errorf("probe tenant %s has no second page after 30 s", id)
			} else {
				time.Sleep(100 * time.Millisecond)
			}
		}
		for range 20 {
			t0 := time.Now()
			st, out, err := r.do(ctx, http.MethodGet, fmt.Sprintf("%s/api/v1/messages?tenant_id=%s&limit=20&cursor=%s", srv.URL, id, url.QueryEscape(cursor)), nil)
			if err != nil || st != http.StatusOK {
				return nil, nil, fmt.Errorf("list messages with a cursor: HTTP %d: %s: %v", st, out, err)
			}
			gets = append(gets, time.Since(t0))
		}
	}
	return pubs, gets, nil
}

// cpuPer describes u spent on n operations (what): "; CPU per creation: service …, RabbitMQ …, PostgreSQL … ms;
// machine busy … %".
func cpuPer(u cpuUse, n int, what string) string {
	if n == 0 {
		return ""
	}
	f := float64(n)
	return fmt.Sprintf("; CPU per %s: service %.2f, RabbitMQ %.2f, PostgreSQL %.2f ms; machine busy %.0f %% (steal %.1f %%)", what,
		u.service/f, u.beam/f, u.pg/f, 100*u.machineBusy, 100*u.machineSteal)
}

// deleteTenants deletes ids with clients concurrent requests; it returns when every answer came (answered) and
// when their partitions were gone from the database (dropped, counted from the same start), and what each process
// spent until the last answer.
func (r *runner) deleteTenants(ctx context.Context, srv *server, env *benchEnv, ids []uuid.UUID, clients int) (answered, dropped time.Duration, cpu cpuUse, err error) {
	start := time.Now()
	c0 := r.snapCPU(srv.PID())
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= len(ids) {
					return
				}
				st, out, err := r.do(ctx, http.MethodDelete, srv.URL+"/api/v1/tenants/"+ids[i].String(), nil)
				if err == nil && st != http.StatusNoContent {
					err = fmt.Errorf("delete tenant: HTTP %d: %s", st, out)
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	answered = time.Since(start)
	cpu = cpuBetween(c0, r.snapCPU(srv.PID()))
	select {
	case err := <-errs:
		return 0, 0, cpu, err
	default:
	}
	names := make([]string, len(ids))
	for i, id := range ids {
		names[i] = partitionName(id)
	}
	for {
		var left int
		if err := env.pool.QueryRow(ctx, "SELECT count(*) FROM pg_class WHERE relname = ANY($1)", names).Scan(&left); err != nil {
			return 0, 0, cpu, fmt.Errorf("count partitions left: %w", err)
		}
		if left == 0 {
			return answered, time.Since(start), cpu, nil
		}
		if time.Since(start) > 30*time.Minute {
			return 0, 0, cpu, fmt.Errorf("%d partitions of deleted tenants left after 30 min", left)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// partitionCount returns how many partitions messages has.
func (r *runner) partitionCount(ctx context.Context, env *benchEnv) int {
	var n int
	_ = env.pool.QueryRow(ctx, "SELECT count(*) FROM pg_inherits WHERE inhparent = 'messages'::regclass").Scan(&n)
	return n
}

// hasPool reports whether the service under test has a partition pool (main before it had none).
func (r *runner) hasPool(ctx context.Context, env *benchEnv) bool {
	var ok bool
	_ = env.pool.QueryRow(ctx, "SELECT to_regclass('partition_pool') IS NOT NULL").Scan(&ok)
	return ok
}

// waitPool waits until the partition pool holds size partitions and returns how long it took and how many were
// attached meanwhile.
func (r *runner) waitPool(ctx context.Context, env *benchEnv, size int, timeout time.Duration) (time.Duration, int, error) {
	start := time.Now()
	said := start
	var first = -1
	for {
		var n int
		if err := env.pool.QueryRow(ctx, "SELECT count(*) FROM partition_pool").Scan(&n); err != nil {
			return 0, 0, fmt.Errorf("count the partition pool: %w", err)
		}
		if first < 0 {
			first = n
		}
		if n >= size {
			return time.Since(start), n - first, nil
		}
		if time.Since(said) >= 10*time.Second {
			fmt.Printf("   %5.1f s: %d of %d partitions pooled\n", time.Since(start).Seconds(), n, size)
			said = time.Now()
		}
		if time.Since(start) > timeout {
			return 0, 0, fmt.Errorf("partition pool at %d of %d after %s", n, size, timeout)
		}
		time.Sleep(time.Second)
	}
}

// sample returns the value of one series (name and labels as exposed) of the service's /metrics.
func (r *runner) sample(ctx context.Context, srv *server, series string) (float64, bool) {
	st, out, err := r.do(ctx, http.MethodGet, srv.URL+"/metrics", nil)
	if err != nil || st != http.StatusOK {
		return 0, false
	}
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			return f, err == nil
		}
	}
	return 0, false
}
