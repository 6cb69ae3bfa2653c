package main

import (
	"context"
	"fmt"
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

	cpu0 := r.snapCPU(srv.PID())
	start := time.Now()
	var live time.Duration
	waited := make(chan error, 1)
	go func() {
		var err error
		live, err = r.waitConsumers(ctx, srv, o.scaleTenants, start, 10*time.Minute)
		waited <- err
	}()
	_, lat, err := r.createTenants(ctx, srv, "bench-scale", o.scaleTenants, 1, o.scaleClients)
	created := time.Since(start)
	cpuCreate := cpuBetween(cpu0, r.snapCPU(srv.PID()))
	if err != nil {
		return err
	}
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
	if b, ok := rssBytes(r.beam); ok {
		s.add("rss_rabbitmq", "RabbitMQ RSS (whole node)", b, "B", fmtMB(b))
	}
	idle0 := r.snapCPU(srv.PID())
	time.Sleep(10 * time.Second)
	idle := cpuBetween(idle0, r.snapCPU(srv.PID()))
	share := 100 * idle.service / float64(idle.elapsed.Milliseconds())
	s.add("idle_cpu", "service CPU while idle (10 s)", share, "%", fmt.Sprintf("%.2f %% of a core", share))

	shutdown, err := srv.stop()
	if err != nil {
		return err
	}
	s.add("shutdown", "shutdown after SIGTERM", shutdown.Seconds(), "s", fmtSeconds(shutdown))
	fmt.Printf("   stopped in %s; restarting\n", shutdown.Round(time.Millisecond))

	srv, err = r.spawnServer(env, "s5")
	if err != nil {
		return err
	}
	restart := srv.started
	if err := srv.waitReady(ctx, 5*time.Minute); err != nil {
		return err
	}
	ready := time.Since(restart)
	back, err := r.waitConsumers(ctx, srv, o.scaleTenants, restart, 5*time.Minute)
	s.add("restart_ready", "restart → /readyz 200", ready.Seconds(), "s", fmtSeconds(ready))
	if err != nil {
		s.na("restart_live", "restart → all consumers running", "not reached").atMost(30, "30 s")
		return err
	}
	s.add("restart_live", "restart → all consumers running", back.Seconds(), "s", fmtSeconds(back)).atMost(30, "30 s")
	return nil
}
