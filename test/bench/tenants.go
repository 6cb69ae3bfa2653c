package main

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"
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

	cpu0 := r.snapCPU(srv.PID())
	start := time.Now()
	var live time.Duration
	waited := make(chan error, 1)
	go func() {
		var err error
		live, err = r.waitConsumers(ctx, srv, o.scaleTenants, start, 10*time.Minute)
		waited <- err
	}()
	// In blocks of 1,000, to see whether creation slows as tenants grow.
	var (
		lat     []time.Duration
		retried atomic.Int64
	)
	for from := 0; from < o.scaleTenants; from += 1000 {
		n := min(1000, o.scaleTenants-from)
		b0 := time.Now()
		_, l, err := r.createTenants(ctx, srv, fmt.Sprintf("bench-scale-%d", from/1000), n, 1, o.scaleClients, &retried)
		if err != nil {
			return err
		}
		lat = append(lat, l...)
		d := time.Since(b0)
		rate := float64(n) / d.Seconds()
		fmt.Printf("   tenants %d–%d created at %.1f /s\n", from+1, from+n, rate)
		s.add(fmt.Sprintf("create_rate_%d", from/1000+1), fmt.Sprintf("tenants %s–%s created/s", fmtInt(float64(from+1)), fmtInt(float64(from+n))),
			rate, "1/s", fmt.Sprintf("%.1f /s", rate))
	}
	created := time.Since(start)
	cpuCreate := cpuBetween(cpu0, r.snapCPU(srv.PID()))
	s.add("create_503", "creations answered 503 and retried (no tenant is left half made)", float64(retried.Load()), "", fmtInt(float64(retried.Load())))
	fmt.Printf("   created %d tenants in %s\n", o.scaleTenants, created.Round(time.Millisecond))
	sortDurations(lat)
	rate := float64(o.scaleTenants) / created.Seconds()
	s.add("create_rate", "tenants created/s", rate, "1/s", fmt.Sprintf("%.1f /s", rate))
	s.add("create_p50", "create latency p50", ms(percentile(lat, 0.5)), "ms", fmtMS(percentile(lat, 0.5)))
	s.add("create_p99", "create latency p99", ms(percentile(lat, 0.99)), "ms", fmtMS(percentile(lat, 0.99)))
	if err := <-waited; err != nil {
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
	s.add("rss", fmt.Sprintf("service RSS, %s idle tenants", fmtInt(float64(o.scaleTenants))), rss, "B", fmtMB(rss)).
		atMost(200<<20, "200 MB")
	s.add("rss_empty", "service RSS, no tenants (after start)", rssEmpty, "B", fmtMB(rssEmpty))
	s.add("goroutines", "service goroutines (go_goroutines)", m["go_goroutines"], "", fmtInt(m["go_goroutines"]))
	s.add("amqp_connections", "service AMQP consumer connections", m["msgsvc_amqp_connections"], "", fmtInt(m["msgsvc_amqp_connections"]))
	s.add("amqp_channels", "service AMQP consumer channels", m["msgsvc_amqp_channels"], "", fmtInt(m["msgsvc_amqp_channels"]))
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
	back, err := r.waitConsumers(ctx, srv, o.scaleTenants, restart, 5*time.Minute)
	s.add("restart_ready", "restart → /readyz 200", ready.Seconds(), "s", fmtSeconds(ready))
	if err != nil {
		s.na("restart_live", "restart → all consumers running", "not reached").atMost(30, "30 s")
		return err
	}
	s.add("restart_live", "restart → all consumers running", back.Seconds(), "s", fmtSeconds(back)).atMost(60, "60 s")

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
		if rb > 0 && ra+rb == float64(o.scaleTenants) && ma["msgsvc_tenants_owned"] == ra && mb["msgsvc_tenants_owned"] == rb {
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
	back, err = r.waitConsumers(ctx, srv, o.scaleTenants, left, 2*time.Minute)
	if err != nil {
		s.na("leave", "second replica stops (SIGTERM) → first consumes all", "not reached").atMost(30, "30 s")
		return err
	}
	s.add("leave", "second replica stops (SIGTERM) → first consumes all", back.Seconds(), "s", fmtSeconds(back)).atMost(30, "30 s")
	return nil
}
